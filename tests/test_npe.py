"""End to end: NPE with its default settings recovers known posteriors.

Each test trains once on a fixed seed and compares posterior samples with exact reference
samples by a classifier two-sample test (C2ST). C2ST is 0.5 for identical distributions;
its Monte Carlo spread with n samples per side and 5 folds is about sqrt(0.25 / (2 n))
(~0.008 for n = 2000), so the thresholds below sit many standard errors above 0.5 and
decide "close enough", not "identical". Every check has two controls run with the same
classifier and sample sizes: exact-vs-exact must land near 0.5 (the classifier is not
biased) and a wrong posterior must fail the very threshold the NPE posterior passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neural_network import MLPClassifier
from torch import nn

import sbikit
import simulators
from sbikit.diagnostics import c2st
from sbikit.flows import MLP_EMBEDDING_FEATURES, MLPEmbedding
from sbikit.inference.npe import resolve_embedding

pytestmark = pytest.mark.slow

NUM_SAMPLES = 2000
NUM_OBS = 3
# Four Monte Carlo standard errors of C2ST under the null (see the module docstring).
NULL_TOLERANCE = 4 * np.sqrt(0.25 / (2 * NUM_SAMPLES))


def _fast_classifier(dim: int) -> MLPClassifier:
    # The benchmark MLP (two hidden layers of 10 d units) with early stopping on a held-out
    # tenth: the standard variant needs minutes in 10 dimensions; this one seconds.
    return MLPClassifier((10 * dim, 10 * dim), early_stopping=True, max_iter=1000, random_state=0)


def _score(a: torch.Tensor, b: torch.Tensor) -> float:
    return c2st(a, b, classifier=_fast_classifier(a.shape[-1]))


def _observations(sim: simulators.Simulator, seed: int) -> list[torch.Tensor]:
    theta = sim.prior.sample(NUM_OBS, seed=seed)
    return list(sim.simulate(theta, seed=seed + 1))


@pytest.fixture(scope="module")
def gaussian_linear_run() -> tuple[simulators.Simulator, sbikit.FlowPosterior]:
    sim = simulators.get("gaussian_linear")
    theta = sim.prior.sample(10_000, seed=0)
    x = sim.simulate(theta, seed=1)
    return sim, sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, progress=False)


@pytest.fixture(scope="module")
def two_moons_run(two_moons_npe) -> tuple[simulators.Simulator, sbikit.FlowPosterior]:
    return two_moons_npe  # trained once per session, see conftest.py


GAUSSIAN_LINEAR_MAX_C2ST = 0.6


def test_npe_recovers_the_analytic_gaussian_linear_posterior(gaussian_linear_run) -> None:
    sim, posterior = gaussian_linear_run
    scores = []
    for k, x_o in enumerate(_observations(sim, seed=100)):
        reference = sim.sample_posterior(x_o, NUM_SAMPLES, seed=k)
        samples = posterior.sample(NUM_SAMPLES, x=x_o, seed=k)
        scores.append(_score(samples, reference))
    assert np.mean(scores) <= GAUSSIAN_LINEAR_MAX_C2ST, scores


def test_gaussian_linear_controls() -> None:
    sim = simulators.get("gaussian_linear")
    x_o = _observations(sim, seed=100)[0]
    reference = sim.sample_posterior(x_o, NUM_SAMPLES, seed=0)
    # Positive control: two independent draws of the exact posterior.
    same = _score(sim.sample_posterior(x_o, NUM_SAMPLES, seed=1), reference)
    assert abs(same - 0.5) <= NULL_TOLERANCE, same
    # Negative control: the exact posterior shifted by one posterior standard deviation
    # in every coordinate must fail the threshold the NPE posterior has to meet.
    _, cov = sim.posterior_mean_cov(x_o)
    shifted = sim.sample_posterior(x_o, NUM_SAMPLES, seed=2) + torch.sqrt(torch.diagonal(cov)).float()
    assert _score(shifted, reference) > GAUSSIAN_LINEAR_MAX_C2ST


def test_npe_gaussian_linear_moments_match_the_analytic_posterior(gaussian_linear_run) -> None:
    sim, posterior = gaussian_linear_run
    x_o = _observations(sim, seed=100)[0]
    mean, cov = sim.posterior_mean_cov(x_o)
    samples = posterior.sample(20_000, x=x_o, seed=0).double()
    sd = torch.sqrt(torch.diagonal(cov))
    # Amortisation error, not Monte Carlo error, dominates here (MC error of the mean is
    # sd / sqrt(20000) < 0.01 sd): allow a quarter of a posterior sd in mean, 20% in sd.
    assert torch.all((samples.mean(0) - mean).abs() < 0.25 * sd)
    assert torch.all((samples.std(0) / sd - 1).abs() < 0.2)


TWO_MOONS_MAX_C2ST = 0.7


def test_npe_recovers_the_two_moons_posterior(two_moons_run) -> None:
    sim, posterior = two_moons_run
    scores = []
    for k, x_o in enumerate(_observations(sim, seed=200)):
        reference = sim.sample_posterior(x_o, NUM_SAMPLES, seed=k)
        samples = posterior.sample(NUM_SAMPLES, x=x_o, seed=k)
        assert bool(sim.prior.in_support(samples).all())
        # The reference is exact: its log-likelihood is finite everywhere.
        assert bool(torch.isfinite(sim.log_likelihood(reference, x_o)).all())
        scores.append(c2st(samples, reference))
    assert np.mean(scores) <= TWO_MOONS_MAX_C2ST, scores


def test_two_moons_controls(two_moons_run) -> None:
    sim, posterior = two_moons_run
    x_a, x_b = _observations(sim, seed=200)[:2]
    reference = sim.sample_posterior(x_a, NUM_SAMPLES, seed=0)
    same = c2st(sim.sample_posterior(x_a, NUM_SAMPLES, seed=1), reference)
    assert abs(same - 0.5) <= NULL_TOLERANCE, same
    # Negative controls: the posterior for another observation, and only one of the two
    # moons (the exact samples with theta_1 + theta_2 >= 0), must fail.
    wrong = posterior.sample(NUM_SAMPLES, x=x_b, seed=0)
    assert c2st(wrong, reference) > TWO_MOONS_MAX_C2ST
    exact = sim.sample_posterior(x_a, 2 * NUM_SAMPLES, seed=2)
    one_moon = exact[exact.sum(-1) >= 0][:NUM_SAMPLES]
    assert c2st(one_moon, reference) > TWO_MOONS_MAX_C2ST


def test_default_recipe_returns_the_weight_average(two_moons_run) -> None:
    """NSF and MAF on vectors train with the validated moving average of the weights (EMA_DECAY)."""
    from sbikit.inference.npe import EMA_DECAY, default_recipe

    _, posterior = two_moons_run
    assert posterior.info["recipe"]["ema_decay"] == EMA_DECAY == 0.99
    assert posterior.info["regularized_from"] is None  # no overfitting rule by default
    assert default_recipe("maf", 9_000).ema_decay == EMA_DECAY
    # Not screened with the plateau schedule (RealNVP, a jointly trained CNN): off there.
    assert default_recipe("realnvp", 9_000).ema_decay is None
    assert default_recipe("nsf", 9_000, conv_embedding=True).ema_decay is None


def test_nsf_peak_rate_depends_on_the_weight_average() -> None:
    """NPE's NSF peaks at 1e-2 with the average; FlowDensity, which keeps the raw weights, at 6e-3."""
    import sbikit.inference.npe as npe_module
    from sbikit.density import FlowDensity

    with_average = npe_module.default_recipe("nsf", 9_000)
    assert (with_average.learning_rate, with_average.ema_decay) == (npe_module.NSF_LEARNING_RATE, 0.99)
    without = npe_module.default_recipe("nsf", 9_000, weight_average=False)
    assert (without.learning_rate, without.ema_decay) == (npe_module.VECTOR_LEARNING_RATE, None)
    assert npe_module.NSF_LEARNING_RATE == 1e-2 and npe_module.VECTOR_LEARNING_RATE == 6e-3
    # MAF keeps its rate either way.
    assert npe_module.default_recipe("maf", 9_000, weight_average=False).learning_rate == 3e-3
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    density = FlowDensity(flow="nsf", hidden_features=8, num_transforms=1).fit(z, seed=0, max_epochs=1, progress=False)
    assert density.recipe is not None and density.recipe.learning_rate == npe_module.VECTOR_LEARNING_RATE


