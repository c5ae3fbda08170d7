"""Tests for sbikit.mcmc: emcee reference posteriors against known answers.

Tolerances come from Monte Carlo error with the effective sample size ``ess`` the result
reports: ``se(mean) = sd / sqrt(ess)`` and ``se(sd) ≈ sd / sqrt(2 ess)`` (the normal-theory
standard error of a standard deviation). Each check allows 5 standard errors; with 10
parameters x 2 statistics, a correct sampler fails a check with probability ~1e-5.
Every known-answer check has a negative control: the same check against a wrong answer
must fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import simulators
from sbikit import mcmc
from sbikit.diagnostics.c2st import c2st
from sbikit.priors import BoxUniform, Gaussian
from simulators.base import Simulator

Z = 5.0  # standard errors allowed


def _within(samples: torch.Tensor, ess: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> tuple[bool, bool]:
    """Whether sample means and sds agree with ``mean``/``sd`` within ``Z`` MC standard errors."""
    s = samples.double().numpy()
    se_mean = sd / np.sqrt(ess)
    se_sd = sd / np.sqrt(2 * ess)
    ok_mean = bool(np.all(np.abs(s.mean(0) - mean) < Z * se_mean))
    ok_sd = bool(np.all(np.abs(s.std(0, ddof=1) - sd) < Z * se_sd))
    return ok_mean, ok_sd


@pytest.fixture(scope="module")
def gaussian_linear_run() -> tuple[object, np.ndarray, np.ndarray, mcmc.MCMCResult]:
    sim = simulators.get("gaussian_linear")  # 10-d
    theta = sim.prior.sample(1, seed=3)[0]
    x_o = sim.simulate(theta, seed=4)
    mean, cov = sim.posterior_mean_cov(x_o)
    result = mcmc.reference_posterior(sim, x_o, num_samples=4000, seed=0)
    return sim, mean.numpy(), cov.diag().sqrt().numpy(), result


def test_gaussian_linear_matches_analytic_posterior(gaussian_linear_run):
    _, mean, sd, result = gaussian_linear_run
    assert result.samples.shape == (4000, 10)
    assert result.samples.dtype == torch.float32
    ok_mean, ok_sd = _within(result.samples, result.ess, mean, sd)
    assert ok_mean and ok_sd


def test_gaussian_linear_negative_controls(gaussian_linear_run):
    # The same check must reject a shifted mean (by 0.3 sd: ~0.3 sqrt(ess) >> 5 se)
    # and an inflated sd (x1.2: ~0.2 sqrt(2 ess) >> 5 se).
    _, mean, sd, result = gaussian_linear_run
    assert result.ess.min() > 500  # what makes the controls decisive
    ok_mean, _ = _within(result.samples, result.ess, mean + 0.3 * sd, sd)
    assert not ok_mean
    _, ok_sd = _within(result.samples, result.ess, mean, 1.2 * sd)
    assert not ok_sd


def test_diagnostics_are_reported(gaussian_linear_run):
    _, _, _, result = gaussian_linear_run
    d = 10
    assert result.tau.shape == (d,) and np.all(result.tau > 0)
    assert result.ess.shape == (d,) and np.all(result.ess <= 4000)
    assert 0.1 < result.acceptance_fraction < 0.9
    assert result.converged and result.num_steps >= 50 * result.tau.max()
    assert result.burn_in == math.ceil(5 * result.tau.max())
    assert result.chain.shape == (result.num_steps, result.num_walkers, d)
    assert result.log_prob.shape == (result.num_steps, result.num_walkers)
    assert set(result.summary()) >= {"tau", "acceptance_fraction", "ess", "burn_in", "thin"}


def test_two_moons_keeps_both_modes():
    sim = simulators.get("two_moons")
    x_o = sim.simulate(np.array([0.0, 0.0]), seed=1)
    num_walkers = 64
    result = mcmc.reference_posterior(sim, x_o, num_samples=4000, num_walkers=num_walkers, seed=0)
    s = result.samples
    assert bool(sim.prior.in_support(s).all())
    # The posterior is symmetric under theta_1 + theta_2 -> -(theta_1 + theta_2): each moon
    # holds half the mass. Walkers start on both moons in proportion to their weight and
    # rarely jump between them, so we count the 64 walkers as the independent moon
    # assignments: binomial standard error 0.5 / sqrt(num_walkers) (conservative; jumps
    # only add mixing).
    frac = float((s.sum(1) > 0).double().mean())
    assert abs(frac - 0.5) < Z * 0.5 / math.sqrt(num_walkers)
    assert min(frac, 1 - frac) > 0.15
    # And the shape: C2ST against exact samples. Two identical distributions give
    # 0.5 +- 0.5 / sqrt(8000) ~ 0.006; 0.55 is ~8 of those.
    exact = sim.sample_posterior(x_o, 4000, seed=2)
    assert c2st(s, exact) < 0.55


def test_callable_likelihood_with_bounded_prior():
    # N(0, 1) likelihood in theta, prior U(-10, 10): the posterior is N(0, 1) (truncation
    # at 10 sd is negligible). Walkers move in the logit space of the box.
    def log_likelihood(theta: np.ndarray, x: object) -> np.ndarray:
        return -0.5 * (theta**2).sum(1)

    prior = BoxUniform([-10.0], [10.0])
    result = mcmc.reference_posterior(log_likelihood, None, prior=prior, num_samples=3000, seed=1)
    ok_mean, ok_sd = _within(result.samples, result.ess, np.zeros(1), np.ones(1))
    assert ok_mean and ok_sd
    ok_mean, _ = _within(result.samples, result.ess, np.full(1, 0.3), np.ones(1))
    assert not ok_mean


def test_iid_observations_sum_log_likelihoods():
    # k i.i.d. observations: posterior precision 1/prior_var + k/noise_var per coordinate.
    sim = simulators.get("gaussian_linear", dim=2)
    theta = np.array([0.2, -0.1])
    xs = sim.simulate(np.repeat(theta[None], 5, 0), seed=7)
    result = mcmc.reference_posterior(sim, xs, num_samples=3000, seed=2)
    prec = 1 / sim.prior_var + len(xs) / sim.noise_var
    mean = xs.sum(0) / sim.noise_var / prec
    sd = np.full(2, 1 / math.sqrt(prec))
    ok_mean, ok_sd = _within(result.samples, result.ess, mean, sd)
    assert ok_mean and ok_sd
    assert result.info["num_observations"] == 5


def test_warns_when_chain_is_short():
    sim = simulators.get("gaussian_linear", dim=2)
    x_o = sim.simulate(np.zeros(2), seed=0)
    with pytest.warns(UserWarning, match="shorter than 50 autocorrelation times for 2 of 2 parameters"):
        result = mcmc.reference_posterior(sim, x_o, num_samples=100, seed=0, max_steps=40)
    assert not result.converged
    assert result.samples.shape == (100, 2)


def test_same_seed_same_samples():
    sim = simulators.get("gaussian_linear", dim=2)
    x_o = sim.simulate(np.zeros(2), seed=0)
    a = mcmc.reference_posterior(sim, x_o, num_samples=500, seed=3).samples
    b = mcmc.reference_posterior(sim, x_o, num_samples=500, seed=3).samples
    c = mcmc.reference_posterior(sim, x_o, num_samples=500, seed=4).samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


class _NoLikelihood(Simulator):
    name = "no_likelihood"

    def __init__(self) -> None:
        self.prior = Gaussian(torch.zeros(1), 1.0)
        self.theta_names = ["a"]
        self.x_shape = (1,)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + rng.standard_normal(theta.shape)


def test_errors_name_the_problem():
    sim = _NoLikelihood()
    assert not mcmc.has_likelihood(sim)
    assert mcmc.has_likelihood(simulators.get("two_moons"))
    with pytest.raises(ValueError, match="log_likelihood"):
        mcmc.reference_posterior(sim, np.zeros(1), num_samples=10)
    with pytest.raises(ValueError, match="prior="):
        mcmc.reference_posterior(lambda t, x: -(t**2).sum(1), None, num_samples=10)
    gl = simulators.get("gaussian_linear", dim=2)
    with pytest.raises(ValueError, match="x_o must have shape"):
        mcmc.reference_posterior(gl, np.zeros(3), num_samples=10)
    with pytest.raises(ValueError, match="num_walkers"):
        mcmc.reference_posterior(gl, np.zeros(2), num_samples=10, num_walkers=3)
