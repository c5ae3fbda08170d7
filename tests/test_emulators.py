"""Tests of sbikit.emulators: protocol, seeds, persistence, errors, losses, and known-answer fits."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.neural_network import MLPClassifier

import sbikit
import simulators
from sbikit.emulators import (
    ConditionalVAE,
    ConditionalWGAN,
    FidelityReport,
    critic_loss,
    cvae_loss,
    cvae_terms,
    fidelity,
    gradient_penalty,
    load_emulator,
    mmd,
    power_spectrum,
)
from simulators.base import Simulator

SIGMA = 0.5  # noise of the known-answer problem x | theta ~ N(theta, SIGMA^2 I)


class GaussianNoise2d(Simulator):
    """``x | theta ~ N(theta, SIGMA^2 I)`` in two dimensions, ``theta ~ U[-2, 2]^2``."""

    name = "gaussian_noise_2d"

    def __init__(self) -> None:
        self.prior = sbikit.BoxUniform([-2.0, -2.0], [2.0, 2.0])
        self.theta_names = ["a", "b"]
        self.x_shape = (2,)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + SIGMA * rng.standard_normal(theta.shape)


@pytest.fixture(scope="module")
def gauss() -> GaussianNoise2d:
    return GaussianNoise2d()


@pytest.fixture(scope="module")
def gauss_data(gauss: GaussianNoise2d) -> tuple[torch.Tensor, np.ndarray]:
    theta = gauss.prior.sample(3000, seed=0)
    return theta, gauss.simulate(theta.double().numpy(), seed=1)


@pytest.fixture(scope="module")
def trained_cvae(gauss: GaussianNoise2d, gauss_data: tuple) -> ConditionalVAE:
    theta, x = gauss_data
    emu = ConditionalVAE(4, hidden_features=64, prior=gauss.prior, theta_names=gauss.theta_names)
    return emu.fit(theta, x, seed=0, max_epochs=40, device="cpu", progress=False)


@pytest.fixture(scope="module")
def trained_wgan(gauss: GaussianNoise2d, gauss_data: tuple) -> ConditionalWGAN:
    theta, x = gauss_data
    emu = ConditionalWGAN(4, hidden_features=64, prior=gauss.prior)
    return emu.fit(theta, x, seed=0, max_epochs=120, learning_rate=1e-3, device="cpu", progress=False)


def _tiny(kind: str, x_shape: tuple[int, ...], theta_dim: int = 2):
    """A tiny emulator fitted for one epoch on random data (for protocol tests, not accuracy)."""
    gen = torch.Generator().manual_seed(3)
    theta = torch.rand(64, theta_dim, generator=gen) if theta_dim else None
    x = torch.randn(64, *x_shape, generator=gen)
    if kind == "cvae":
        emu = ConditionalVAE(3, hidden_features=16, channels=(4, 8))
        return emu.fit(theta, x, seed=0, max_epochs=1, device="cpu", progress=False), theta, x
    emu = ConditionalWGAN(3, hidden_features=16, channels=(4, 8))
    fitted = emu.fit(theta, x, seed=0, max_epochs=1, batch_size=16, critic_steps=1, device="cpu", progress=False)
    return fitted, theta, x


KINDS = ("cvae", "wgan")
SHAPES = ((3,), (8, 8), (2, 8, 8))


# -- protocol ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x_shape", SHAPES, ids=str)
def test_simulator_protocol_shapes_and_types(kind: str, x_shape: tuple[int, ...]) -> None:
    emu, _, _ = _tiny(kind, x_shape)
    assert emu.x_shape == x_shape and emu.dim == 2 and emu.is_fitted
    theta = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    out = emu.simulate(theta, seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3, *x_shape)
    out_t = emu.simulate(torch.as_tensor(theta, dtype=torch.float32), seed=0)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32 and out_t.shape == (3, *x_shape)
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-6, atol=1e-6)  # same seed, same draws
    one = emu.simulate(theta[0], seed=0)
    assert one.shape == x_shape
    assert emu.simulate([0.1, 0.2], seed=0).shape == x_shape  # lists count as numpy
    s = emu.sample(5, theta=torch.tensor([0.1, 0.2]), seed=1)
    assert s.shape == (5, *x_shape) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert emu.sample(3, theta=theta, seed=1).shape == (3, *x_shape)
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_output_and_different_seeds_differ(kind: str) -> None:
    emu, _, _ = _tiny(kind, (8, 8))
    theta = np.tile([0.3, 0.7], (20, 1))
    a, b, c = emu.simulate(theta, seed=5), emu.simulate(theta, seed=5), emu.simulate(theta, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # the fit itself is repeatable: same seed, same weights
    again, _, _ = _tiny(kind, (8, 8))
    for (k, v), w in zip(emu.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_emulator_in_sbikit_simulate_and_pickle(trained_cvae: ConditionalVAE, tmp_path) -> None:
    pytest.importorskip("zarr")
    first = sbikit.simulate(trained_cvae, 30, store=tmp_path / "a.zarr", chunk_size=10, seed=3, progress=False)
    second = sbikit.simulate(trained_cvae, 30, store=tmp_path / "b.zarr", chunk_size=10, seed=3, progress=False)
    assert first.x.shape == (30, 2) and first.theta.shape == (30, 2)
    np.testing.assert_array_equal(np.asarray(first.x[:]), np.asarray(second.x[:]))
    np.testing.assert_array_equal(np.asarray(first.theta[:]), np.asarray(second.theta[:]))
    assert trained_cvae.prior.in_support(torch.as_tensor(np.asarray(first.theta[:]))).all()
    # worker processes receive the emulator pickled
    clone = pickle.loads(pickle.dumps(trained_cvae))
    theta = np.array([[0.5, -0.5]])
    np.testing.assert_array_equal(clone.simulate(theta, seed=1), trained_cvae.simulate(theta, seed=1))


# -- persistence ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path) -> None:
    emu, _, _ = _tiny(kind, (2, 8, 8))
    emu.prior = sbikit.BoxUniform([0.0, 0.0], [1.0, 1.0])
    path = emu.save(tmp_path / "emu.pt")
    loaded = load_emulator(path, device="cpu")
    assert type(loaded) is type(emu) and loaded.is_fitted and loaded.x_shape == (2, 8, 8)
    assert loaded.prior.to_config() == emu.prior.to_config()
    assert loaded.theta_names == emu.theta_names
    theta = np.array([[0.2, 0.9], [0.4, 0.1]])
    np.testing.assert_array_equal(loaded.simulate(theta, seed=2), emu.simulate(theta, seed=2))
    assert loaded.history.to_dict() == emu.history.to_dict()
    assert type(emu).load(path).is_fitted
    other = ConditionalWGAN if kind == "cvae" else ConditionalVAE
    with pytest.raises(TypeError, match="not a"):
        other.load(path)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no emulator file"):
        load_emulator(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else"}, foreign)
    with pytest.raises(ValueError, match="not an sbikit emulator file"):
        load_emulator(foreign)
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "sbikit-emulator", "version": 1, "config": json.dumps({"class": "os:system"})}, hostile)
    with pytest.raises(ValueError, match="not an sbikit Emulator subclass"):
        load_emulator(hostile)
    emu = ConditionalVAE(2)
    with pytest.raises(RuntimeError, match="not fitted"):
        emu.save(tmp_path / "unfitted.pt")


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_errors(kind: str) -> None:
    cls = ConditionalVAE if kind == "cvae" else ConditionalWGAN
    theta, x = torch.rand(20, 2), torch.randn(20, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        cls(2, theta_dim=2, x_shape=(3,)).simulate(theta)
    with pytest.raises(ValueError, match="same number of rows"):
        cls(2).fit(theta[:10], x, max_epochs=1, progress=False)
    bad = theta.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="theta holds NaN"):
        cls(2).fit(bad, x, max_epochs=1, progress=False)
    bad_x = x.clone()
    bad_x[[1, 4], 0] = math.inf
    with pytest.raises(ValueError, match="x holds NaN or inf in 2 of 20 rows"):
        cls(2).fit(theta, bad_x, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 3\)"):
        cls(2, prior=sbikit.BoxUniform([0.0] * 3, [1.0] * 3)).fit(theta, x, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\)"):
        cls(2, x_shape=(4,)).fit(theta, x, max_epochs=1, progress=False)
    emu, _, _ = _tiny(kind, (3,))
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\) or \(2,\)"):
        emu.simulate(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="theta holds NaN"):
        emu.simulate(np.array([[0.1, math.nan]]))
    with pytest.raises(ValueError, match="pass one row or n rows"):
        emu.sample(5, theta=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="conditional on 2 parameters"):
        emu.sample(5)
    with pytest.raises(ValueError, match="latent_dim must be"):
        cls(0)


def test_cuda_request_without_cuda_and_auto_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    theta, x = torch.rand(40, 2), torch.randn(40, 3)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ConditionalVAE(2).fit(theta, x, device="cuda", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ConditionalWGAN(2).fit(theta, x, device="cuda", max_epochs=1, progress=False)
    for cls in (ConditionalVAE, ConditionalWGAN):
        emu = cls(2).fit(theta, x, device="auto", max_epochs=1, progress=False, seed=0)
        assert emu.device.type == "cpu"
        assert emu.to_device("auto").simulate(np.zeros((2, 2)), seed=0).shape == (2, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_fit_and_simulate(kind: str) -> None:
    cls = ConditionalVAE if kind == "cvae" else ConditionalWGAN
    theta, x = torch.rand(64, 2), torch.randn(64, 8, 8)
    emu = cls(2, channels=(4, 8)).fit(theta, x, device="cuda", max_epochs=1, progress=False, seed=0)
    assert emu.device.type == "cuda"
    out = emu.simulate(theta[:4].cuda(), seed=0)
    assert out.device.type == "cuda" and out.shape == (4, 8, 8)
    assert isinstance(emu.simulate(theta[:4].numpy(), seed=0), np.ndarray)
    np.testing.assert_array_equal(emu.simulate(theta[:4].numpy(), seed=0), emu.simulate(theta[:4].numpy(), seed=0))


# -- the unconditional WGAN (the interface the anomaly score builds on) ---------------------------------------
def test_unconditional_wgan_interface() -> None:
    x = torch.randn(64, 8, 8)
    wgan = ConditionalWGAN(5, hidden_features=16, channels=(4, 8)).fit(
        None, x, seed=0, max_epochs=1, batch_size=16, device="cpu", progress=False
    )
    assert wgan.theta_dim == 0 and not wgan.conditional and wgan.latent_dim == 5 and wgan.x_shape == (8, 8)
    z = torch.randn(4, 5, requires_grad=True)
    images = wgan.generate(z)
    assert images.shape == (4, 8, 8)
    images.square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    xr = x[:4].clone().requires_grad_(True)
    feats = wgan.critic_features(xr)
    assert feats.shape == (4, 16)
    score = wgan.critic(xr)
    assert score.shape == (4,)
    score.sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    # the score is the linear read-out of the features
    expected = wgan.critic_out(feats).squeeze(-1)
    torch.testing.assert_close(score, expected)
    noisy = wgan.generate(z.detach(), noise=torch.randn(4, 8, 8))
    assert not torch.allclose(noisy, wgan.generate(z.detach()))
    assert wgan.sample(6, seed=0).shape == (6, 8, 8)
    torch.testing.assert_close(wgan.simulate(6, seed=0), wgan.sample(6, seed=0))
    with pytest.raises(ValueError, match="unconditional"):
        wgan.sample(3, theta=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unconditional"):
        wgan.simulate(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"z must have shape \(n, 5\)"):
        wgan.generate(torch.zeros(3, 4))


def test_conditional_wgan_generate_matches_sample() -> None:
    wgan, theta, _ = _tiny("wgan", (3,))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, generator=gen)
    noise = torch.randn(4, 3, generator=gen)
    th = torch.tensor([0.2, 0.8])
    # sample draws z then the noise from one generator seeded with `seed`
    torch.testing.assert_close(wgan.generate(z, th, noise=noise), wgan.sample(4, theta=th, seed=0))
    with pytest.raises(ValueError, match="conditional on 2 parameters"):
        wgan.generate(z)


# -- losses against hand computations ---------------------------------------------------------------------------
class _LinearCritic:
    """A stand-in with the critic hook of ConditionalWGAN: D(x, theta) = x . w + theta . v."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor) -> None:
        self.w, self.v = w, v

    def _critic_score(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + theta @ self.v


def test_gradient_penalty_of_a_linear_critic_is_known() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.6, -1.2, 2.0], dtype=torch.float64)  # |w| = sqrt(5.8)
    real, fake = torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(7, 3, generator=gen).double()
    u = torch.rand(7, 1, generator=gen, dtype=torch.float64)
    gp = gradient_penalty(lambda xh: xh @ w, real, fake, u)
    torch.testing.assert_close(gp, torch.tensor((math.sqrt(5.8) - 1.0) ** 2, dtype=torch.float64))
    # the full critic loss: E[D(fake)] - E[D(real)] + 10 * (|w| - 1)^2; theta cancels (shared by both)
    v = torch.tensor([0.3, 0.1], dtype=torch.float64)
    theta = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    loss, wass, pen = critic_loss(_LinearCritic(w, v), theta, real, fake, u, gp_weight=10.0)  # type: ignore[arg-type]
    expected_w = (real.mean(0) - fake.mean(0)) @ w
    torch.testing.assert_close(wass, expected_w)
    torch.testing.assert_close(loss, -expected_w + 10.0 * (math.sqrt(5.8) - 1.0) ** 2)
    torch.testing.assert_close(pen, gp)


