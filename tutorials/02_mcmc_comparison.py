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
# # Checking neural posteriors against MCMC: NPE, NLE and emcee on supernova cosmology
#
# When the likelihood of a model is known, a classical MCMC run gives a *reference*
# posterior that a neural method can be checked against. This tutorial uses the supernova
# simulator (distance moduli of 40 type Ia supernovae in a flat wCDM universe, parameters
# `Omega_m` and `w`), whose Gaussian likelihood is exact, and compares three posteriors for
# the same observation:
#
# 1. **NPE**: a flow for `p(theta | x)` (`sbikit.NPE`), amortised: sampling is instant;
# 2. **NLE**: a flow for the likelihood `p(x | theta)` (`sbikit.NLE`), sampled with emcee;
# 3. **emcee** on the exact likelihood (`sbikit.mcmc.reference_posterior`), the reference.
#
# `sbikit.compare` measures each against the reference (C2ST, mean and standard deviation
# differences, 1-d Wasserstein distances) and `sbikit.plots.corner_overlay` draws all three.
#
# Set `SBIKIT_FAST=1` to run with tiny budgets (the posteriors are then rough); figures go to
# `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import os
from pathlib import Path

import numpy as np
from sklearn.neural_network import MLPClassifier

import sbikit
import simulators
from sbikit import mcmc, plots
from sbikit.compare import comparison_table

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)
NUM_SIMULATIONS = 500 if FAST else 20_000
NUM_SAMPLES = 1_000 if FAST else 10_000
FIT_KWARGS = {"max_epochs": 5} if FAST else {}
# A barely trained likelihood in fast mode can be slow to mix; cap the chain there.
MCMC_KWARGS = {"max_steps": 1_500} if FAST else {}
print(f"fast mode: {FAST}; writing figures to {OUT.resolve()}")

# %% [markdown]
# ## The model and one observation
#
# `theta = (Omega_m, w)` with a uniform prior on `[0.1, 0.6] x [-2, -0.4]`. We observe the
# data of a universe with `Omega_m = 0.3` and a cosmological constant, `w = -1`.

# %%
sim = simulators.get("supernova")
theta_true = np.array([0.3, -1.0])
x_o = sim.simulate(theta_true, seed=1)
names = sim.theta_names
print(sim, "x_o shape:", x_o.shape)

# %% [markdown]
# ## The emcee reference
#
# `reference_posterior` runs emcee's ensemble sampler on the log prior plus the exact
# log-likelihood. Walkers start at prior draws picked in proportion to their likelihood
# (so every mode gets walkers), move in the unconstrained space of the box prior, and the
# chain runs until it is at least 50 integrated autocorrelation times long; burn-in (5 tau)
# and thinning (tau / 2) follow from the same estimate. The result carries the diagnostics.

# %%
reference = mcmc.reference_posterior(sim, x_o, num_samples=NUM_SAMPLES, seed=0)
print(reference)
print("tau per parameter:", np.round(reference.tau, 1), " ESS:", np.round(reference.ess))

# %% [markdown]
# ## NPE and NLE on the same simulations

# %%
theta = sim.prior.sample(NUM_SIMULATIONS, seed=10)
x = sim.simulate(theta, seed=11)

npe = sbikit.NPE(sim.prior, theta_names=names).fit(theta, x, seed=0, **FIT_KWARGS)
npe_samples = npe.sample(NUM_SAMPLES, x=x_o, seed=1)

nle = sbikit.NLE(sim.prior, theta_names=names).fit(theta, x, seed=0, **FIT_KWARGS)
nle_run = nle.sample_mcmc(NUM_SAMPLES, x=x_o, seed=2, **MCMC_KWARGS)
nle_samples = nle_run.samples
print("NPE trained in", round(npe.info["train_time"], 1), "s; NLE in", round(nle.info["train_time"], 1), "s")
print("NLE chain:", nle_run)

# %% [markdown]
# ## Side by side
#
# On a full run (20,000 simulations, 10,000 samples, standard C2ST) we got C2ST 0.554 for
# NPE and 0.535 for NLE against emcee, and 0.541 for NLE with three observations.
#
# C2ST is 0.5 when a classifier cannot tell the samples from the reference; mean
# differences and Wasserstein distances are in units of the reference standard deviation.
# (In fast mode we use an early-stopping classifier to save time.)

# %%
classifier = MLPClassifier(early_stopping=True, random_state=0) if FAST else None
results = [
    sbikit.compare(npe_samples, reference, labels=names, name="NPE", classifier=classifier),
    sbikit.compare(nle_samples, reference, labels=names, name="NLE (emcee)", classifier=classifier),
]
print(comparison_table(results))
for r in results:
    print()
    print(r.to_markdown())

# %%
fig = plots.corner_overlay(
    [reference.samples, npe_samples, nle_samples],
    ["emcee (exact)", "NPE", "NLE + emcee"],
    truth=theta_true,
    labels=names,
    path=OUT / "supernova_overlay.png",
)

# %% [markdown]
# ## Several observations of the same universe
#
# A learned likelihood composes: for `k` independent data sets of the same `theta`,
# `NLEPosterior` sums their log-likelihoods, without retraining. The posterior narrows
# accordingly (the exact reference does the same with `x_o` of shape `(k, 40)`).

# %%
xs = sim.simulate(np.repeat(theta_true[None], 3, axis=0), seed=5)
nle_three = nle.sample(NUM_SAMPLES, x=xs, seed=3, **MCMC_KWARGS)
reference_three = mcmc.reference_posterior(sim, xs, num_samples=NUM_SAMPLES, seed=4)
print("exact posterior sd, 1 observation: ", reference.samples.std(0).numpy())
print("exact posterior sd, 3 observations:", reference_three.samples.std(0).numpy())
three = sbikit.compare(nle_three, reference_three, labels=names, name="NLE, 3 obs", classifier=classifier)
print(comparison_table([three]))
plots.corner_overlay(
    [reference_three.samples, nle_three],
    ["emcee, 3 observations", "NLE + emcee, 3 observations"],
    truth=theta_true,
    labels=names,
    path=OUT / "supernova_three_observations.png",
)
