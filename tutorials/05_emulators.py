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
# # Emulators: a fast, learned stand-in for an image simulator
#
# When a simulator is slow, a generative network trained on a few thousand of its outputs
# can produce many more, far faster. An **emulator** in `sbikit.emulators` learns `x | theta`
# and then behaves like a simulator: `emulator.simulate(theta, seed=)` takes and returns the
# same types, so it can feed `sbikit.simulate`, NPE and the diagnostics. This tutorial
#
# 1. trains a conditional VAE (`ConditionalVAE`) on Sersic galaxy images,
# 2. compares emulated and simulated images and their power spectra,
# 3. measures its fidelity (`sbikit.emulators.fidelity`: C2ST, MMD, KS, power spectrum,
#    speed-up),
# 4. trains NPE on emulated images and compares its posterior with NPE on real ones,
# 5. shows the WGAN-GP emulator (`ConditionalWGAN`) and saving/loading.
#
# Set `SBIKIT_FAST=1` to run everything with tiny budgets in seconds (the results are then
# poor); figures go to `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import logging
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from sklearn.neural_network import MLPClassifier

import sbikit
import simulators
from sbikit.compressors import Regression
from sbikit.diagnostics.c2st import c2st
from sbikit.emulators import (
    ConditionalVAE,
    ConditionalWGAN,
    edge_weighted_design,
    fidelity,
    load_emulator,
    power_spectrum,
)

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)

SIZE = 16 if FAST else 32  # stamp side in pixels
NUM_TRAIN = 800 if FAST else 5000  # simulations the emulator learns from
NUM_NPE = 2000 if FAST else 50_000  # simulations for NPE
CHANNELS = (4, 8) if FAST else (8, 16, 32)
EPOCHS = 5 if FAST else 200
# C2ST's classifier: the standard MLP; in fast mode one that stops early (seconds, not minutes)
CLASSIFIER = MLPClassifier(early_stopping=True, random_state=0) if FAST else None
print(f"fast mode: {FAST}; writing figures to {OUT.resolve()}")

# %% [markdown]
# ## 1. Train a conditional VAE on galaxy images
#
# `sersic` renders a galaxy with parameters `(log10 flux, r_half, n, e1, e2)` and adds white
# Gaussian noise of one count per pixel. The CVAE's decoder predicts a mean image from the
# latent `z` and `theta`, and adds Gaussian noise with a learned scale per pixel, so it can
# represent this simulator exactly. The decoder is an MLP to all pixels (`decoder="mlp"`),
# the encoder a small CNN; `theta` and `x` are standardised with the training statistics.
# Passing the prior lets the emulator stand in for the simulator in `sbikit.simulate`.
#
# Where to simulate the training set is ours to choose: the emulator learns `p(x | theta)`,
# which does not depend on how the training `theta` are spread, so any design covering the
# prior's box targets the same thing. Prior draws leave the box's faces and corners thin,
# and that is where an emulator is worst; `edge_weighted_design` draws half of the rows with
# coordinates crowded toward the bounds (the arcsine law), the other half from the prior.
# (Data for NPE below is drawn from the prior, as it must be.)

# %%
sim = simulators.get("sersic", size=SIZE)
theta = edge_weighted_design(sim.prior, NUM_TRAIN, edge_fraction=0.5, seed=0)  # (n, 5)
x = sim.simulate(theta.double().numpy(), seed=1)  # (n, SIZE, SIZE), numpy

cvae = ConditionalVAE(8, decoder="mlp", hidden_features=256, channels=CHANNELS, prior=sim.prior)
cvae.fit(theta, x, seed=0, max_epochs=EPOCHS, progress=False)
print(f"trained {cvae.history.epochs} epochs; best validation -ELBO {cvae.history.best_val_loss:.1f} nats")

# %% [markdown]
# ## 2. Emulated and simulated galaxies, and their power spectra
#
# Same parameters, independent noise. The azimuthally averaged power spectrum
# (`power_spectrum(images) -> (k, P)` per image) shows the galaxy at low `k` and the white
# noise floor at high `k`; an emulator must match both.

# %%
theta_show = sim.prior.sample(4, seed=2)
x_sim = sim.simulate(theta_show.double().numpy(), seed=3)
x_emu = cvae.simulate(theta_show.double().numpy(), seed=4)  # numpy in, numpy out, like the simulator

fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for i in range(4):
    vmax = x_sim[i].max()
    axes[0, i].imshow(x_sim[i], cmap="magma", vmin=-3, vmax=vmax)
    axes[0, i].set_title("simulated")
    axes[1, i].imshow(x_emu[i], cmap="magma", vmin=-3, vmax=vmax)
    axes[1, i].set_title("emulated (CVAE)")
for ax in axes.ravel():
    ax.axis("off")
fig.savefig(OUT / "emulated_vs_simulated.png", dpi=80, bbox_inches="tight")

num = 100 if FAST else 1000
fig, ax = plt.subplots(figsize=(6, 4))
for i, colour in zip(range(2), ("C0", "C1"), strict=True):
    rows = theta_show[i].expand(num, -1).double().numpy()
    k, p_sim = power_spectrum(sim.simulate(rows, seed=10 + i))
    _, p_emu = power_spectrum(cvae.simulate(rows, seed=20 + i))
    ax.loglog(k, p_sim.mean(0), color=colour, label=f"simulated, galaxy {i}")
    ax.loglog(k, p_emu.mean(0), "--", color=colour, label=f"emulated, galaxy {i}")