def test_gradient_penalty_of_a_quadratic_critic() -> None:
    # D(x) = |x|^2 / 2 has gradient x, so the penalty is the mean of (|x_hat| - 1)^2 at the interpolates
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(9, 2, 2, generator=gen).double(), torch.randn(9, 2, 2, generator=gen).double()
    u = torch.rand(9, 1, 1, generator=gen).double()
    gp = gradient_penalty(lambda xh: 0.5 * xh.flatten(1).square().sum(1), real, fake, u)
    x_hat = u * real + (1 - u) * fake
    torch.testing.assert_close(gp, ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean())


def test_cvae_elbo_pieces() -> None:
    emu, theta, x = _tiny("cvae", (3,))
    ts, xs = emu.standardize_theta(theta), emu.standardize_x(x)
    gen = torch.Generator().manual_seed(4)
    eps = torch.randn(len(x), emu.latent_dim, generator=gen)
    with torch.no_grad():
        emu.noise_scale_raw.copy_(torch.tensor([-0.05, 0.0, 0.04]))
        recon, kl = cvae_terms(emu, ts, xs, eps)
        mu, log_var = emu._posterior(xs, ts)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
        kl_ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
        mean = emu._decode(mu + torch.exp(0.5 * log_var) * eps, ts)
        recon_ref = -torch.distributions.Normal(mean, emu.log_noise_scale.exp()).log_prob(xs).sum(1)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, recon_ref, rtol=1e-5, atol=1e-5)
    # the loss averages recon + beta * KL with eps from torch's global generator
    emu.beta = 0.25
    torch.manual_seed(11)
    loss = cvae_loss(emu, ts, xs)
    torch.manual_seed(11)
    eps2 = torch.randn(len(x), emu.latent_dim)
    r2, k2 = cvae_terms(emu, ts, xs, eps2)
    torch.testing.assert_close(loss, (r2 + 0.25 * k2).mean())
    # elbo() is in data units: the standardisation's Jacobian -sum log(x_scale) is added
    gen = torch.Generator().manual_seed(0)
    eps0 = torch.randn(len(x), emu.latent_dim, generator=gen)
    r0, k0 = cvae_terms(emu, ts, xs, eps0)
    torch.testing.assert_close(emu.elbo(theta, x, seed=0), (-r0 - k0 - emu.x_scale.log().sum()).detach())