def test_default_nsf_starts_with_the_conditional_affine_layer(two_moons_run, gaussian_linear_run, tmp_path) -> None:
    """NSF (two_moons) gets the x-dependent shift-and-scale layer by default, MAF
    (gaussian_linear, 10 parameters) does not; the choice travels with the saved flow."""
    from sbikit.flows import ConditionalAffine

    def has_affine(posterior: sbikit.FlowPosterior) -> bool:
        return any(isinstance(t, ConditionalAffine) for t in posterior.flow.transform._transforms)

    _, nsf = two_moons_run
    _, maf = gaussian_linear_run
    assert nsf.flow.config.kind == "nsf" and nsf.flow.config.conditional_affine and has_affine(nsf)
    assert maf.flow.config.kind == "maf" and not maf.flow.config.conditional_affine and not has_affine(maf)
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(200, seed=0)
    x = sim.simulate(theta, seed=1)
    off = sbikit.NPE(sim.prior, device="cpu", conditional_affine=False).fit(theta, x, max_epochs=1, progress=False)
    on = sbikit.NPE(sim.prior, flow="maf", device="cpu", conditional_affine=True).fit(
        theta, x, max_epochs=1, progress=False
    )
    assert not has_affine(off) and has_affine(on)
    loaded = sbikit.load(nsf.save(tmp_path / "nsf.pt"))
    assert has_affine(loaded)
    x_o = sim.simulate(sim.prior.sample(1, seed=5), seed=6)[0]
    torch.testing.assert_close(loaded.log_prob(theta[:50], x=x_o), nsf.log_prob(theta[:50], x=x_o))


