"""Misspecification checks: TypicalityCheck p-values, and the posterior's check_observation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import special, stats

import sbikit
import simulators
from sbikit.density import ObservationCheck, OutOfDistributionWarning, TypicalityCheck, check_observation
from sbikit.density.misspecification import atypical_count_tail, min_simulations


def _gauss(n: int, dim: int, seed: int, shift: float | torch.Tensor = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + shift


def test_p_values_are_uniform_under_the_null() -> None:
    check = TypicalityCheck.fit(_gauss(3000, 3, 0), seed=0)  # bank 2000, reference 1000
    assert len(check.bank) == 2000 and len(check.reference) == 1000
    queries = _gauss(2000, 3, 1)
    p = check.p_value(queries).numpy()
    # Given the bank, fresh null draws and the held-out references are i.i.d.: their log
    # densities pass a two-sample KS test (level 1e-3). (A one-sample KS of p against U(0, 1)
    # would ignore that all queries share the same 1000 references.)
    assert stats.ks_2samp(check.log_density(queries).numpy(), check.reference.numpy()).pvalue > 1e-3
    assert abs(float((p < 0.05).mean()) - 0.05) < 4 * 0.0085


def test_shifted_observations_are_flagged() -> None:
    check = TypicalityCheck.fit(_gauss(3000, 3, 0), seed=0)
    # A shift of 5 sd in one coordinate: |z|^2 is noncentral chi^2(3, 25), above the null's 95%
    # quantile (7.81) with probability 0.99; the k-NN density is a noisy stand-in, so ask for 0.9.
    far = check.check(_gauss(500, 3, 2, shift=torch.tensor([5.0, 0, 0])), alpha=0.05)
    assert float((~far.typical).float().mean()) > 0.9
    near = check.check(_gauss(500, 3, 3), alpha=0.05)  # negative control: the null's own draws
    assert float((~near.typical).float().mean()) < 0.05 + 4 * 0.0085 + 4 * math.sqrt(0.05 * 0.95 / 500)


def test_knn_log_density_of_a_uniform_square() -> None:
    # U[0, 1]^2 in per-dimension standardised units (sd 1/sqrt(12)) has density 1/12. With
    # N V r_k^m p ~ Gamma(k, 1), the k-NN estimate of log density has mean bias log k - psi(k)
    # (+0.051 for k = 10) and a per-point sd of sqrt(psi'(k)) = 0.32; the mean over 1000 interior points (away from the
    # edges, where the estimate is biased low) is then within ~0.02 of log(1/12) + bias; 0.1.
    u = torch.rand(5000, 2, generator=torch.Generator().manual_seed(0))
    check = TypicalityCheck.fit(u, seed=0)
    inner = torch.rand(1000, 2, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    bias = float(math.log(10) - special.digamma(10))
    scale = torch.prod(check.scale.double()).item()  # bank sd, close to 1/sqrt(12)
    expected = math.log(scale) + bias  # log of density 1 in data units, in standardised units
    assert abs(float(check.log_density(inner).mean()) - expected) < 5 * 0.03


def test_report_state_and_errors() -> None:
    check = TypicalityCheck.fit(_gauss(300, 2, 0), seed=0)
    res = check.check(torch.tensor([[0.0, 0.0], [20.0, 20.0]]))
    assert isinstance(res, ObservationCheck) and res.typical.tolist() == [True, False]
    assert "OUT OF DISTRIBUTION" in str(res).splitlines()[1] and "typical" in str(res).splitlines()[0]
    # The most atypical value possible: below every reference.
    assert float(res.p_value[1]) == pytest.approx(1 / (len(check.reference) + 1))
    again = TypicalityCheck.from_state(check.state())
    assert torch.equal(again.p_value(_gauss(10, 2, 5)), check.p_value(_gauss(10, 2, 5)))
    with pytest.raises(ValueError, match="too few"):
        TypicalityCheck.fit(_gauss(min_simulations() - 1, 2, 0))
    TypicalityCheck.fit(_gauss(min_simulations(), 2, 0))  # the documented minimum is accepted
    with pytest.raises(ValueError, match="NaN"):
        TypicalityCheck.fit(torch.full((100, 2), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        check.check(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        check.check(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="alpha"):
        check.check(torch.zeros(1, 2), alpha=1.5)
    with pytest.raises(TypeError, match="check_observation"):
        check_observation(object(), torch.zeros(2))


@pytest.fixture(scope="module")
def linear_posterior() -> tuple:
    sim = simulators.get("gaussian_linear", dim=2)
    theta = sim.prior.sample(3000, seed=0)
    x = sim.simulate(theta, seed=1)
    post = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, max_epochs=3, progress=False)
    return sim, post


def test_posterior_checks_observations(linear_posterior: tuple, tmp_path) -> None:
    sim, post = linear_posterior
    assert post.typicality is not None and post.typicality.dim == 2
    x_ok = sim.simulate(sim.prior.sample(200, seed=5), seed=6)
    res = post.check_observation(x_ok)
    # Fresh simulations are null draws: rejection rate at 5% within 4 binomial sd (200 queries)
    # plus 4 sd of the 1000 references' quantile.
    assert float((~res.typical).float().mean()) < 0.05 + 4 * math.sqrt(0.05 * 0.95 / 200) + 4 * 0.0069
    far = torch.tensor([30.0, -30.0])  # the prior is U[-1, 1]^2 and the noise sd 0.1
    assert not post.check_observation(far).all_typical
    assert check_observation(post, far).p_value.item() == post.check_observation(far).p_value.item()
    with pytest.warns(OutOfDistributionWarning, match="check_observation") as record:
        post.sample(5, x=far, seed=0)
    assert record[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        post.sample(5, x=torch.as_tensor(x_ok[0]), seed=0)  # a typical observation: no warning
    post.save(tmp_path / "p.pt")
    loaded = sbikit.load(tmp_path / "p.pt")
    assert torch.equal(loaded.check_observation(x_ok).p_value, res.p_value)


def test_posterior_without_a_check_says_so(linear_posterior: tuple) -> None:
    _, post = linear_posterior
    bare = type(post)(post.flow, post.prior, post.x_shape)
    with pytest.raises(ValueError, match="no typicality check"):
        bare.check_observation(torch.zeros(2))
    bare.sample(3, x=torch.tensor([30.0, -30.0]), seed=0)  # no check, no warning, no error


def test_streamed_training_carries_a_check(tmp_path) -> None:
    store = sbikit.simulate("two_moons", 600, store=tmp_path / "s.zarr", chunk_size=200, seed=0, progress=False)
    post = sbikit.NPE(simulators.get("two_moons").prior, device="cpu").fit(
        store.theta, store.x, seed=0, max_epochs=1, progress=False, memory_limit_gb=0
    )
    assert post.typicality is not None and len(post.typicality.bank) + len(post.typicality.reference) == 600
    p = post.check_observation(np.asarray(store.x[:50])).p_value
    assert bool(((p > 0) & (p <= 1)).all())


@pytest.mark.filterwarnings("ignore:the emcee chain")  # a 200-step chain: only the warning matters here
def test_nle_posterior_checks_observations(tmp_path) -> None:
    sim = simulators.get("gaussian_linear", dim=2)
    theta = sim.prior.sample(1000, seed=0)
    post = sbikit.NLE(sim.prior, device="cpu").fit(
        theta, sim.simulate(theta, seed=1), seed=0, max_epochs=2, progress=False
    )
    assert post.typicality is not None and post.typicality.dim == 2
    x_ok = sim.simulate(sim.prior.sample(3, seed=5), seed=6)
    far = torch.tensor([30.0, -30.0])
    res = post.check_observation(torch.cat([torch.as_tensor(x_ok), far[None]]))
    assert res.p_value.shape == (4,) and not bool(res.typical[3])
    with pytest.warns(OutOfDistributionWarning):
        post.sample_mcmc(10, x=far, seed=0, max_steps=200)
    post.save(tmp_path / "nle.pt")
    assert torch.equal(
        sbikit.load(tmp_path / "nle.pt").check_observation(far).p_value, post.check_observation(far).p_value
    )


def test_residual_statistic_measures_the_noise_off_the_subspace() -> None:
    from sbikit.density import ResidualStatistic

    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 3, generator=g)).Q  # a 3-d subspace of R^50
    signal = (torch.randn(2000, 3, generator=g) * 10) @ basis.T
    sigma = 0.1
    x = signal + sigma * torch.randn(2000, 50, generator=g)
    res = ResidualStatistic.fit(x, num_components=3)
    fresh = (torch.randn(500, 3, generator=g) * 10) @ basis.T + sigma * torch.randn(500, 50, generator=g)
    # Off the fitted subspace, 47 of 50 noise directions remain: E r^2 = sigma^2 47 / 50, and
    # the log RMS of 47 squares has sd ~ 1 / sqrt(2 * 47) = 0.10 per row; the mean of 500 rows
    # is within 4 * 0.10 / sqrt(500) = 0.02 (plus the small bias of log of a mean).
    assert abs(float(res(fresh).mean()) - math.log(sigma * math.sqrt(47 / 50))) < 0.03
    assert float(res(2 * fresh).mean()) == pytest.approx(float(res(fresh).mean()) + math.log(2), abs=0.03)


def test_image_posterior_check_sees_the_noise_level(tmp_path) -> None:
    from sbikit.compressors import PCA
    from simulators.sersic import Sersic

    sim = Sersic(size=16, oversample=2)
    theta = sim.prior.sample(1500, seed=0)
    x = sim.simulate(theta, seed=1)
    pca = PCA(3).fit(x)
    post = sbikit.NPE(sim.prior, embedding=pca, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert post.typicality is not None and post.typicality.residual is not None
    assert post.typicality.dim == 3 + 1  # the frozen PCA's summaries and the residual statistic
    theta_test = sim.prior.sample(200, seed=2)
    nominal = post.check_observation(sim.simulate(theta_test, seed=3))
    noisy = post.check_observation(Sersic(size=16, oversample=2, noise_sigma=2.0).simulate(theta_test, seed=4))
    # Size: rejection at 5% within 4 binomial sd of 200 queries plus 4 sd of the 500 references' quantile.
    assert float((~nominal.typical).float().mean()) < 0.05 + 4 * math.sqrt(0.05 * 0.95 / 200) + 4 * 0.0097
    # Power: doubling the noise raises the residual's log RMS by ~log 2 = 0.69, many times its
    # spread over galaxies, so nearly every noisy stamp is flagged (ask for 90%).
    assert float((~noisy.typical).float().mean()) > 0.9
    post.save(tmp_path / "img.pt")
    loaded = sbikit.load(tmp_path / "img.pt")
    assert torch.equal(loaded.check_observation(x[:20]).p_value, post.check_observation(x[:20]).p_value)


@pytest.mark.parametrize("features", [1, 2, 4, 9])
def test_residual_statistic_on_few_features(features: int) -> None:
    from sbikit.density import ResidualStatistic

    x = torch.randn(50, features, generator=torch.Generator().manual_seed(0))
    res = ResidualStatistic.fit(x)
    assert res.components.shape == (features, min(8, features - 1))
    out = res(x)
    assert out.shape == (50, 1) and bool(torch.isfinite(out).all())


def test_batched_sampling_warns_only_beyond_chance(linear_posterior: tuple) -> None:
    # m observations at once: the warning fires when the count K with p <= level is unlikely
    # under its exact null distribution (a call's false-alarm rate stays at level), not for a
    # few borderline observations among many.
    sim, post = linear_posterior
    n_ref = len(post.typicality.reference)
    level = max(1e-3, 1.0 / (n_ref + 1))
    x_ok = torch.as_tensor(sim.simulate(sim.prior.sample(300, seed=11), seed=12), dtype=torch.float32)
    far = torch.tensor([[30.0, -30.0]])
    one_bad = torch.cat([x_ok[:299], far])
    k = int((post.check_observation(one_bad).p_value <= level * (1 + 1e-9)).sum())
    assert 1 <= k <= 3 and atypical_count_tail(k, 300, n_ref, level) > level  # chance explains k: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        post.sample(3, x=one_bad, seed=0)
    many_bad = torch.cat([x_ok[:290], far.expand(10, -1)])  # P(K >= 10) < 1e-10: warns, and counts them
    with pytest.warns(OutOfDistributionWarning, match=r"1\d of 300 observations .* expected by chance"):
        post.sample(3, x=many_bad, seed=0)
    # Control: the far observation alone still warns.
    with pytest.warns(OutOfDistributionWarning, match="the observation is"):
        post.sample(3, x=far[0], seed=0)


@pytest.mark.parametrize(("m", "n_ref", "level"), [(1, 999, 1e-3), (300, 999, 1e-3), (50, 199, 0.02)])
def test_atypical_count_tail_matches_monte_carlo(m: int, n_ref: int, level: float) -> None:
    # Exchangeable statistics: uniform references and observations, conformal p-values as in
    # TypicalityCheck; the exact tail P(K >= k) against 4,000 draws within 4 binomial sd.
    rng = np.random.default_rng(0)
    draws = 4000
    counts = np.empty(draws, dtype=int)
    for r in range(draws):
        ref = np.sort(rng.random(n_ref))
        p = (1 + np.searchsorted(ref, rng.random(m), side="right")) / (n_ref + 1)
        counts[r] = int((p <= level * (1 + 1e-9)).sum())
    for k in range(1, 5):
        exact = atypical_count_tail(k, m, n_ref, level)
        se = math.sqrt(max(exact * (1 - exact), 1e-4) / draws)
        assert abs(float((counts >= k).mean()) - exact) <= 4 * se, (k, exact)
    assert atypical_count_tail(0, m, n_ref, level) == 1.0
    assert atypical_count_tail(1, m, n_ref, 0.1 / (n_ref + 1)) == 0.0  # no p-value is that small
    # Negative control: the binomial tail, which ignores the shared references, is far too light.
    assert atypical_count_tail(6, 1000, 999, 1e-3) > 10 * stats.binom.sf(5, 1000, 1e-3)
