# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Calibration you can test: SBC, coverage, TARP, C2ST and predictive checks
#
# A posterior can look plausible in a corner plot and still be wrong in a systematic way:
# too narrow (over-confident), too wide (under-confident) or shifted (biased). Calibration
# checks find out by repeating inference many times on data simulated from known
# parameters and asking whether the truth lands where the posterior says it should.
#
# This tutorial
#
# 1. runs the checks on an exact posterior and on three deliberately wrong ones, so you
#    see what each failure looks like (rank histograms, coverage curves, TARP);
# 2. uses `sbikit.testing.assert_calibrated`, whose error message says which parameter
#    failed, which test and in which direction;
# 3. trains an NPE on two moons and writes a full calibration report;
# 4. runs a posterior predictive check and a C2ST against the exact posterior;
# 5. shows the pytest plugin: a calibration test for your own simulator in a few lines.
#
# Set `SBIKIT_FAST=1` for tiny budgets; figures go to `$SBIKIT_TUTORIAL_OUT`
# (default `tutorial_outputs/`).

# %%
import os
from pathlib import Path

import torch

import sbikit
import simulators
from sbikit import diagnostics as dg
from sbikit import plots
from sbikit.testing import GaussianPosterior, assert_calibrated, assert_posterior_close

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)

NUM_TESTS = 200 if FAST else 1_000  # test pairs (theta, x)
NUM_SAMPLES = 200 if FAST else 1_000  # posterior samples per pair
NUM_SIMULATIONS = 1_000 if FAST else 10_000
FIT_KWARGS = {"max_epochs": 5} if FAST else {}

# %% [markdown]
# ## 1. Exact and wrong posteriors
#
# `gaussian_linear` has a closed-form posterior. `GaussianPosterior.from_simulator` wraps
# it with batched `sample` / `log_prob`, and can distort it: `scale=1.5` is too wide,
# `scale=0.67` too narrow, `shift=0.5` moves the mean by half a posterior standard
# deviation.
#
# Test pairs are `theta ~ prior`, `x ~ simulator(theta)`. `run_sbc` ranks each true
# parameter among posterior samples for its own `x`; all observations are sampled in one
# call. For a calibrated posterior the ranks are uniform.

# %%
sim = simulators.get("gaussian_linear", dim=2)
theta_test = sim.prior.sample(NUM_TESTS, seed=0)
x_test = sim.simulate(theta_test, seed=1)

controls = {
    "exact": GaussianPosterior.from_simulator(sim),
    "too wide (std x1.5)": GaussianPosterior.from_simulator(sim, scale=1.5),
    "too narrow (std x0.67)": GaussianPosterior.from_simulator(sim, scale=0.67),
    "biased (+0.5 std)": GaussianPosterior.from_simulator(sim, shift=0.5),
}
for i, (name, post) in enumerate(controls.items()):
    ranks = dg.run_sbc(post, theta_test, x_test, num_posterior_samples=NUM_SAMPLES, seed=0)
    check = dg.check_sbc(ranks, NUM_SAMPLES, names=sim.theta_names)
    print(f"{name:24s} SBC verdict: {check.verdict}")
    plots.rank_histogram(ranks, NUM_SAMPLES, labels=sim.theta_names, path=OUT / f"ranks_{i}.png")

# %% [markdown]
# The exact posterior's histograms stay inside the grey 99% band. Too narrow gives a
# U shape (the truth is often in the tails), too wide a hump, biased a slope.
#
# ## 2. Coverage and TARP
#
# `run_coverage` asks how often the truth lies inside the posterior's highest-density
# region (and central intervals) of each credibility level; `run_tarp` does the same with
# random reference points and needs no densities. A calibrated curve follows the diagonal.