# -- known answers ---------------------------------------------------------------------------------------------
THETA_CHECK = torch.tensor([[0.0, 0.0], [1.2, -0.8], [-1.2, 1.2]])
NUM_DRAWS = 4000
# Monte Carlo standard errors of a sample mean and standard deviation of NUM_DRAWS normal draws
MEAN_SE = SIGMA / math.sqrt(NUM_DRAWS)
STD_SE = SIGMA / math.sqrt(2 * NUM_DRAWS)


def _moments_close(emu, mean_allowance: float, std_allowance: float) -> bool:
    """Conditional mean within 4 MC standard errors + mean_allowance, std within 4 SE + std_allowance * SIGMA."""
    ok = True
    for i, th in enumerate(THETA_CHECK):
        s = emu.sample(NUM_DRAWS, theta=th, seed=100 + i)
        ok &= bool(((s.mean(0) - th).abs() <= 4 * MEAN_SE + mean_allowance).all())
        ok &= bool(((s.std(0) - SIGMA).abs() <= 4 * STD_SE + std_allowance * SIGMA).all())
    return ok


def _shifted(emu, shift: float):
    bad = copy.deepcopy(emu)
    with torch.no_grad():
        bad.x_shift += shift
    return bad


def test_cvae_learns_a_known_gaussian(trained_cvae: ConditionalVAE) -> None:
    # Model-error allowance: 0.1 in the mean (a fifth of SIGMA) and 10% in the standard deviation
    # for a 40-epoch fit on 3,000 simulations (seeds 0-4 gave at most 0.08 and 3%); the shifted
    # control is off by 2 SIGMA.
    assert _moments_close(trained_cvae, mean_allowance=0.1, std_allowance=0.10)
    assert not _moments_close(_shifted(trained_cvae, 1.0), mean_allowance=0.1, std_allowance=0.10)