# -- embedding="auto": the MLP embedding for NSF on vectors --------------------------------
def test_auto_embedding_is_the_mlp_for_nsf_on_vectors_only() -> None:
    assert resolve_embedding("auto", "nsf", (8,)) == "mlp"
    assert resolve_embedding("AUTO", "nsf", (2,)) == "mlp"
    assert resolve_embedding("auto", "maf", (8,)) is None
    assert resolve_embedding("auto", "realnvp", (8,)) is None
    assert resolve_embedding("auto", "nsf", (16, 16)) is None  # images: flattened unless asked
    assert resolve_embedding(None, "nsf", (8,)) is None
    assert resolve_embedding("cnn", "nsf", (16, 16)) == "cnn"


def _two_moons(n: int = 300) -> tuple[sbikit.priors.BoxUniform, torch.Tensor, torch.Tensor]:
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(n, seed=0)
    return sim.prior, torch.as_tensor(theta).float(), torch.as_tensor(sim.simulate(theta, seed=1)).float()


def test_npe_default_nsf_reads_x_through_the_mlp_embedding(tmp_path) -> None:
    prior, theta, x = _two_moons()
    post = sbikit.NPE(prior, device="cpu").fit(theta, x, seed=0, max_epochs=2, progress=False)
    assert isinstance(post.flow.embedding, MLPEmbedding)
    assert post.flow.embedding.hidden_features == post.flow.config.hidden_features == 128
    assert post.flow.config.context_features == 2 + MLP_EMBEDDING_FEATURES
    # Controls: MAF and an explicit None flatten x; "mlp" asks for the embedding with MAF.
    maf = sbikit.NPE(prior, flow="maf", device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert isinstance(maf.flow.embedding, nn.Flatten)
    flat = sbikit.NPE(prior, embedding=None, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert isinstance(flat.flow.embedding, nn.Flatten)
    maf_mlp = sbikit.NPE(prior, flow="maf", embedding="mlp", device="cpu").fit(
        theta, x, seed=0, max_epochs=1, progress=False
    )
    assert isinstance(maf_mlp.flow.embedding, MLPEmbedding) and maf_mlp.flow.embedding.hidden_features == 64
    # Saved and loaded, the posterior gives the same draws and densities.
    back = sbikit.load(post.save(tmp_path / "mlp.pt"))
    assert isinstance(back.flow.embedding, MLPEmbedding)
    x_o = x[0]
    assert torch.equal(post.sample(50, x=x_o, seed=3), back.sample(50, x=x_o, seed=3))
    th = post.sample(20, x=x_o, seed=4)
    assert torch.allclose(post.log_prob(th, x=x_o), back.log_prob(th, x=x_o), atol=1e-5)


def test_typicality_rates_the_z_scored_x_with_the_mlp_embedding() -> None:
    """The check sees x itself (as without an embedding), not the 32 learned features, and
    appends no residual statistic (nothing of x is dropped)."""
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(2_000, seed=0)
    x = torch.as_tensor(sim.simulate(theta, seed=1)).float()
    post = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    flat = sbikit.NPE(sim.prior, embedding=None, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert post.typicality is not None and flat.typicality is not None
    assert post.typicality.residual is None
    assert post.typicality.bank.shape[1] == flat.typicality.bank.shape[1] == 2
    z = (x[:5] - post.flow.c_shift) / post.flow.c_scale
    assert torch.allclose(post._summaries(x[:5]), z, atol=1e-6)
    # An MLPEmbedding without the pass-through is a learned embedding like any other: the
    # check rates its features plus the raw data's residual statistic.
    learned = sbikit.NPE(
        sim.prior, embedding=MLPEmbedding(2, hidden_features=16, out_features=4, pass_input=False), device="cpu"
    ).fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert learned.typicality is not None and learned.typicality.residual is not None
    extra = learned.typicality.residual(x[:3]).shape[1]
    assert learned.typicality.bank.shape[1] == 4 + extra == learned._summaries(x[:3]).shape[1]
    # Controls: a typical x passes, one far outside the training simulations does not.
    assert post.check_observation(x[:100]).typical.float().mean() > 0.9  # ~0.99 expected at alpha 0.01
    assert not bool(post.check_observation(torch.tensor([5.0, -5.0])).typical.any())