# %%
for i, (name, post) in enumerate(controls.items()):
    cov = dg.run_coverage(post, theta_test, x_test, num_posterior_samples=NUM_SAMPLES, seed=0)
    tarp = dg.run_tarp(post, theta_test, x_test, num_posterior_samples=NUM_SAMPLES, seed=0)
    tc = dg.check_tarp(tarp)
    print(f"{name:24s} 50% HPD coverage {float(cov.hpd[25]):.2f}   TARP ATC {tc.atc:+.3f} (KS p={tc.ks_pvalue:.2g})")
    plots.coverage_plot(cov, labels=sim.theta_names, path=OUT / f"coverage_{i}.png")
    plots.tarp_plot(tarp, path=OUT / f"tarp_{i}.png")

# %% [markdown]
# ## 3. One assertion for all of it
#
# `assert_calibrated` draws test pairs from the simulator (or takes your `(theta, x)`),
# runs SBC, coverage and TARP on shared samples, and applies one Bonferroni correction, so
# an exact posterior fails with probability at most `alpha`. When it fails, the message is
# the report:

# %%
assert_calibrated(controls["exact"], sim, num_tests=NUM_TESTS, num_posterior_samples=NUM_SAMPLES)
try:
    assert_calibrated(controls["too narrow (std x0.67)"], sim, num_tests=NUM_TESTS, num_posterior_samples=NUM_SAMPLES)
except AssertionError as err:
    print(err)

# %% [markdown]
# ## 4. A trained NPE: calibration report, predictive check, C2ST
#
# `calibration_report` runs every check and writes `sbc_ranks.png`, `coverage.png`,
# `tarp.png`, `calibration.json` and `calibration.txt` (this is what `sbikit run` writes
# when a config asks for calibration).

# %%
moons = simulators.get("two_moons")
theta = moons.prior.sample(NUM_SIMULATIONS, seed=0)
x = moons.simulate(theta, seed=1)
posterior = sbikit.NPE(moons.prior).fit(theta, x, seed=0, progress=False, **FIT_KWARGS)
summary = dg.calibration_report(
    posterior, moons, num_tests=NUM_TESTS, num_posterior_samples=NUM_SAMPLES, seed=0, out_dir=OUT / "two_moons"
)
print(summary.report())

# %% [markdown]
# Calibration is necessary, not sufficient: the prior itself is calibrated. Two more checks
# look at one observation. A posterior predictive check simulates data from posterior
# draws and asks whether `x_o` looks like them (a small p-value says no); a C2ST compares
# the samples with the exact posterior (0.5 = indistinguishable).

# %%
x_o = moons.simulate(torch.tensor([[0.3, -0.4]]), seed=7)[0]
ppc = dg.posterior_predictive(posterior, moons, x_o, num_samples=NUM_SAMPLES, seed=0)
print(f"posterior predictive p-value: {ppc.pvalue:.3f}")
npe_samples = posterior.sample(2_000, x=x_o, seed=0)
exact_samples = moons.sample_posterior(x_o, 2_000, seed=0)
print(f"C2ST against the exact posterior: {dg.c2st(npe_samples, exact_samples):.3f}")
try:
    assert_posterior_close(npe_samples, exact_samples, max_c2st=0.6)
except AssertionError as err:
    print(err)
plots.corner_overlay([npe_samples, exact_samples], ["NPE", "exact"], path=OUT / "two_moons_vs_exact.png")

# %% [markdown]
# ## 5. Calibration tests in your own test suite
#
# Installing sbikit registers a pytest plugin: a `calibration` marker and a
# `calibration_check` fixture (a callable with `assert_calibrated`'s signature; the
# marker's keyword arguments are its defaults):
#
# ```python
# import pytest
# import sbikit
# from my_package import MySimulator
#
# @pytest.mark.calibration(num_tests=500, alpha=0.01)
# def test_my_posterior_is_calibrated(calibration_check):
#     sim = MySimulator()
#     theta = sim.prior.sample(10_000, seed=0)
#     posterior = sbikit.NPE(sim.prior).fit(theta, sim.simulate(theta, seed=1), seed=0)
#     calibration_check(posterior, sim)
# ```
#
# Run them with `pytest -m calibration`, or skip them with `pytest -m "not calibration"`.
