"""Tests for sbikit.diagnostics: SBC, coverage, TARP, posterior predictive checks, plots.

Controls are exact Gaussian-linear posteriors (``sbikit.testing.GaussianPosterior``) and
three distortions of them: std x1.5 (under-confident), std x0.67 (over-confident) and the
mean shifted by +0.5 posterior std (biased). Every test is seeded. Thresholds are the
checks' own Bonferroni levels (p-values from exact binomial and KS tests), or binomial
Monte Carlo bounds stated where used; see docs/calibration.md for size and power.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import simulators
from sbikit import diagnostics as dg
from sbikit import plots
from sbikit.diagnostics._common import log_prob_paired, sample_batch
from sbikit.diagnostics.report import make_test_pairs, run_calibration
from sbikit.testing import GaussianPosterior

NUM_TESTS = 300
NUM_SAMPLES = 300


@pytest.fixture(scope="module")
def sim2():
    return simulators.get("gaussian_linear", dim=2)


@pytest.fixture(scope="module")
def pairs2(sim2):
    return make_test_pairs(sim2, NUM_TESTS, seed=0)


def _post(sim, **kw) -> GaussianPosterior:
    return GaussianPosterior.from_simulator(sim, **kw)


class SbiLike:
    """An sbi-style posterior: ``sample`` takes one x; batches go through ``*_batched``."""

    def __init__(self, inner: GaussianPosterior) -> None:
        self.inner = inner
        self.batched_calls = 0

    def sample(self, sample_shape, x=None, show_progress_bars=True):
        if x.ndim > 1 and len(x) > 1:
            raise ValueError("only one observation")
        return self.inner.sample(int(torch.Size(sample_shape).numel()), x.reshape(-1))

    def sample_batched(self, sample_shape, x, show_progress_bars=True):
        self.batched_calls += 1
        n = int(torch.Size(sample_shape).numel())
        return self.inner.sample(n, x, seed=int(torch.randint(0, 2**30, ()).item())).permute(1, 0, 2)

    def log_prob_batched(self, theta, x, norm_posterior=True):
        n, m, d = theta.shape
        xr = x[None].expand(n, m, -1).reshape(n * m, -1)
        return self.inner.log_prob(theta.reshape(n * m, d), xr).reshape(n, m)


class OneAtATime:
    """A posterior that can only handle one observation per call (the loop fallback)."""

    def __init__(self, inner: GaussianPosterior) -> None:
        self.inner = inner
        self.calls = 0

    def sample(self, n, x):
        if x.ndim != 1:
            raise ValueError("one observation at a time")
        self.calls += 1
        return self.inner.sample(n, x)

    def log_prob(self, theta, x):
        if x.ndim != 1:
            raise ValueError("one observation at a time")
        return self.inner.log_prob(theta, x)


# -- the analytic control itself ------------------------------------------------------------
def test_gaussian_posterior_matches_simulator(sim2):
    x_o = torch.tensor([0.3, -0.2])
    mean, cov = sim2.posterior_mean_cov(x_o)
    post = _post(sim2)
    torch.testing.assert_close(post.mean(x_o), mean, atol=1e-10, rtol=0)
    theta = torch.randn(5, 2, dtype=torch.float64) * 0.3
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(theta)
    torch.testing.assert_close(post.log_prob(theta, x_o).double(), ref, atol=1e-4, rtol=1e-5)
    s = post.sample(20, torch.stack([x_o, -x_o]), seed=0)
    assert s.shape == (2, 20, 2)
    wide = _post(sim2, scale=1.5, shift=0.5)
    std = cov.diagonal().sqrt()
    torch.testing.assert_close(wide.mean(x_o), mean + 0.5 * std)
    torch.testing.assert_close(wide.cov, cov * 2.25)


# -- duck typing ------------------------------------------------------------------------------
def test_sample_batch_shapes_for_all_interfaces(sim2, pairs2):
    _, x = pairs2
    x = x[:7]
    post = _post(sim2)
    assert sample_batch(post, 11, x, seed=0).shape == (7, 11, 2)
    torch.testing.assert_close(sample_batch(post, 11, x, seed=0), sample_batch(post, 11, x, seed=0))
    sbi_like = SbiLike(post)
    assert sample_batch(sbi_like, 11, x, seed=0).shape == (7, 11, 2)
    assert sbi_like.batched_calls == 1
    torch.testing.assert_close(sample_batch(sbi_like, 11, x, seed=3), sample_batch(sbi_like, 11, x, seed=3))
    loop = OneAtATime(post)
    assert sample_batch(loop, 11, x, seed=0).shape == (7, 11, 2)
    assert loop.calls == 7


def test_log_prob_paired_agrees_across_interfaces(sim2, pairs2):
    _, x = pairs2
    x = x[:5]
    post = _post(sim2)
    theta = post.sample(4, x, seed=1)  # (5, 4, 2)
    ref = torch.stack([post.log_prob(theta[i], x[i]) for i in range(5)])
    torch.testing.assert_close(log_prob_paired(post, theta, x), ref)
    torch.testing.assert_close(log_prob_paired(SbiLike(post), theta, x), ref)
    torch.testing.assert_close(log_prob_paired(OneAtATime(post), theta, x), ref)


def test_duck_typed_posteriors_pass_calibration(sim2, pairs2):
    post = _post(sim2)
    for wrapped in (SbiLike(post), OneAtATime(post)):
        summary = run_calibration(wrapped, pairs2, num_posterior_samples=200, seed=0)
        assert summary.passed, summary.report()


# -- SBC ----------------------------------------------------------------------------------
def test_run_sbc_shapes_and_range(sim2, pairs2):
    theta, x = pairs2
    ranks = dg.run_sbc(_post(sim2), theta, x, num_posterior_samples=NUM_SAMPLES, seed=0)
    assert ranks.shape == (NUM_TESTS, 2)
    assert ranks.min() >= 0 and ranks.max() <= NUM_SAMPLES
    torch.testing.assert_close(ranks, torch.round(ranks))
    again = dg.run_sbc(_post(sim2), theta, x, num_posterior_samples=NUM_SAMPLES, seed=0)
    torch.testing.assert_close(ranks, again)


def test_ties_are_broken_uniformly():
    """A posterior whose samples all equal the truth: every rank 0..N is equally likely."""

    class Point:
        def sample(self, n, x, seed=None):
            return x[:, None, :].expand(len(x), n, x.shape[1]).clone()

    theta = torch.rand(2000, 1)
    ranks = dg.run_sbc(Point(), theta, theta, num_posterior_samples=9, seed=0)
    counts = np.bincount(ranks[:, 0].long().numpy(), minlength=10)
    assert counts.sum() == 2000
    # Uniform on 0..9: chi-square p-value is itself U(0,1); 1e-4 is a false-alarm rate of 1e-4.
    assert stats.chisquare(counts).pvalue > 1e-4


def _synthetic_ranks(kind: str, m: int = 500, n: int = 100, seed: int = 0) -> torch.Tensor:
    """Ranks of a truth z ~ N(0,1) among N draws of N(shift, scale^2)."""
    scale, shift = {"exact": (1.0, 0.0), "narrow": (0.6, 0.0), "wide": (1.6, 0.0), "high": (1.0, 0.6)}[kind]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, 1, 1, generator=g)
    s = shift + scale * torch.randn(m, n, 1, generator=g)
    return (s < z).sum(1).float()


@pytest.mark.parametrize(
    ("kind", "word"),
    [("narrow", "over-confident"), ("wide", "under-confident"), ("high", "biased high")],
)
def test_check_sbc_names_the_direction(kind, word):
    check = dg.check_sbc(_synthetic_ranks(kind), 100)
    assert not check.passed
    assert word in check.verdict


def test_check_sbc_biased_low():
    # Reflecting ranks turns "samples above the truth" into "samples below it".
    check = dg.check_sbc(100 - _synthetic_ranks("high"), 100)
    assert "biased low" in check.verdict


def test_check_sbc_size_over_seeds():
    """Family-wise false alarms of check_sbc on exact ranks over 40 seeds, alpha = 0.05.

    The tests are exact (binomial, KS of continuous U(0,1) values), so the rejection rate is
    at most 0.05 (Bonferroni is conservative); P(Binomial(40, 0.05) >= 7) = 0.003.
    """
    fails = sum(not dg.check_sbc(_synthetic_ranks("exact", seed=s), 100, alpha=0.05).passed for s in range(40))
    assert fails < 7


def test_check_sbc_validates_range():
    with pytest.raises(ValueError, match="num_posterior_samples"):
        dg.check_sbc(torch.tensor([[0.0], [12.0]]), 10)


def test_sbc_controls(sim2, pairs2):
    theta, x = pairs2
    results = {}
    for name, kw in {"exact": {}, "wide": {"scale": 1.5}, "narrow": {"scale": 0.67}, "biased": {"shift": 0.5}}.items():
        ranks = dg.run_sbc(_post(sim2, **kw), theta, x, num_posterior_samples=NUM_SAMPLES, seed=0)
        results[name] = dg.check_sbc(ranks, NUM_SAMPLES, names=["a", "b"])
    assert results["exact"].passed, results["exact"].verdict
    assert "under-confident" in results["wide"].verdict
    assert "over-confident" in results["narrow"].verdict
    assert "biased high" in results["biased"].verdict
    assert {f.parameter for f in results["biased"].findings} == {"a", "b"}


# -- coverage ---------------------------------------------------------------------------------
def test_coverage_exact_within_band_and_distortions_outside(sim2, pairs2):
    theta, x = pairs2
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    exact = dg.run_coverage(_post(sim2), theta, x, num_posterior_samples=NUM_SAMPLES, levels=levels, seed=0)
    assert exact.hpd.shape == (5,) and exact.central.shape == (5, 2)
    # Pointwise band with 1 - 1e-4 per level (Binomial(m, a)): 15 curves x 1e-4 false-alarm rate.
    lo, hi = dg.coverage_band(levels, NUM_TESTS, confidence=1 - 1e-4)
    assert np.all((exact.hpd.numpy() >= lo) & (exact.hpd.numpy() <= hi))
    for j in range(2):
        assert np.all((exact.central[:, j].numpy() >= lo) & (exact.central[:, j].numpy() <= hi))
    assert dg.check_coverage(exact).passed

    narrow = dg.run_coverage(_post(sim2, scale=0.67), theta, x, num_posterior_samples=NUM_SAMPLES, levels=levels)
    wide = dg.run_coverage(_post(sim2, scale=1.5), theta, x, num_posterior_samples=NUM_SAMPLES, levels=levels)
    assert (narrow.hpd[1:4] < torch.as_tensor(lo[1:4])).all()
    assert (wide.hpd[1:4] > torch.as_tensor(hi[1:4])).all()
    assert "over-confident" in str(dg.check_coverage(narrow).findings[0])
    assert "under-confident" in str(dg.check_coverage(wide).findings[0])


def test_coverage_hpd_matches_chi2_for_gaussian(sim2, pairs2):
    """For a Gaussian, the truth is in the a-HPD region iff its Mahalanobis^2 < chi2_d(a)."""
    theta, x = pairs2
    post = _post(sim2)
    res = dg.run_coverage(post, theta, x, num_posterior_samples=2000, levels=[0.5], seed=0)
    mean, cov = sim2.posterior_mean_cov(x[0])
    diff = theta.double() - post.mean(x)
    maha = (diff @ torch.linalg.inv(cov) * diff).sum(1)
    exact_in = (maha < stats.chi2.ppf(0.5, 2)).double().mean()
    # Sample-based and exact membership differ only for truths near the boundary, where the
    # Monte Carlo error of a fraction of 2000 samples (sd ~0.011) decides: a few pairs.
    assert abs(float(res.hpd[0]) - float(exact_in)) < 0.04


# -- TARP -----------------------------------------------------------------------------------
def test_tarp_controls(sim2, pairs2):
    theta, x = pairs2
    res = {}
    for name, kw in {"exact": {}, "wide": {"scale": 1.5}, "narrow": {"scale": 0.67}}.items():
        r = dg.run_tarp(_post(sim2, **kw), theta, x, num_posterior_samples=NUM_SAMPLES, seed=0)
        res[name] = dg.check_tarp(r)
    assert r.alpha.shape == r.ecp.shape == (NUM_TESTS // 10 + 1,)
    assert res["exact"].passed
    # ATC of an exact posterior: |ATC| <= ~0.5 * max ECP error; the ECP error is ~sqrt(a(1-a)/m) < 0.03.
    assert abs(res["exact"].atc) < 0.03
    assert res["wide"].atc > 0.03 and not res["wide"].passed
    assert res["narrow"].atc < -0.03 and not res["narrow"].passed
    assert "under-confident" in str(res["wide"].findings[0])


def test_tarp_custom_references_and_no_zscore(sim2, pairs2):
    theta, x = pairs2
    refs = torch.zeros_like(theta)
    r = dg.run_tarp(_post(sim2), theta, x, num_posterior_samples=100, references=refs, z_score=False, num_bins=5)
    assert r.alpha.shape == (6,)
    torch.testing.assert_close(r.references, refs)


# -- posterior predictive ------------------------------------------------------------------
def test_posterior_predictive_pvalues(sim2):
    post = _post(sim2)
    theta = sim2.prior.sample(20, seed=5)
    xs = sim2.simulate(theta, seed=6)
    ps = [dg.posterior_predictive(post, sim2, xs[i], num_samples=300, seed=i).pvalue for i in range(20)]
    # Posterior predictive p-values of a correct model are uniform or conservative (x_o is used
    # twice); P(Binomial(20, 0.05) >= 5) = 0.003, so at most 4 below 0.05.
    assert sum(p < 0.05 for p in ps) <= 4
    far = dg.posterior_predictive(post, sim2, torch.tensor([3.0, -3.0]), num_samples=300, seed=0)
    assert far.pvalue < 0.01
    assert far.x.shape == (300, 2) and far.theta.shape == (300, 2)
    assert far.distance > float(far.replicate_distances.max())


def test_posterior_predictive_callable_simulator(sim2):
    post = _post(sim2)
    res = dg.posterior_predictive(post, lambda t: t + 0.3 * torch.randn_like(t), torch.zeros(2), num_samples=50)
    assert 0 < res.pvalue <= 1


# -- c2st is exported -------------------------------------------------------------------------
def test_c2st_exported():
    assert dg.c2st is not None
    from sbikit.diagnostics.c2st import c2st

    assert dg.c2st is c2st


# -- plots and report -----------------------------------------------------------------------
def test_calibration_plots_and_report(tmp_path, sim2):
    summary = dg.calibration_report(
        _post(sim2, scale=0.67), sim2, num_tests=200, num_posterior_samples=200, seed=0, out_dir=tmp_path / "cal"
    )
    assert not summary.passed
    for name in ("sbc_ranks.png", "coverage.png", "tarp.png", "calibration.json", "calibration.txt"):
        assert (tmp_path / "cal" / name).is_file(), name
    data = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert data["passed"] is False and data["num_tests"] == 200
    assert any("over-confident" in f for f in data["findings"])
    fig = plots.rank_histogram(summary.ranks, 200, labels=["a", "b"], num_bins=7)
    assert len(fig.axes) == 2
    assert len(plots.coverage_plot(summary.coverage).axes) == 2
    assert len(plots.tarp_plot(summary.tarp).axes) == 1


def test_run_calibration_rejects_unknown_check(sim2):
    with pytest.raises(ValueError, match="unknown checks"):
        run_calibration(_post(sim2), sim2, num_tests=10, checks=("sbc", "magic"))


def test_pairs_validation(sim2):
    with pytest.raises(ValueError, match="one x per theta"):
        dg.run_sbc(_post(sim2), torch.zeros(5, 2), torch.zeros(4, 2))
    assert math.isfinite(
        float(dg.run_sbc(_post(sim2), torch.zeros(5, 2), torch.zeros(5, 2), num_posterior_samples=5).sum())
    )