def test_wgan_learns_a_known_gaussian(trained_wgan: ConditionalWGAN) -> None:
    # A GAN fitted for ~1,000 generator steps is less exact than the CVAE: the allowance is 0.15
    # in the mean and 25% in the standard deviation (seeds 0-2 gave at most 0.05 and 16%). The
    # shifted control, off by 2 SIGMA, must fail the same check.
    assert _moments_close(trained_wgan, mean_allowance=0.15, std_allowance=0.25)
    assert not _moments_close(_shifted(trained_wgan, 1.0), mean_allowance=0.15, std_allowance=0.25)
    h = trained_wgan.history
    assert h.epochs == 120 and len(h.val_wasserstein) == 120 and h.generator_steps == 120 * (2700 // 64) // 5


def test_fidelity_separates_a_good_from_a_shifted_emulator(trained_cvae: ConditionalVAE, gauss) -> None:
    theta_test = THETA_CHECK[:2]
    good = fidelity(trained_cvae, gauss, theta_test, num_samples=300, seed=0)
    bad = fidelity(_shifted(trained_cvae, 0.5), gauss, theta_test, num_samples=300, seed=0)
    # C2ST of two equal samples of 300 has sd ~ 0.5 / sqrt(600) = 0.02; 0.6 leaves 5 sd plus model error,
    # while a shift of one SIGMA gives an accuracy of Phi(0.5 * sqrt(2)) ~ 0.76 with an optimal classifier.
    assert (good.c2st < 0.6).all()
    assert (bad.c2st > 0.68).all()
    assert (bad.mmd > 10 * np.abs(good.mmd).max()).all()
    assert (bad.ks_statistic > good.ks_statistic).all()
    assert good.power_ratio is None and good.features == "x"
    d = json.loads(good.to_json())
    assert d["speedup"] > 0 and len(d["c2st"]) == 2
    text = str(good)
    assert "C2ST" in text and "speed-up" in text


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fidelity_on_images_reports_power_ratios() -> None:
    sim = simulators.get("sersic", size=8, oversample=1)
    theta = sim.prior.sample(200, seed=0)
    emu = ConditionalVAE(2, hidden_features=16, channels=(4,), prior=sim.prior).fit(
        theta, sim.simulate(theta.double().numpy(), seed=1), seed=0, max_epochs=2, device="cpu", progress=False
    )
    fast = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0)  # C2ST's value is not tested here
    with pytest.warns(UserWarning, match="image_summary"):
        rep = fidelity(emu, sim, theta[:2], num_samples=50, seed=0, classifier=fast)
    assert isinstance(rep, FidelityReport) and rep.features == "image_summary"
    assert rep.power_ratio.shape == (2, 4) and rep.k.shape == (4,)
    assert rep.power_within().shape == (2, 4) and (rep.power_ratio_err > 0).all()
    # the simulator against itself: every bin within 5% given its Monte Carlo error
    same = fidelity(
        sim, sim, theta[:2], num_samples=50, summary=lambda x: x.reshape(len(x), -1)[:, :4], classifier=fast
    )
    assert same.features == "summary" and same.power_within().all()


