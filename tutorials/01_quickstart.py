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
# # Quickstart: your simulator, a neural posterior, a corner plot
#
# Simulation-based inference needs two things from you: a **prior** over the parameters
# and a **simulator** that turns parameters into data. sbikit simulates a training set,
# trains a normalizing flow to approximate the posterior `p(theta | x)` (neural posterior
# estimation, NPE) and gives back a posterior you can sample for any observation.
#
# This tutorial
#
# 1. writes a simulator in a few lines of numpy (a noisy damped oscillator),
# 2. trains `sbikit.NPE` and samples the posterior for one observation,
# 3. plots it with `sbikit.plots.corner_plot` and compares it with the true parameters,
# 4. saves and reloads the posterior,
# 5. does the same for a bundled simulator (`simulators.get("two_moons")`) and checks the
#    result against its exact posterior.
#
# Set `SBIKIT_FAST=1` to run everything with tiny budgets in seconds (the plots are then
# rough); figures go to `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import os
from pathlib import Path

import numpy as np
import torch

import sbikit
import simulators
from sbikit.plots import corner_overlay, corner_plot, loss_plot

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)

NUM_SIMULATIONS = 500 if FAST else 10_000
NUM_SAMPLES = 1_000 if FAST else 10_000
# In fast mode we cap training at 5 epochs; otherwise NPE.fit's defaults (early stopping) apply.
FIT_KWARGS = {"max_epochs": 5} if FAST else {}
print(f"fast mode: {FAST}; writing figures to {OUT.resolve()}")

# %% [markdown]
# ## 1. A simulator is a function of `(theta, rng)`
#
# A damped oscillator observed at 50 times with Gaussian noise:
# `x(t) = A exp(-gamma t) cos(omega t) + 0.1 * noise`. The parameters are the amplitude
# `A`, the angular frequency `omega` and the damping rate `gamma`. The function is
# vectorised: `theta` has shape `(n, 3)` and `x` has shape `(n, 50)`.

# %%
t = np.linspace(0.0, 10.0, 50)


def oscillator(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """theta (n, 3) = (A, omega, gamma) -> noisy signal (n, 50)."""
    amplitude, omega, gamma = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    signal = amplitude * np.exp(-gamma * t) * np.cos(omega * t)
    return signal + 0.1 * rng.standard_normal(signal.shape)


prior = sbikit.BoxUniform(low=[0.5, 0.5, 0.05], high=[2.0, 3.0, 0.5])
names = ["A", "omega", "gamma"]

# %% [markdown]
# ## 2. Simulate, train, sample
#
# `prior.sample` returns a torch tensor `(n, 3)`; the simulator takes numpy, so we convert.
# Seeds make every step repeatable.

# %%
theta = prior.sample(NUM_SIMULATIONS, seed=0)  # (n, 3)
x = oscillator(theta.double().numpy(), np.random.default_rng(1))  # (n, 50)

posterior = sbikit.NPE(prior, flow="maf", theta_names=names).fit(theta, x, seed=0, progress=False, **FIT_KWARGS)
print(f"trained for {posterior.info['epochs']} epochs in {posterior.info['train_time']:.1f} s")

# %% [markdown]
# Now an "observation": data simulated from known parameters, so we can check the answer.
# The posterior is amortized: sampling it for a new `x_o` needs no retraining.

# %%
theta_true = np.array([1.2, 1.7, 0.2])
x_o = oscillator(theta_true[None], np.random.default_rng(2))[0]  # (50,)

samples = posterior.sample(NUM_SAMPLES, x=x_o, seed=0)  # torch (NUM_SAMPLES, 3)
mean, std = samples.mean(0), samples.std(0)
for name, truth, m, s in zip(names, theta_true, mean, std, strict=True):
    print(f"{name:>6}: true {truth:.3f}   posterior {m:.3f} +- {s:.3f}   ({(m - truth) / s:+.1f} sigma)")

# %% [markdown]
# ## 3. Corner plot
#
# One- and two-dimensional marginals of the samples, with the true parameters as red lines.
# The figure is written to a file and, in a notebook, displayed as well.

# %%
fig = corner_plot(samples, truth=theta_true, labels=names, path=OUT / "oscillator_corner.png")
loss_plot(posterior.info, path=OUT / "oscillator_loss.png")
fig  # noqa: B018 - a notebook displays the figure

# %% [markdown]
# ## 4. Save and load
#
# A posterior file holds the weights and a JSON description; loading it never runs code
# from the file. The same seed gives the same samples after a round trip.

# %%
path = posterior.save(OUT / "oscillator_posterior.pt")
loaded = sbikit.load(path, device="cpu")
assert torch.equal(loaded.sample(100, x=x_o, seed=1), posterior.sample(100, x=x_o, seed=1))
print(f"saved to {path} and reloaded: {loaded}")

# %% [markdown]
# ## 5. A bundled simulator
#
# `simulators.get(name)` returns a simulator with its prior, parameter names and exact
# likelihood; `simulators.available()` lists them. Two moons has a bimodal posterior made
# of two crescents, and an exact posterior sampler to compare with.

# %%
print(simulators.available())
sim = simulators.get("two_moons")
theta = sim.prior.sample(NUM_SIMULATIONS, seed=0)  # torch (n, 2)
x = sim.simulate(theta, seed=1)  # torch in, torch out: (n, 2)
posterior = sbikit.NPE(sim.prior, flow="maf", theta_names=sim.theta_names).fit(
    theta, x, seed=0, progress=False, **FIT_KWARGS
)

theta_true = np.array([0.25, 0.25])
x_o = sim.simulate(theta_true, seed=2)  # numpy in, numpy out: (2,)
samples = posterior.sample(NUM_SAMPLES, x=x_o, seed=0)
corner_plot(samples, truth=theta_true, labels=sim.theta_names, path=OUT / "two_moons_corner.png")

# %% [markdown]
# How close is NPE to the truth? Overlay the exact posterior samples: the two crescents
# should coincide (in fast mode the flow is barely trained and they will not).

# %%
reference = sim.sample_posterior(x_o, NUM_SAMPLES, seed=0)
fig = corner_overlay(
    [samples, reference],
    ["NPE", "exact"],
    truth=theta_true,
    labels=sim.theta_names,
    path=OUT / "two_moons_vs_exact.png",
)
fig  # noqa: B018 - a notebook displays the figure

# %% [markdown]
# ## Next
#
# The same pipeline runs from the command line with a TOML file:
#
# ```
# sbikit run tutorials/configs/two_moons.toml --out runs/two_moons
# ```
