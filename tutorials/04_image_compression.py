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
# # From images to summaries: compressors for simulation-based inference
#
# Astronomical data are images, but normalizing flows work best with a handful of numbers.
# A **compressor** turns each image into a few summaries; NPE then learns `p(theta | s)`.
# How much information survives depends on the compressor. This tutorial
#
# 1. simulates Gaussian random fields (`grf`) and galaxy images (`sersic`),
# 2. trains every compressor in `sbikit.compressors` (PCA, autoencoder, VAE, contrastive,
#    regression) and a CNN trained jointly with the flow (`NPE(prior, embedding="cnn")`),
# 3. looks at the latent spaces coloured by the parameters,
# 4. samples new galaxies: encode with a VAE, fit a Gaussian mixture `p(z)`
#    (`sbikit.density.GMM`), sample `z`, decode,
# 5. infers `(A, B)` of a field with NPE on each compressor's summaries and compares with
#    the exact posterior (the GRF has an exact likelihood, sampled with emcee).
#
# Set `SBIKIT_FAST=1` to run everything with tiny budgets in seconds (the results are then
# poor); figures go to `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import sbikit
import simulators
from sbikit.compressors import PCA, VAE, AutoEncoder, Contrastive, Regression
from sbikit.density import GMM
from sbikit.diagnostics.c2st import c2st
from sbikit.mcmc import reference_posterior

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)

SIZE = 16 if FAST else 32  # GRF grid side
NUM_SIMULATIONS = 400 if FAST else 10_000
CHANNELS = (4, 8) if FAST else (16, 32, 64)  # CNN channels per stage
TRAIN = {"max_epochs": 2 if FAST else 30, "patience": 5, "progress": False, "seed": 0}
print(f"fast mode: {FAST}; writing figures to {OUT.resolve()}")

# %% [markdown]
# ## 1. Simulate images
#
# The GRF has parameters `(A, B)`: amplitude and slope of its power spectrum
# `P(k) = A k^-B`. All its information is in the power spectrum, which a linear
# compressor (PCA) cannot see, but a non-linear one can.

# %%
grf = simulators.get("grf", size=SIZE)
theta = grf.prior.sample(NUM_SIMULATIONS, seed=0)  # (n, 2)
x = grf.simulate(theta, seed=1)  # (n, SIZE, SIZE)
x_pair = grf.simulate(theta, seed=2)  # a second field for each theta (contrastive pairs)

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for i, ax in enumerate(axes):
    ax.imshow(x[i], cmap="RdBu_r")
    ax.set_title(f"A={theta[i, 0]:.2f}, B={theta[i, 1]:.2f}")
    ax.axis("off")
fig.savefig(OUT / "grf_examples.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 2. Train the compressors
#
# Every compressor has the same interface: `fit(x, theta=None, ...)` returns the fitted
# compressor and `encode(x)` gives summaries `(n, k)`. Only `Regression` uses `theta`;
# `Contrastive` learns from pairs of fields with the same parameters.

# %%
compressors = {
    "PCA": PCA(8).fit(x),
    "AutoEncoder": AutoEncoder(8, channels=CHANNELS).fit(x, **TRAIN),
    "VAE": VAE(8, channels=CHANNELS).fit(x, **TRAIN),
    "Contrastive": Contrastive(8, channels=CHANNELS).fit(x, x_pair=x_pair, **TRAIN),
    "Regression": Regression(channels=CHANNELS).fit(x, theta, **TRAIN),
}
summaries = {name: comp.encode(x) for name, comp in compressors.items()}
for name, s in summaries.items():
    print(f"{name:12s} summaries {tuple(s.shape)}")

# %% [markdown]
# ## 3. Latent spaces coloured by the parameters
#
# The first two summaries of each compressor, coloured by `A` (top) and `B` (bottom).
# A good compressor orders its summaries by the parameters.

# %%
fig, axes = plt.subplots(2, len(summaries), figsize=(3 * len(summaries), 6))
for j, (name, s) in enumerate(summaries.items()):
    for i, pname in enumerate(grf.theta_names):
        axes[i, j].scatter(s[:2000, 0], s[:2000, 1], c=theta[:2000, i], s=3, cmap="viridis")
        axes[i, j].set_title(f"{name}: colour = {pname}")
fig.savefig(OUT / "latent_spaces.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 4. New galaxies from a VAE and a Gaussian mixture
#
# A VAE's prior `N(0, I)` is rarely where the encoded data sit. Fitting a Gaussian mixture
# to the encoded training images (number of components chosen by BIC) and decoding draws
# from it gives more realistic images.

# %%
sersic = simulators.get("sersic")
theta_g = sersic.prior.sample(NUM_SIMULATIONS, seed=3)
galaxies = sersic.simulate(theta_g, seed=4)
vae = VAE(8, channels=CHANNELS).fit(galaxies, **TRAIN)
z = vae.encode(galaxies)
gmm = GMM(max_components=4 if FAST else 10).fit(z, seed=0)
print(f"BIC chose {gmm.n_components} mixture components")
new = vae.decode(gmm.sample(4, seed=0))  # (4, 32, 32)

fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for i in range(4):
    axes[0, i].imshow(galaxies[i], cmap="magma")
    axes[0, i].set_title("simulated")
    axes[1, i].imshow(new[i], cmap="magma")
    axes[1, i].set_title("VAE + GMM")
for ax in axes.ravel():
    ax.axis("off")
fig.savefig(OUT / "vae_gmm_galaxies.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 5. Inference on summaries, against the exact posterior
#
# For each compressor, NPE learns `p(theta | s)` from the summaries. The CNN trained jointly
# with the flow (`embedding="cnn"`) learns its summaries for the posterior directly; with a
# CNN embedding `fit` defaults to batches of 128 and a learning rate of 1e-3 (the vector
# defaults, 512 and 3e-3, give the CNN too few steps). Every CNN here pools "power"
# features: the log mean square of each convolution's output, i.e. learned band powers,
# which is where a random field's information lives.
# A fitted compressor can also be passed as `NPE(prior, embedding=compressor)`; it is then
# used frozen. For NLE, fit on the summaries: `NLE(prior).fit(theta, comp.encode(x))`.

# %%
theta_o = torch.tensor([1.0, 0.5])
x_o = grf.simulate(theta_o, seed=10)
ref = reference_posterior(grf, x_o, num_samples=1000, seed=0).samples
npe_fit = {"seed": 0, "progress": False, "max_epochs": 5 if FAST else 200}

posteriors = {name: sbikit.NPE(grf.prior).fit(theta, s, **npe_fit) for name, s in summaries.items()}
joint = sbikit.NPE(grf.prior, embedding="cnn").fit(theta, x, **npe_fit)

fig, ax = plt.subplots(figsize=(6, 5))
ax.scatter(ref[:, 0], ref[:, 1], s=2, c="k", alpha=0.3, label="exact (emcee)")
for name, post in posteriors.items():
    s = post.sample(500, x=compressors[name].encode(x_o), seed=0)
    print(f"{name:12s} C2ST vs exact: {c2st(s, ref):.2f}")
    ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.3, label=name)
s = joint.sample(500, x=x_o, seed=0)
print(f"{'joint CNN':12s} C2ST vs exact: {c2st(s, ref):.2f}")
ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.3, label="joint CNN")
ax.set_xlabel("A")
ax.set_ylabel("B")
ax.legend(markerscale=4, fontsize=8)
fig.savefig(OUT / "grf_posteriors.png", dpi=80, bbox_inches="tight")
