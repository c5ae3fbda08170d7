"""Tests for anomaly detection: thresholds at a false-positive rate, FlowDensity, the PCA and WGAN
scores, AUROC, and the injected anomalies of simulators.anomalies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from sbikit.density.anomaly import (
    MIN_EXCEEDANCES,
    AnomalyDetector,
    PCAReconstructionScore,
    WGANAnomalyScore,
    auroc,
    gaussian_smooth,
    roc_curve,
    threshold_at_fpr,
)
from sbikit.density.flow_density import FlowDensity, load_density
from simulators.anomalies import ANOMALY_KINDS, anomaly_signal, inject

N_SE = 5.0  # Monte Carlo checks allow 5 standard errors (a false failure about 1 in 1.7 million)
SMALL_FLOW = {"flow": "maf", "hidden_features": 16, "num_transforms": 2}
QUICK_FIT = {"seed": 0, "progress": False, "max_epochs": 15, "device": "cpu"}

_L = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
GAUSS = MultivariateNormal(torch.tensor([3.0, -1.0]), scale_tril=_L)


@pytest.fixture(scope="module")
def gauss_density() -> FlowDensity:
    torch.manual_seed(1)
    return FlowDensity(**SMALL_FLOW).fit(GAUSS.sample((3000,)), **QUICK_FIT)


# -- thresholds ------------------------------------------------------------------------------------
def test_threshold_is_the_conformal_order_statistic() -> None:
    rng = np.random.default_rng(0)
    n, fpr = 999, 0.05
    s = rng.permutation(np.arange(n, dtype=float))  # scores 0 .. 998
    m = math.floor((n + 1) * fpr)  # 50: a fresh score exceeds the threshold with probability m / (n + 1)
    thr = threshold_at_fpr(s, fpr)
    assert thr == n - m  # s_(j) with j = n + 1 - m (1-based) is the value n - m
    assert int((s > thr).sum()) == m - 1


def test_realised_false_positive_rate_matches_the_target(gauss_density: FlowDensity) -> None:
    torch.manual_seed(2)
    fpr, n_cal, n_test = 0.05, 10_000, 20_000
    gauss_density.calibrate(GAUSS.sample((n_cal,)), false_positive_rate=fpr)
    p = gauss_density.expected_false_positive_rate
    assert p == math.floor((n_cal + 1) * fpr) / (n_cal + 1)
    fresh = GAUSS.sample((n_test,))
    realised = float(gauss_density.is_anomalous(fresh).double().mean())
    # The threshold's true rate is Beta(m, n + 1 - m) over calibration sets (variance
    # ~ p (1 - p) / (n_cal + 2)); the test count adds a binomial p (1 - p) / n_test.
    se = math.sqrt(p * (1 - p) * (1 / (n_cal + 2) + 1 / n_test))
    assert abs(realised - fpr) < N_SE * se
    # p < epsilon is the same decision as score > threshold.
    flags = gauss_density.log_prob(fresh).double().exp() < gauss_density.epsilon
    assert torch.equal(flags, gauss_density.is_anomalous(fresh))
    # Negative control: a threshold calibrated at 10% fails the 5% check.
    gauss_density.calibrate(GAUSS.sample((n_cal,)), false_positive_rate=0.10)
    wrong = float(gauss_density.is_anomalous(fresh).double().mean())
    assert abs(wrong - fpr) > N_SE * se


def test_calibrate_errors(gauss_density: FlowDensity) -> None:
    z = GAUSS.sample((200,))
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"false_positive_rate must lie in \(0, 1\)"):
            gauss_density.calibrate(z, false_positive_rate=bad)
    # 5 exceedances at 1% need 499 samples; 200 are too few.
    need = math.ceil(MIN_EXCEEDANCES / 0.01 - 1)
    with pytest.raises(ValueError, match=f"needs at least {need} normal samples"):
        gauss_density.calibrate(z, false_positive_rate=0.01)
    with pytest.raises(ValueError, match="NaN"):
        threshold_at_fpr([1.0, np.nan] * 100)
    with pytest.raises(RuntimeError, match="no threshold"):
        FlowDensity().is_anomalous(z)


def test_anomaly_detector_wraps_any_score() -> None:
    det = AnomalyDetector(lambda x: np.abs(np.asarray(x)))
    rng = np.random.default_rng(3)
    det.calibrate(rng.normal(size=4000), false_positive_rate=0.1)
    # |N(0, 1)| exceeds 1.645 with probability 0.1; the order statistic's standard error is
    # sqrt(p (1 - p) / n) / density(1.645), density of |X| = 2 phi(1.645).
    se = math.sqrt(0.1 * 0.9 / 4000) / (2 * stats.norm.pdf(1.645))
    assert abs(det.threshold - 1.645) < N_SE * se
    assert det.is_anomalous(np.array([0.0, 5.0])).tolist() == [False, True]
    with pytest.raises(ValueError, match="one per input"):
        AnomalyDetector(lambda x: np.zeros(3)).score(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        AnomalyDetector(lambda x: np.full(len(x), np.nan)).score(np.zeros(5))
    with pytest.raises(TypeError, match="callable"):
        AnomalyDetector(3)


# -- FlowDensity ----------------------------------------------------------------------------------
def test_flow_density_matches_a_known_gaussian(gauss_density: FlowDensity) -> None:
    torch.manual_seed(4)
    z = GAUSS.sample((5000,))
    diff = (GAUSS.log_prob(z) - gauss_density.log_prob(z)).double()  # its mean estimates KL(p || q) >= 0
    se = float(diff.std()) / math.sqrt(len(diff))
    # Model error allowance 0.05 nats for a 2-layer flow trained 15 epochs (measured ~0.01).
    assert float(diff.mean()) < 0.05 + N_SE * se
    # Negative control: data shifted by one standard deviation are far less probable.
    shifted = (GAUSS.log_prob(z) - gauss_density.log_prob(z + torch.tensor([1.0, 0.0]))).double()
    assert float(shifted.mean()) > 0.3
    # Samples follow p: means within Monte Carlo error plus a 0.05 model allowance.
    s = gauss_density.sample(20_000, seed=0).double()
    assert s.shape == (20_000, 2)
    sd = GAUSS.stddev.double()
    assert torch.all((s.mean(0) - GAUSS.mean.double()).abs() < 0.05 + N_SE * sd / math.sqrt(len(s)))
    assert torch.all((s.std(0) / sd - 1).abs() < 0.05)
    assert torch.equal(gauss_density.sample(7, seed=3), gauss_density.sample(7, seed=3))


def test_flow_density_seed_save_load_and_device(tmp_path, gauss_density: FlowDensity) -> None:
    z = GAUSS.sample((400,))
    a = FlowDensity(**SMALL_FLOW).fit(z, **{**QUICK_FIT, "max_epochs": 3})
    b = FlowDensity(**SMALL_FLOW).fit(z, **{**QUICK_FIT, "max_epochs": 3})
    assert torch.equal(a.log_prob(z), b.log_prob(z))
    c = FlowDensity(**SMALL_FLOW).fit(z, **{**QUICK_FIT, "max_epochs": 3, "seed": 1})
    assert not torch.equal(a.log_prob(z), c.log_prob(z))
    gauss_density.calibrate(GAUSS.sample((1000,)), false_positive_rate=0.05)
    path = gauss_density.save(tmp_path / "density.pt")
    back = load_density(path, device="auto")
    assert back.threshold == gauss_density.threshold and back.epsilon == gauss_density.epsilon
    torch.testing.assert_close(back.log_prob(z), gauss_density.log_prob(z), rtol=0, atol=1e-5)
    assert torch.equal(back.sample(5, seed=2), gauss_density.sample(5, seed=2))
    assert FlowDensity.load(path).features == 2 and back.log_prob(z).device.type == "cpu"
    d = FlowDensity(flow="maf", hidden_features=8, num_transforms=1).fit(z[:, :1], **{**QUICK_FIT, "max_epochs": 2})
    assert d.log_prob(z[:, 0]).shape == (400,)  # (n,) is n one-dimensional samples
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            FlowDensity(**SMALL_FLOW).fit(z, **{**QUICK_FIT, "device": "cuda"})


def test_flow_density_errors(tmp_path) -> None:
    d = FlowDensity(**SMALL_FLOW)
    with pytest.raises(RuntimeError, match="not fitted"):
        d.log_prob(np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        d.save(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 10 rows"):
        d.fit(np.where(np.arange(20).reshape(10, 2) == 3, np.nan, 0.0) + np.arange(10)[:, None], **QUICK_FIT)
    with pytest.raises(ValueError, match="flow must be one of"):
        FlowDensity(flow="glow")
    d.fit(GAUSS.sample((300,)), **{**QUICK_FIT, "max_epochs": 2})
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        d.log_prob(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        d.log_prob(np.zeros((4, 2, 1)))
    with pytest.raises(FileNotFoundError):
        load_density(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an sbikit density file"):
        load_density(tmp_path / "other.pt")


# -- AUROC ---------------------------------------------------------------------------------------
def test_auroc_against_sklearn_with_ties() -> None:
    rng = np.random.default_rng(5)
    s0 = rng.integers(0, 6, 300).astype(float)  # many ties
    s1 = rng.integers(2, 8, 200).astype(float)
    labels = np.r_[np.zeros(300), np.ones(200)]
    assert auroc(s0, s1) == pytest.approx(roc_auc_score(labels, np.r_[s0, s1]), abs=1e-12)
    assert auroc([1.0, 2.0], [1.0, 2.0]) == 0.5  # every tie counts one half
    fpr, tpr, thr = roc_curve(s0, s1)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, np.r_[s0, s1], drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)
    assert thr[0] == math.inf and fpr[-1] == 1.0 and tpr[-1] == 1.0
    with pytest.raises(ValueError, match="empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan], [1.0])
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        auroc(np.zeros((2, 2)), [1.0])


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.5])
def test_auroc_of_two_gaussians(delta: float) -> None:
    rng = np.random.default_rng(6)
    n0, n1 = 4000, 3000
    a = auroc(rng.normal(0, 1, n0), rng.normal(delta, 1, n1))
    truth = stats.norm.cdf(delta / math.sqrt(2))
    # Var(AUROC) <= A (1 - A) / min(n0, n1) (Birnbaum and Klose's bound on the U statistic).
    se = math.sqrt(max(truth * (1 - truth), 1e-4) / min(n0, n1))
    assert abs(a - truth) < N_SE * se
    assert abs(auroc(rng.normal(0, 1, n0), rng.normal(delta + 0.5, 1, n1)) - truth) > N_SE * se  # control


# -- PCA reconstruction -------------------------------------------------------------------------
def test_pca_score_on_a_linear_subspace() -> None:
    rng = np.random.default_rng(7)
    dim, k, sigma, n = 40, 4, 0.1, 3000
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    sub, orth = basis[:, :k], basis[:, k:]
    x = rng.normal(size=(n, k)) * 3 @ sub.T + 1.0 + sigma * rng.normal(size=(n, dim))
    score = PCAReconstructionScore(k).fit(x, device="cpu")
    fresh = rng.normal(size=(2000, k)) * 3 @ sub.T + 1.0 + sigma * rng.normal(size=(2000, dim))
    s = score.score(fresh).double()
    # In the subspace the residual is the noise off it: E[score^2] = sigma^2 (D - k) / D, and
    # score^2 * D / sigma^2 is chi^2 with D - k degrees of freedom (sd sqrt(2 (D - k)) per row).
    expected = sigma**2 * (dim - k) / dim
    se = sigma**2 / dim * math.sqrt(2 * (dim - k) / len(s))
    assert abs(float((s**2).mean()) - expected) < N_SE * se + 0.01 * expected  # 1%: fitted, not true, subspace
    # One unit off the subspace raises score^2 by 1 / D = 0.025, ~12 per-row standard deviations.
    off = fresh + 1.0 * orth[:, :1].T
    assert auroc(s, score.score(off)) > 0.95
    assert abs(auroc(s, score.score(fresh[::-1].copy())) - 0.5) < 0.06  # control: same data, no separation
    assert score.reconstruct(fresh[:3]).shape == (3, dim)
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAReconstructionScore(3).score(x)
    with pytest.raises(ValueError, match=r"\(n, 40\)"):
        score.score(np.zeros((2, 39)))
    with pytest.raises(ValueError, match="NaN"):
        score.score(np.full((2, dim), np.nan))
    with pytest.raises(ValueError, match="num_components"):
        PCAReconstructionScore(0)


def test_gaussian_smoothing_of_white_noise() -> None:
    rng = np.random.default_rng(12)
    noise = torch.as_tensor(rng.normal(size=(400, 24, 24)), dtype=torch.float32)
    sm = gaussian_smooth(noise, 1.0)
    assert sm.shape == noise.shape
    torch.testing.assert_close(gaussian_smooth(torch.full((2, 24, 24), 3.0), 1.0), torch.full((2, 24, 24), 3.0))
    # Away from the edges a smoothed unit white noise has variance (sum_t k_t^2)^2 (separable kernel).
    t = np.arange(-4, 5)
    k = np.exp(-0.5 * t**2) / np.exp(-0.5 * t**2).sum()
    expected = (k**2).sum() ** 2
    inner = sm[:, 6:-6, 6:-6].double()
    # Variance estimate from 400 x 144 correlated pixels: use the 400 independent images' means of squares.
    per_image = inner.square().mean((1, 2))
    assert abs(float(per_image.mean()) - expected) < N_SE * float(per_image.std()) / math.sqrt(400)


def test_smoothing_is_a_matched_filter_for_wide_structure() -> None:
    rng = np.random.default_rng(13)
    n, side = 1000, 16
    x = rng.normal(size=(n, side, side))
    score = PCAReconstructionScore(2).fit(x, device="cpu")
    smooth = PCAReconstructionScore(2, smoothing=1.0).fit(x, device="cpu")
    normal = rng.normal(size=(n, side, side))
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(4, 12, (2, n, 1, 1))
    blob = 1.5 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / 1.5**2)  # a faint source 1.5 px wide
    wide = rng.normal(size=(n, side, side)) + blob
    a_plain, a_smooth = (auroc(sc.score(normal), sc.score(wide)) for sc in (score, smooth))
    # AUROC standard errors are below sqrt(1/4 / 1000) = 0.016 (measured gain ~0.2).
    assert a_smooth > a_plain + N_SE * 0.016
    sharp = rng.normal(size=(n, side, side))
    sharp[np.arange(n), rng.integers(0, side, n), rng.integers(0, side, n)] += 4.0  # one hot pixel
    # Control: for a single hot pixel smoothing hurts (measured by ~0.1, about 5 standard errors).
    assert auroc(score.score(normal), score.score(sharp)) > auroc(smooth.score(normal), smooth.score(sharp))
    with pytest.raises(ValueError, match="smoothing needs images"):
        PCAReconstructionScore(2, smoothing=1.0).fit(rng.normal(size=(50, 10)))
    with pytest.raises(ValueError, match="smoothing must be"):
        PCAReconstructionScore(2, smoothing=-1.0)


# -- WGAN score -------------------------------------------------------------------------------------
class LinearWGAN(nn.Module):
    """Stand-in for a trained WGAN: ``G(z) = A z + b``, critic features ``tanh(W x)``.

    The best reconstruction of ``x`` is its projection on the affine plane ``{A z + b}``.
    """

    def __init__(self, dim: int = 12, latent_dim: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(dim, latent_dim, generator=g))
        self.b = nn.Parameter(torch.randn(dim, generator=g))
        self.W = nn.Parameter(torch.randn(8, dim, generator=g) / math.sqrt(dim))
        self.latent_dim = latent_dim
        self.x_shape = (dim,)

    def generate(self, z: Tensor, theta: Tensor | None = None) -> Tensor:
        return z @ self.A.T + self.b

    def critic_features(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        return torch.tanh(x @ self.W.T)

    def critic(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        return self.critic_features(x).sum(1)

    def sample(self, n: int, theta: Tensor | None = None, seed: int | None = None) -> Tensor:
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return self.generate(torch.randn(n, self.latent_dim, generator=g)).detach()

    def projection_residual(self, x: Tensor) -> Tensor:
        """RMS of ``x`` minus its projection on the plane, ``(n,)``."""
        with torch.no_grad():
            a = self.A.double()
            r = x.double() - self.b.double()
            proj = r @ a @ torch.linalg.solve(a.T @ a, a.T)
            return (r - proj).square().mean(1).sqrt()


@pytest.fixture(scope="module")
def linear_score() -> tuple[LinearWGAN, WGANAnomalyScore, Tensor]:
    torch.manual_seed(8)
    wgan = LinearWGAN()
    x = wgan.sample(1500, seed=1) + 0.3 * torch.randn(1500, 12)
    score = WGANAnomalyScore(wgan, num_steps=300, lr=0.05, hidden_features=32)
    score.fit(x, seed=0, max_epochs=10, progress=False, device="cpu")
    return wgan, score, x


def test_wgan_z_optimisation_reaches_the_projection(linear_score) -> None:
    wgan, score, _ = linear_score
    torch.manual_seed(9)
    x = wgan.sample(200, seed=2) + 0.3 * torch.randn(200, 12)
    g, c = score.components(x)
    best = wgan.projection_residual(x)
    # The optimum is the projection: no z does better, and 300 Adam steps get there
    # (relative tolerance 1e-3 on the RMS, far below the noise).
    assert torch.all(g.double() >= best * (1 - 1e-4))
    torch.testing.assert_close(g.double(), best, rtol=1e-3, atol=1e-5)
    # Control: the encoder's z alone (no optimisation) is measurably worse on average.
    enc_only = WGANAnomalyScore(wgan, num_steps=0)
    enc_only.encoder, enc_only.component_scales = score.encoder, score.component_scales
    g0, _ = enc_only.components(x)
    assert float(g0.mean()) > float(best.mean()) * 1.001
    # C is the RMS critic-feature difference at the reconstruction.
    z, xh = score.reconstruct(x)
    assert z.shape == (200, 3) and xh.shape == (200, 12)
    ref_c = (wgan.critic_features(x) - wgan.critic_features(xh)).square().mean(1).sqrt().detach()
    torch.testing.assert_close(c, ref_c, rtol=1e-4, atol=1e-6)
    # The generator's weights were frozen: no gradient was left on them.
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in wgan.parameters())
    assert all(p.requires_grad for p in wgan.parameters())


def test_wgan_score_combines_and_detects(linear_score) -> None:
    wgan, score, x = linear_score
    torch.manual_seed(10)
    normal = wgan.sample(400, seed=3) + 0.3 * torch.randn(400, 12)
    g, c = score.components(normal)
    g0, c0 = score.component_scales
    lam = score.lam
    torch.testing.assert_close(score.score(normal), lam * g / g0 + (1 - lam) * c / c0)
    assert abs(float((g / g0).median()) - 1) < 0.2  # G_0 is the median of G on normal data
    # Scores do not depend on the batch an input is scored with (each z is optimised on its
    # own). Multi-threaded BLAS sums in a batch-size-dependent order, and 300 float32 Adam
    # steps carry that rounding to ~1e-4 relative (measured 4e-5 with 2 threads); a real
    # coupling between inputs would move scores by O(1).
    torch.testing.assert_close(score.score(normal[:5]), score.score(normal)[:5], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(score.score(normal[0]), score.score(normal[:1]))
    # Points moved off the plane score higher; fresh normal points do not (control).
    a = wgan.A.detach()
    off_dir = torch.linalg.qr(torch.cat([a, torch.randn(12, 1)], 1))[0][:, -1]
    anomalies = normal + 2.0 * off_dir  # raises G^2 by 4 / 12, ~10 per-row standard deviations
    assert auroc(score.score(normal), score.score(anomalies)) > 0.95
    other = wgan.sample(400, seed=4) + 0.3 * torch.randn(400, 12)
    assert abs(auroc(score.score(normal), score.score(other)) - 0.5) < 0.1
    score.calibrate(other, false_positive_rate=0.05)
    assert score.is_anomalous(anomalies).double().mean() > 0.5


def test_wgan_score_save_load_and_errors(tmp_path, linear_score) -> None:
    wgan, score, x = linear_score
    score.calibrate(x[:500], false_positive_rate=0.05)
    path = score.save(tmp_path / "wgan_score.pt")
    back = WGANAnomalyScore.load(path, wgan)
    torch.testing.assert_close(back.score(x[:20]), score.score(x[:20]))
    assert back.threshold == score.threshold and back.lam == score.lam
    with pytest.raises(ValueError, match="x_shape"):
        WGANAnomalyScore.load(path, LinearWGAN(dim=10))
    fresh = WGANAnomalyScore(wgan)
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(x[:3])
    with pytest.raises(ValueError, match=r"\(n, 12\)"):
        score.score(np.zeros((3, 11)))
    with pytest.raises(ValueError, match="NaN"):
        score.score(np.full((3, 12), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        fresh.fit(np.full((30, 12), np.nan), max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="lam"):
        WGANAnomalyScore(wgan, lam=1.5)
    with pytest.raises(TypeError, match="latent_dim"):
        WGANAnomalyScore(object())


def test_wgan_encoder_is_seeded(linear_score) -> None:
    wgan, _, x = linear_score
    kw = {"seed": 3, "max_epochs": 2, "progress": False, "device": "cpu"}
    a = WGANAnomalyScore(wgan, num_steps=5, hidden_features=16).fit(x[:300], **kw)
    b = WGANAnomalyScore(wgan, num_steps=5, hidden_features=16).fit(x[:300], **kw)
    assert torch.equal(a.score(x[:10]), b.score(x[:10]))


# -- injected anomalies ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_inject_protocol_and_seeds(kind: str) -> None:
    images = np.random.default_rng(11).normal(size=(6, 16, 16))
    out = inject(images, kind, seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == images.shape
    assert np.array_equal(out, inject(images, kind, seed=0))
    assert not np.array_equal(out, inject(images, kind, seed=1))
    added = out - images
    assert np.all(added >= -1e-12) and np.all(added.reshape(6, -1).max(1) > 0)  # every image gets light
    t = inject(torch.as_tensor(images), kind, seed=0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, rtol=1e-6, atol=1e-5)
    assert inject(images[0], kind, seed=0).shape == (16, 16)
    assert np.array_equal(inject(images, kind, seed=0, strength=0.0), images)
    np.testing.assert_allclose(anomaly_signal(kind, 6, (16, 16), seed=0), added, atol=1e-12)


def test_anomaly_amplitudes_are_as_documented() -> None:
    n, size = 200, 32
    trail = anomaly_signal("trail", n, (size, size), seed=0)
    assert np.all(trail.max((1, 2)) <= 3.0) and np.all(trail.max((1, 2)) > 0.5)  # peak U[1, 3], sampled at pixels
    cr = anomaly_signal("cosmic_ray", n, (size, size), seed=0)
    hit = (cr > 0).sum((1, 2))
    assert hit.min() >= 1 and hit.max() <= 12  # 1-3 hits of 1-4 pixels
    assert cr[cr > 0].min() >= 4.0 and np.median(cr[cr > 0]) < 12.0
    ring = anomaly_signal("ring", n, (size, size), seed=0)
    assert np.all(ring.max((1, 2)) <= 2.5)
    # The ring's light sits at radius 0.2-0.35 stamp sides: little at the centre.
    assert np.all(ring[:, 15:17, 15:17].max((1, 2)) < 0.05 * ring.max((1, 2)))
    blend = anomaly_signal("blend", n, (size, size), seed=0)
    # The companion holds 100-1000 counts, minus what falls off the stamp.
    assert np.all(blend.sum((1, 2)) <= 1000.0) and np.median(blend.sum((1, 2))) > 150.0
    assert np.allclose(anomaly_signal("blend", n, (size, size), seed=0, strength=0.5), blend * 0.5)
    # Its centre is offset from the stamp's (the main galaxy's) by 0.2-0.4 sides.
    yy, xx = np.meshgrid(np.arange(size) + 0.5 - size / 2, np.arange(size) + 0.5 - size / 2, indexing="ij")
    peak = blend.reshape(n, -1).argmax(1)
    r = np.hypot(yy.ravel()[peak], xx.ravel()[peak])
    assert np.median(r) > 0.2 * size - 1 and np.median(r) < 0.4 * size + 1


def test_inject_errors() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        inject(np.zeros((2, 8, 8)), "ghost")
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        inject(np.zeros((2, 1, 8, 8)), "trail")
    with pytest.raises(ValueError, match="NaN"):
        inject(np.full((2, 8, 8), np.nan), "trail")
    with pytest.raises(ValueError, match="strength"):
        inject(np.zeros((2, 8, 8)), "trail", strength=-1.0)


def test_wgan_score_end_to_end_with_a_real_wgan(tmp_path) -> None:
    from sbikit.emulators import ConditionalWGAN
    from simulators.sersic import Sersic

    sim = Sersic(16)
    x = np.asarray(sim.simulate(sim.prior.sample(600, seed=0).double().numpy(), seed=1))
    wgan = ConditionalWGAN(8, hidden_features=32, channels=(8, 16))
    wgan.fit(None, x, seed=0, max_epochs=3, progress=False, device="cpu")
    score = WGANAnomalyScore(wgan, num_steps=20, channels=(8, 16), hidden_features=32)
    score.fit(x, seed=0, max_epochs=3, progress=False, device="cpu")
    normal = np.asarray(sim.simulate(sim.prior.sample(200, seed=2).double().numpy(), seed=3))
    g, c = score.components(normal)
    assert g.shape == c.shape == (200,) and bool(torch.isfinite(g).all() and torch.isfinite(c).all())
    # The z optimisation improves on the encoder's reconstruction.
    enc_only = WGANAnomalyScore(wgan, num_steps=0, channels=(8, 16), hidden_features=32)
    enc_only.encoder, enc_only.component_scales = score.encoder, score.component_scales
    assert float(g.mean()) < float(enc_only.components(normal)[0].mean())
    # A bright trail (peak 5-15 noise sigmas) is clearly found even by a WGAN trained for 3
    # epochs (AUROC ~0.85), fresh normal images are not (control). The AUROC of two equal
    # distributions has standard error sqrt((n0 + n1 + 1) / (12 n0 n1)) = 0.029 here.
    se0 = math.sqrt(401 / (12 * 200 * 200))
    s_normal = score.score(normal)
    assert auroc(s_normal, score.score(inject(normal, "trail", seed=4, strength=5.0))) > 0.5 + N_SE * se0
    other = np.asarray(sim.simulate(sim.prior.sample(200, seed=5).double().numpy(), seed=6))
    assert abs(auroc(s_normal, score.score(other)) - 0.5) < N_SE * se0
    back = WGANAnomalyScore.load(score.save(tmp_path / "s.pt"), wgan)
    torch.testing.assert_close(back.score(normal[:4]), s_normal[:4])


@pytest.mark.gpu
def test_scores_on_cuda(tmp_path) -> None:
    z = GAUSS.sample((500,))
    d = FlowDensity(**SMALL_FLOW).fit(z, **{**QUICK_FIT, "max_epochs": 2, "device": "cuda"})
    assert d.device.type == "cuda"
    lp = d.log_prob(z)
    assert lp.device.type == "cpu" and lp.shape == (500,)
    assert torch.equal(d.sample(5, seed=1), d.sample(5, seed=1))
    torch.testing.assert_close(load_density(d.save(tmp_path / "d.pt"), device="cpu").log_prob(z), lp, atol=1e-4, rtol=0)
    wgan = LinearWGAN()
    x = wgan.sample(300, seed=1) + 0.3 * torch.randn(300, 12)
    score = WGANAnomalyScore(wgan, num_steps=300, hidden_features=16).fit(
        x, seed=0, max_epochs=2, progress=False, device="cuda"
    )
    g, _ = score.components(x[:50])
    assert g.device.type == "cpu"
    torch.testing.assert_close(g.double(), wgan.cpu().projection_residual(x[:50]), rtol=1e-2, atol=1e-4)


def test_combined_score_keeps_each_scores_power() -> None:
    from sbikit.density import AnomalyScore, CombinedScore

    g = torch.Generator().manual_seed(0)

    class Column(AnomalyScore):
        """Score = one column of 2-d inputs."""

        def __init__(self, j: int) -> None:
            self.j = j

        def score(self, x: object) -> torch.Tensor:
            return torch.as_tensor(x)[:, self.j].float()

    ref = torch.randn(2000, 2, generator=g)
    combo = CombinedScore([Column(0), Column(1)], x_reference=ref)
    # N(0, 1) reference: median 0, MAD = Phi^-1(0.75) = 0.674; sd of the sample median
    # 1.25 / sqrt(2000) = 0.028, of the MAD ~ 0.02: 5 sd.
    assert torch.allclose(combo.centres, torch.zeros(2, dtype=torch.float64), atol=5 * 0.028)
    assert torch.allclose(combo.spreads, torch.full((2,), 0.674, dtype=torch.float64), atol=5 * 0.02)
    normal = torch.randn(1000, 2, generator=g)
    shifted = [normal + torch.tensor([3.0, 0.0]), normal + torch.tensor([0.0, 3.0])]
    # An anomaly in either column is caught by the maximum (AUROC of a 3-sd shift: Phi(3 / sqrt 2)
    # = 0.983 for the column alone; the max of two loses a little to the other column's noise).
    for x_anom in shifted:
        assert auroc(combo.score(normal), combo.score(x_anom)) > 0.95
    # Negative control: each column alone misses the other's anomalies (AUROC ~ 0.5 +- 0.013).
    assert abs(auroc(Column(0).score(normal), Column(0).score(shifted[1])) - 0.5) < 5 * 0.013
    with pytest.raises(ValueError, match="at least two"):
        CombinedScore([Column(0)], x_reference=ref)
    with pytest.raises(ValueError, match="zero MAD"):
        CombinedScore([Column(0), Column(1)], x_reference=torch.zeros(100, 2))