ax.set_xlabel("k [rad / pixel]")
ax.set_ylabel("P(k)")
ax.legend(fontsize=8)
fig.savefig(OUT / "power_spectra.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 3. Fidelity, at fixed parameters
#
# `fidelity(emulator, simulator, theta_test)` draws `num_samples` outputs from both at each
# `theta` and reports: C2ST (0.5 = indistinguishable) and MMD (about 0 when equal) on
# summaries, the KS distance of the pixel histograms, the power-spectrum ratio per `k` bin
# with its Monte Carlo error, and the speed-up. The summaries come from a regression CNN
# trained on the real simulations; it is also the compressor for NPE below (any function of
# `x` is a valid summary for NPE; that it was fitted on the edge-weighted design only changes
# where its summaries are most informative).

# %%
compressor = Regression(channels=CHANNELS).fit(x, theta, seed=0, max_epochs=EPOCHS, progress=False)
theta_test = sim.prior.sample(2 if FAST else 6, seed=5)
report = fidelity(
    cvae, sim, theta_test, num_samples=200 if FAST else 1000, summary=compressor, seed=0, classifier=CLASSIFIER
)
print(report)
print("power-spectrum bins within 5% (given their Monte Carlo error):", report.power_within(0.05).mean())

# %% [markdown]
# ## 4. NPE on emulated images
#
# The emulator produces the NPE training set; the same frozen compressor turns images into
# 5 summaries for both NPEs. If the emulator is faithful, the two posteriors agree (C2ST
# near 0.5); the spread of NPE itself, trained twice on real data, sets the floor.

# %%
theta_npe = sim.prior.sample(NUM_NPE, seed=6)
x_real = sim.simulate(theta_npe.double().numpy(), seed=7)
x_fake = cvae.simulate(theta_npe.double().numpy(), seed=8)
npe_kw = {"seed": 0, "progress": False, "max_epochs": 5 if FAST else None}
npe_kw = {k: v for k, v in npe_kw.items() if v is not None}
post_real = sbikit.NPE(sim.prior).fit(theta_npe, compressor.encode(x_real), **npe_kw)
post_emu = sbikit.NPE(sim.prior).fit(theta_npe, compressor.encode(x_fake), **npe_kw)

theta_o = sim.prior.sample(1, seed=9)[0]
s_o = compressor.encode(sim.simulate(theta_o.double().numpy(), seed=10))
a = post_real.sample(1000, x=s_o, seed=0)
b = post_emu.sample(1000, x=s_o, seed=1)
print(f"C2ST, NPE on emulated vs NPE on real images: {c2st(b, a, classifier=CLASSIFIER):.3f}")

fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(a[:, 0], a[:, 1], s=2, alpha=0.4, label="NPE on simulations")
ax.scatter(b[:, 0], b[:, 1], s=2, alpha=0.4, label="NPE on emulations")
ax.axvline(float(theta_o[0]), color="k", lw=0.8)
ax.axhline(float(theta_o[1]), color="k", lw=0.8)
ax.set_xlabel(sim.theta_names[0])
ax.set_ylabel(sim.theta_names[1])
ax.legend(markerscale=4, fontsize=8)
fig.savefig(OUT / "npe_emulated_vs_real.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 5. The WGAN-GP emulator, the store, and saving
#
# `ConditionalWGAN` is trained adversarially: a critic scores images, the generator learns
# to raise the critic's score on its outputs, with a gradient penalty keeping the critic
# 1-Lipschitz. It needs far more optimiser steps than the CVAE (its losses say little about
# sample quality; see docs/emulators.md). On galaxy images its generator should produce the
# coefficients of the training images' principal components (`generator="pca"`, as the
# CVAE's `decoder="pca"`): with an MLP to all 1,024 pixels, 200 epochs left the galaxies'
# power off by up to 2x; with the basis, 127 of 128 power-spectrum bins were within 5%
# (benchmarks/RESULTS.md). The same class fitted with `theta=None` is an unconditional model
# of the images, used by the anomaly scores.
#
# Any emulator can be saved, loaded (weights only, never code) and handed to
# `sbikit.simulate` as the simulator of a resumable store (zarr needed for the store).

# %%
wgan = ConditionalWGAN(8, generator="pca", hidden_features=64 if FAST else 256, channels=CHANNELS, prior=sim.prior)
wgan.fit(theta, x, seed=0, max_epochs=2 if FAST else 100, learning_rate=1e-3, progress=False)
print(f"WGAN: {wgan.history.generator_steps} generator steps, validation W {wgan.history.val_wasserstein[-1]:.2f}")

path = cvae.save(OUT / "cvae_sersic.pt")
again = load_emulator(path, device="cpu")
assert (again.simulate(theta_show.double().numpy(), seed=4) == x_emu).all()  # same seed, same images

try:
    import zarr  # noqa: F401
except ImportError:
    print("zarr is not installed: skipping sbikit.simulate(emulator, ...)")
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = sbikit.simulate(again, 200, store=OUT / "emulated.zarr", seed=0, progress=False)
    print(f"store of emulated images: x {store.x.shape}")
