"""Tests for the image simulators: grf (Gaussian random field), sersic (galaxy) and lens (SIE).

Exact identities are checked in float64 (atol 1e-8). Monte Carlo checks allow 5 standard
errors, with the standard error estimated from the same draws (a false failure about once
in 1.7 million runs for a Gaussian statistic); the derivation sits beside each check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import simulators
from simulators import GaussianRandomField, Lens, Sersic

N_SE = 5.0
IMAGE_SIMULATORS = {"grf": (32, 32), "sersic": (32, 32), "lens": (64, 64)}


def _grf_covariance(sim: GaussianRandomField, theta: np.ndarray) -> np.ndarray:
    """``C_ab = N^-2 sum_k P(k) cos(k . (r_a - r_b))`` built with explicit cosines (no FFT)."""
    n = sim.size
    freq = 2 * np.pi * np.fft.fftfreq(n)
    kx, ky = np.meshgrid(freq, freq, indexing="ij")
    power = sim.power_spectrum(theta)
    r = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    d = r[:, None, :] - r[None, :, :]  # (N^2, N^2, 2)
    phase = kx * d[..., 0, None, None] + ky * d[..., 1, None, None]  # (N^2, N^2, N, N)
    return (power * np.cos(phase)).sum((-1, -2)) / n**2


# -- protocol: registry, shapes, seeding, batching ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMAGE_SIMULATORS))
def test_registered_shapes_and_seeding(name: str) -> None:
    sim = simulators.get(name)
    assert sim.name == name and sim.x_shape == IMAGE_SIMULATORS[name]
    assert len(sim.theta_names) == sim.dim
    theta = sim.prior.sample(3, seed=0)
    x = sim.simulate(theta, seed=1)
    assert isinstance(x, torch.Tensor) and x.shape == (3, *sim.x_shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sim.simulate(theta, seed=1))  # same seed, same images
    assert not torch.equal(x, sim.simulate(theta, seed=2))
    xn = sim.simulate(theta.double().numpy(), seed=1)  # numpy in, numpy out
    assert isinstance(xn, np.ndarray) and xn.dtype == np.float64
    np.testing.assert_allclose(xn, x.double().numpy(), atol=1e-5, rtol=1e-5)
    single = sim.simulate(theta[0], seed=1)
    assert single.shape == sim.x_shape
    ll = sim.log_likelihood(theta, x)
    assert ll.shape == (3,) and torch.isfinite(ll).all()
    with pytest.raises(ValueError, match=r"x must have shape"):
        sim.log_likelihood(theta, x[:, :-1])


def test_grf_first_rows_do_not_depend_on_the_batch() -> None:
    # Noise is drawn block by block in row order: adding rows does not change earlier images.
    sim = GaussianRandomField(8)
    theta = sim.prior.sample(5, seed=0).double().numpy()
    np.testing.assert_array_equal(sim.simulate(theta[:2], seed=3), sim.simulate(theta, seed=3)[:2])


# -- grf ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 5, 6])
def test_grf_log_likelihood_is_the_multivariate_normal_density(size: int) -> None:
    sim = GaussianRandomField(size)
    theta = np.array([[0.2, 1.2], [0.7, 0.9], [1.2, 0.1]])
    x = sim.simulate(theta, seed=0)
    ll = sim.log_likelihood(theta, x)
    for i in range(len(theta)):
        cov = _grf_covariance(sim, theta[i])
        # P(0) = 0: C has rank N^2 - 1 and the density is the pseudo-determinant one.
        ref = stats.multivariate_normal(np.zeros(size * size), cov, allow_singular=True).logpdf(x[i].ravel())
        assert ll[i] == pytest.approx(ref, abs=1e-8)
    # Also at a theta that did not generate x, and with x made up (not from the simulator).
    rng = np.random.default_rng(1)
    other = rng.standard_normal((size, size))
    other -= other.mean()  # the k = 0 mode has zero variance: keep x in the support
    ref = stats.multivariate_normal(np.zeros(size * size), _grf_covariance(sim, theta[1]), allow_singular=True)
    assert sim.log_likelihood(theta[1], other) == pytest.approx(ref.logpdf(other.ravel()), abs=1e-8)


def test_grf_simulator_covariance_matches_the_likelihood() -> None:
    # The empirical covariance of M fields vs C from P(k). For a Gaussian vector the sample
    # covariance entry has standard error sqrt((C_aa C_bb + C_ab^2) / M); allow N_SE of them.
    sim = GaussianRandomField(4)
    theta = np.array([0.8, 0.9])
    m = 40_000
    x = sim.simulate(np.tile(theta, (m, 1)), seed=0).reshape(m, -1)
    np.testing.assert_allclose(x.sum(1), 0.0, atol=1e-12)  # P(0) = 0: zero mean exactly
    cov = _grf_covariance(sim, theta)
    emp = x.T @ x / m  # the mean is known to be zero
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / m)
    assert np.all(np.abs(emp - cov) < N_SE * se), np.max(np.abs(emp - cov) / se)
    # Negative control: the field of a different amplitude fails the same check.
    assert not np.all(np.abs(1.1 * emp - cov) < N_SE * se)


def test_grf_fisher_matrix_is_the_variance_of_the_score() -> None:
    # Score by central finite differences of the exact log-likelihood (h = 1e-5 in float64:
    # truncation error ~h^2 * third derivative ~1e-8, far below the MC error). Its mean is zero
    # and its covariance is the Fisher matrix. Each entry of the sample second moment has
    # standard error std(s_i s_j) / sqrt(M), estimated from the same draws; allow N_SE.
    sim = GaussianRandomField(8)
    theta0 = np.array([1.0, 0.5])
    m, h = 4000, 1e-5
    x = sim.simulate(np.tile(theta0, (m, 1)), seed=0)
    score = np.empty((m, 2))
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        score[:, j] = (sim.log_likelihood(theta0 + e, x) - sim.log_likelihood(theta0 - e, x)) / (2 * h)
    fisher = sim.fisher_matrix(theta0).numpy()
    assert fisher.shape == (2, 2) and np.allclose(fisher, fisher.T)
    mean_se = score.std(0) / math.sqrt(m)
    assert np.all(np.abs(score.mean(0)) < N_SE * mean_se)
    prod = score[:, :, None] * score[:, None, :]
    emp, se = prod.mean(0), prod.std(0) / math.sqrt(m)
    assert np.all(np.abs(emp - fisher) < N_SE * se), (emp, fisher, se)
    # Negative control: a Fisher matrix 20% too small is detected.
    assert not np.all(np.abs(emp - 0.8 * fisher) < N_SE * se)
    batched = sim.fisher_matrix(np.array([[1.0, 0.5], [0.5, 0.5]]))
    assert batched.shape == (2, 2, 2)
    assert batched[1, 0, 0] == pytest.approx(4 * batched[0, 0, 0])  # F_AA = (N^2 - 1) / (2 A^2)


def test_grf_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="size"):
        GaussianRandomField(1)


# -- sersic -------------------------------------------------------------------------------------


def test_sersic_log_likelihood_is_the_gaussian_pixel_density() -> None:
    sim = Sersic()
    theta = sim.prior.sample(4, seed=0).double().numpy()
    model = sim.model_image(theta)
    x = model + sim.noise_sigma * np.random.default_rng(0).standard_normal(model.shape)
    ref = stats.norm(model, sim.noise_sigma).logpdf(x).sum(axis=(1, 2))
    np.testing.assert_allclose(sim.log_likelihood(theta, x), ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("psf_sigma", [0.0, 1.0])
def test_sersic_pixels_integrate_a_gaussian_profile(psf_sigma: float) -> None:
    # n = 0.5 is a Gaussian of sigma = r_half / sqrt(2 ln 2); convolved with the PSF it stays
    # Gaussian, so each pixel's exact flux is a product of normal CDF differences. The stamp
    # holds 9 sigma on each side, so the image sums to the flux (to rounding). Averaging
    # s x s sub-pixel samples is the midpoint rule, whose error on a pixel is about
    # h^2 / 24 * laplacian * area with h = 1/s; at the peak of a Gaussian of width sigma_t that is
    # peak / (12 s^2 sigma_t^2). The bound below allows 1.5 times that and must shrink as 1/s^2.
    theta = np.array([2.5, 2.0, 0.5, 0.0, 0.0])
    flux = 10**2.5
    sigma_t = math.hypot(2.0 / math.sqrt(2 * math.log(2)), psf_sigma)
    edges = np.arange(33) - 16.0
    cdf = np.diff(stats.norm.cdf(edges / sigma_t))
    exact = flux * np.outer(cdf, cdf)
    errors = []
    for s in (1, 4, 8):
        img = Sersic(psf_sigma=psf_sigma, oversample=s).model_image(theta)
        assert img.sum() == pytest.approx(flux, rel=1e-10)
        err = np.abs(img - exact).max() / exact.max()
        assert err < 1.5 / (12 * s**2 * sigma_t**2)
        errors.append(err)
    assert errors[1] < errors[0] / 8 and errors[2] < errors[1] / 3  # ~1/s^2 convergence


def test_sersic_flux_and_shape() -> None:
    # n = 1, r_half = 2: the light outside radius 16 is Gamma(2, 8 b_1) ~ 2.2e-5 of the total; the
    # cusp at the centre makes the midpoint rule converge slowly, ~1e-6 at 16 sub-pixels
    # (the change from 16 to 32), so the sum is the flux within 3e-5.
    sim = Sersic(psf_sigma=1.0, oversample=16)
    img = sim.model_image(np.array([3.0, 2.0, 1.0, 0.0, 0.0]))
    assert img.sum() == pytest.approx(1000.0, rel=3e-5)
    # A round profile is symmetric under transposition; e1 > 0 elongates it along x.
    np.testing.assert_allclose(img, img.T, atol=1e-10)
    elong = sim.model_image(np.array([3.0, 2.0, 1.0, 0.3, 0.0]))
    assert elong[16, :].sum() > elong[:, 16].sum()
    with pytest.raises(ValueError, match="noise_sigma"):
        Sersic(noise_sigma=0.0)


# -- lens ----------------------------------------------------------------------------------------


def test_lens_log_likelihood_is_the_gaussian_pixel_density() -> None:
    sim = Lens(size=32)
    theta = sim.prior.sample(3, seed=0).double().numpy()
    model = sim.model_image(theta)
    x = model + sim.noise_sigma * np.random.default_rng(0).standard_normal(model.shape)
    ref = stats.norm(model, sim.noise_sigma).logpdf(x).sum(axis=(1, 2))
    np.testing.assert_allclose(sim.log_likelihood(theta, x), ref, rtol=0, atol=1e-8)


def test_lens_deflection() -> None:
    # Near q = 1 the SIE is a singular isothermal sphere: alpha = theta_E (x, y) / r.
    x, y = np.array([0.3, -1.1, 0.7]), np.array([0.4, 0.2, -0.9])
    ax, ay = Lens.deflection(x, y, 1.2, 1 - 1e-7)
    r = np.hypot(x, y)
    np.testing.assert_allclose(ax, 1.2 * x / r, rtol=1e-5)
    np.testing.assert_allclose(ay, 1.2 * y / r, rtol=1e-5)
    # For q < 1 the divergence of alpha is twice the convergence kappa = b q / (2 psi), b = theta_E / sqrt(q)
    # (central differences, h = 1e-5: error ~1e-9).
    q, te, h = 0.6, 1.0, 1e-5
    div = (Lens.deflection(x + h, y, te, q)[0] - Lens.deflection(x - h, y, te, q)[0]) / (2 * h)
    div += (Lens.deflection(x, y + h, te, q)[1] - Lens.deflection(x, y - h, te, q)[1]) / (2 * h)
    kappa = te / math.sqrt(q) * q / (2 * np.sqrt(q**2 * x**2 + y**2))
    np.testing.assert_allclose(div / 2, kappa, rtol=1e-6)


def test_lens_forms_an_einstein_ring() -> None:
    # A source behind a nearly round lens is imaged into a ring at radius ~theta_E; lensing
    # conserves surface brightness, so no pixel exceeds the source's peak.
    sim = Lens(oversample=2)
    img = sim.model_image(np.array([1.2, 0.95, 0.0, 0.0]))
    assert img.max() <= sim.amplitude + 1e-12
    c = (np.arange(sim.size) + 0.5 - sim.size / 2) * sim.pixel_scale
    r = np.hypot(*np.meshgrid(c, c))
    mean_radius = (img * r).sum() / img.sum()
    assert abs(mean_radius - 1.2) < 0.1