# -- helpers: power spectrum and MMD -----------------------------------------------------------------------------
def test_power_spectrum_of_grf_matches_its_known_spectrum() -> None:
    n_side, a, b = 16, 0.8, 1.1
    grf = simulators.get("grf", size=n_side)
    fields = grf.simulate(np.tile([a, b], (400, 1)), seed=0)
    k_centres, p = power_spectrum(fields)
    assert k_centres.shape == (n_side // 2,) and p.shape == (400, n_side // 2)
    # expected: the mean of A |k|^-B over the modes of each annulus (an independent reimplementation)
    f = 2 * math.pi * np.fft.fftfreq(n_side)
    k = np.hypot(f[:, None], f[None, :])
    index = np.rint(k / (2 * math.pi / n_side))
    expected = np.array([np.mean(a * k[index == j] ** -b) for j in range(1, n_side // 2 + 1)])
    # tolerance: 4 Monte Carlo standard errors of the mean over 400 fields
    se = p.std(0, unbiased=True).numpy() / math.sqrt(len(p))
    assert (np.abs(p.mean(0).numpy() - expected) < 4 * se).all()
    # at high k the annulus average is close to A k_c^-B itself (the power law barely bends over a bin)
    np.testing.assert_allclose(p.mean(0).numpy()[-3:], a * k_centres.numpy()[-3:] ** -b, rtol=0.1)
    # white noise of variance s^2 has P(k) = s^2 in every bin; the channel axis is kept
    noise = 0.7 * torch.randn(300, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    _, pw = power_spectrum(noise)
    assert pw.shape == (300, 2, 6)
    se_w = pw.std(0) / math.sqrt(300)
    assert ((pw.mean(0) - 0.49).abs() < 4 * se_w).all()
    with pytest.raises(ValueError, match="images must have shape"):
        power_spectrum(np.zeros((3, 4)))


def test_mmd_matches_brute_force_and_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(25, 2))
    h = 1.3
    kern = lambda u, v: math.exp(-np.sum((u - v) ** 2) / (2 * h * h))  # noqa: E731
    kaa = sum(kern(a[i], a[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kbb = sum(kern(b[i], b[j]) for i in range(25) for j in range(25) if i != j) / (25 * 24)
    kab = sum(kern(a[i], b[j]) for i in range(30) for j in range(25)) / (30 * 25)
    assert mmd(a, b, bandwidth=h) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-10)
    # null spread from permutations of a pooled sample of one distribution: the estimate under H0
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    pooled = np.concatenate([x, y])
    null = []
    for _ in range(20):
        perm = rng.permutation(600)
        null.append(mmd(pooled[perm[:300]], pooled[perm[300:]]))
    null_sd = float(np.std(null))
    assert abs(mmd(x, y)) < 4 * null_sd
    assert mmd(x + np.array([0.5, 0.0, 0.0]), y) > 8 * null_sd
    with pytest.raises(ValueError, match="must have shapes"):
        mmd(np.zeros((4, 2)), np.zeros((4, 3)))


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_wgan_resume_is_bit_for_bit(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    theta, x = torch.rand(96, 2, generator=gen), torch.randn(96, 3, generator=gen)
    kw = {"seed": 0, "batch_size": 16, "critic_steps": 2, "device": "cpu", "progress": False}
    full = ConditionalWGAN(2, hidden_features=16).fit(theta, x, max_epochs=3, **kw)
    ckpt = tmp_path / "wgan.ckpt"
    ConditionalWGAN(2, hidden_features=16).fit(theta, x, max_epochs=2, checkpoint=ckpt, **kw)  # "killed" here
    resumed = ConditionalWGAN(2, hidden_features=16).fit(theta, x, max_epochs=3, checkpoint=ckpt, resume=True, **kw)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert resumed.history.critic_loss == full.history.critic_loss
    assert resumed.history.generator_steps == full.history.generator_steps
    with pytest.raises(ValueError, match="different training run"):
        ConditionalWGAN(2, hidden_features=16).fit(
            theta, x, max_epochs=3, checkpoint=ckpt, resume=True, **{**kw, "critic_steps": 3}
        )
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        ConditionalWGAN(2).fit(theta, x, max_epochs=1, resume=True, progress=False)


def test_cvae_resume_matches_uninterrupted(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    theta, x = torch.rand(80, 2, generator=gen), torch.randn(80, 3, generator=gen)
    kw = {"seed": 0, "device": "cpu", "progress": False, "patience": 50}
    full = ConditionalVAE(2, hidden_features=16).fit(theta, x, max_epochs=4, **kw)
    ckpt = tmp_path / "cvae.ckpt"
    ConditionalVAE(2, hidden_features=16).fit(theta, x, max_epochs=2, checkpoint=ckpt, **kw)
    resumed = ConditionalVAE(2, hidden_features=16).fit(theta, x, max_epochs=4, checkpoint=ckpt, resume=True, **kw)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert resumed.history.train_loss == full.history.train_loss


def _two_pattern_images(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """400 images ``(8, 8)`` = theta_1 * blob + theta_2 * (x * blob) + N(0, 0.1^2): ``(theta, x, patterns)``."""
    grid = torch.linspace(-1.0, 1.0, 8)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / 0.3)
    patterns = torch.stack([blob, xx * blob])  # two directions the images vary along
    patterns = 4.0 * patterns / patterns.flatten(1).norm(dim=1)[:, None, None]
    theta = torch.rand(400, 2, generator=gen)
    x = torch.einsum("nk,khw->nhw", theta, patterns) + 0.1 * torch.randn(400, 8, 8, generator=gen)
    return theta, x, patterns


def _check_pca_basis(emu, patterns: torch.Tensor, means: torch.Tensor, tmp_path) -> None:
    """Orthonormal basis of 5 rows spanning the two patterns, ``means`` in its span, saved and loaded."""
    basis = emu.pca_basis
    assert basis.shape == (5, 64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(5), atol=1e-5, rtol=0)
    # every noise-free output lies in mean + span(basis), whatever z and theta
    centred = means.flatten(1) - emu.pca_mean
    torch.testing.assert_close(centred @ basis.T @ basis, centred, atol=1e-4, rtol=0)
    # the two leading components span the patterns: per pattern the squared fraction outside
    # is ~ (64 - 2) noise^2 / (n var(theta) |pattern|^2) ~ 1e-4 (eigenvector perturbation);
    # 0.01 allows 100x that, while a pattern orthogonal to the span would give 1
    top = basis[:2]
    for p in patterns.flatten(1):
        outside = p - (p @ top.T) @ top
        assert float(outside.norm() ** 2 / p.norm() ** 2) < 0.01
    path = emu.save(tmp_path / "pca.pt")
    loaded = load_emulator(path)
    assert loaded.num_components == 5
    torch.testing.assert_close(loaded.pca_basis, basis)
    theta_new = np.array([[0.2, 0.7]])
    np.testing.assert_array_equal(loaded.simulate(theta_new, seed=3), emu.simulate(theta_new, seed=3))


@pytest.mark.parametrize("amplitude_head", [False, True])
def test_cvae_pca_decoder_basis_and_span(tmp_path, amplitude_head: bool) -> None:
    """decoder="pca": an orthonormal basis from the training images, means in its span, saved with the model."""
    gen = torch.Generator().manual_seed(1)
    theta, x, patterns = _two_pattern_images(gen)
    emu = ConditionalVAE(
        2, hidden_features=16, channels=(4,), decoder="pca", num_components=5, amplitude_head=amplitude_head
    )
    emu.fit(theta, x, seed=0, max_epochs=3, device="cpu", progress=False)
    z = torch.randn(20, 2, generator=gen)
    ts = emu.standardize_theta(torch.rand(20, 2, generator=gen))
    with torch.no_grad():
        means = emu._decode(z, ts)
    _check_pca_basis(emu, patterns, means, tmp_path)
    loaded = load_emulator(tmp_path / "pca.pt")
    assert loaded.decoder_kind == "pca" and loaded.amplitude_head == amplitude_head
    with pytest.raises(ValueError, match="num_components must be"):
        ConditionalVAE(2, decoder="pca", num_components=0)


def test_wgan_pca_generator_basis_and_span(tmp_path) -> None:
    """generator="pca": the WGAN's noise-free outputs lie in the span of the training images' components."""
    gen = torch.Generator().manual_seed(2)
    theta, x, patterns = _two_pattern_images(gen)
    emu = ConditionalWGAN(2, hidden_features=16, channels=(4,), generator="pca", num_components=5)
    emu.fit(theta, x, seed=0, max_epochs=2, device="cpu", progress=False)
    z = torch.randn(20, 2, generator=gen)
    theta_new = torch.rand(20, 2, generator=gen)
    with torch.no_grad():
        means = emu._generate_s(z, emu.standardize_theta(theta_new))  # standardised units, as the basis
        # the public generate (data units, no noise) is the same map, unstandardised
        torch.testing.assert_close(emu.generate(z, theta_new), emu.unstandardize_x(means))
    _check_pca_basis(emu, patterns, means, tmp_path)
    assert load_emulator(tmp_path / "pca.pt").generator_kind == "pca"
    with pytest.raises(ValueError, match="num_components must be"):
        ConditionalWGAN(2, generator="pca", num_components=0)


def test_cvae_amplitude_head_is_a_plus_exp_s_times_b() -> None:
    """amplitude_head=True: the decoder MLP gives 2 q + 1 numbers per row, combined as a + exp(s) b."""
    gen = torch.Generator().manual_seed(0)
    emu = ConditionalVAE(3, hidden_features=8, amplitude_head=True, x_shape=(4,), theta_dim=2)
    last = [m for m in emu.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == 2 * 4 + 1
    z, ts = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    with torch.no_grad():
        raw = emu.decoder(torch.cat([z, ts], dim=1))
        expected = raw[:, :4] + torch.exp(raw[:, 8:]) * raw[:, 4:8]
        torch.testing.assert_close(emu._decode(z, ts), expected)
        # a large s is clamped at 20 rather than overflowing
        last.bias[8] = 1e4
        assert torch.isfinite(emu._decode(z, ts)).all()
    plain = ConditionalVAE(3, hidden_features=8, x_shape=(4,), theta_dim=2)
    assert [m for m in plain.decoder.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 4
    # it fits like the plain decoder (finite losses, the config round trip)
    theta = torch.rand(200, 2, generator=gen)
    x = torch.exp(2 * theta[:, :1]) * torch.ones(200, 4) + 0.1 * torch.randn(200, 4, generator=gen)
    fitted = ConditionalVAE(3, hidden_features=8, amplitude_head=True).fit(
        theta, x, seed=0, max_epochs=2, device="cpu", progress=False
    )
    assert np.isfinite(fitted.history.best_val_loss) and fitted.get_config()["amplitude_head"] is True
    with pytest.raises(ValueError, match="amplitude_head needs an MLP decoder"):
        ConditionalVAE(2, decoder="conv", amplitude_head=True)
