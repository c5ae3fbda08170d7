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
# # Finding the odd ones out: density-based anomaly detection on galaxy images
#
# A survey delivers millions of galaxy stamps, and a few of them hold something the galaxy
# model never produces: a satellite trail, a second galaxy, a cosmic ray, a lensed ring.
# Learn what *normal* data look like, give every image a score that is high where the
# image is unlike the normal data, and flag images whose score is above a threshold. This
# tutorial
#
# 1. simulates normal galaxies (`sersic`) and injects four kinds of anomalies
#    (`simulators.anomalies.inject`),
# 2. scores them with three kinds of detector in `sbikit.density`: the PCA reconstruction
#    error, a normalizing-flow density `p(s)` on a compressor's summaries (`FlowDensity`),
#    and the WGAN anomaly score (`WGANAnomalyScore`),
# 3. compares them by ROC curves and their area (AUROC),
# 4. sets a threshold from a false-positive rate: flag at most 5% of normal galaxies.
#
# Set `SBIKIT_FAST=1` to run everything with tiny budgets in seconds (the results are then
# poor); figures go to `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import simulators
from sbikit.compressors import Regression
from sbikit.density import (
    AnomalyDetector,
    FlowDensity,
    PCAReconstructionScore,
    WGANAnomalyScore,
    auroc,
    roc_curve,
)
from sbikit.emulators import ConditionalWGAN
from simulators.anomalies import ANOMALY_KINDS, inject

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)

SIZE = 16 if FAST else 32  # stamp side in pixels
NUM_TRAIN = 600 if FAST else 4000  # normal images the detectors learn from
NUM_HELD_OUT = 400 if FAST else 2000  # normal images for the threshold
NUM_TEST = 200 if FAST else 1000  # test images per class
CHANNELS = (4, 8) if FAST else (16, 32, 64)
TRAIN = {"seed": 0, "progress": False, "max_epochs": 2 if FAST else 50}
# The WGAN dominates the run time: ~30 s per epoch on one CPU core for 4,000 32 x 32 images;
# benchmarks/anomalies.py trains it for 100 epochs.
WGAN_EPOCHS = 2 if FAST else 30
print(f"fast mode: {FAST}; writing figures to {OUT.resolve()}")

# %% [markdown]
# ## 1. Normal galaxies and injected anomalies
#
# The `sersic` simulator draws a galaxy (flux 100-1000 counts, half-light radius 1.5-5
# pixels), convolves it with a Gaussian PSF of 1 pixel and adds white noise of 1 count per
# pixel. `inject(images, kind, seed=...)` adds one anomaly to every image. Amplitudes are
# in noise units and deliberately modest, a few sigma per pixel (see the docstring of
# `simulators.anomalies`): a trail peaks at 1-3 sigma, a ring at 1-2.5 sigma, a cosmic ray
# at 4-12 sigma in 1-4 pixels, and a blended companion is a second galaxy from the prior.

# %%
sersic = simulators.get("sersic", size=SIZE)


def normal_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Parameters ``(n, 5)`` and images ``(n, SIZE, SIZE)`` of ``n`` normal galaxies."""
    theta = sersic.prior.sample(n, seed=seed)
    return theta, np.asarray(sersic.simulate(theta.double().numpy(), seed=seed + 1))


theta_train, x_train = normal_images(NUM_TRAIN, 0)
_, x_held_out = normal_images(NUM_HELD_OUT, 10)
theta_normal, x_normal = normal_images(NUM_TEST, 20)
bases = {kind: normal_images(NUM_TEST, 30 + 2 * i)[1] for i, kind in enumerate(ANOMALY_KINDS)}
x_anomalous = {kind: inject(bases[kind], kind, seed=i) for i, kind in enumerate(ANOMALY_KINDS)}

# Top: images with an anomaly; bottom: the light that was added (same colour scale per column).
fig, axes = plt.subplots(2, 5, figsize=(13, 5.5))
axes[0, 0].imshow(x_normal[0], cmap="magma")
axes[0, 0].set_title("normal")
axes[1, 0].imshow(x_normal[0] - sersic.model_image(theta_normal[0].double().numpy()), cmap="magma")
axes[1, 0].set_title("its noise")
for j, kind in enumerate(ANOMALY_KINDS):
    axes[0, j + 1].imshow(x_anomalous[kind][0], cmap="magma")
    axes[0, j + 1].set_title(kind)
    axes[1, j + 1].imshow(x_anomalous[kind][0] - bases[kind][0], cmap="magma")
    axes[1, j + 1].set_title(f"added: {kind}")
for ax in axes.ravel():
    ax.axis("off")
fig.savefig(OUT / "anomaly_examples.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 2. Three ways to score an image
#
# Every detector is an `AnomalyScore`: `fit` it on normal images only, then `score(x)`
# gives one number per image, higher meaning more anomalous.
#
# **PCA reconstruction error.** Normal galaxies lie close to a low-dimensional subspace of
# pixel space; the RMS residual of the projection on its leading principal components is
# the noise plus whatever the galaxy model cannot make. With `smoothing=1` the residual is
# first smoothed by the PSF: the noise averages down, structure seen through the optics
# does not (a matched filter), while sharp cosmic rays lose contrast.

# %%
scores = {
    "PCA residual": PCAReconstructionScore(8).fit(x_train),
    "PCA residual, PSF-smoothed": PCAReconstructionScore(8, smoothing=1.0).fit(x_train),
}

# %% [markdown]
# **A flow density on summaries.** Compress each image to a few summaries (here a CNN
# trained to predict the galaxy parameters, `Regression`), learn their density `p(s)` with
# a normalizing flow (`FlowDensity`) and score `-log p(s)`. An image is anomalous when its
# summaries are improbable. `AnomalyDetector` turns any function `images -> scores` into a
# detector with the same thresholding as the others.

# %%
regression = Regression(channels=CHANNELS).fit(x_train, theta_train, **TRAIN)
density = FlowDensity().fit(regression.encode(x_train), **TRAIN)
scores["flow on CNN summaries"] = AnomalyDetector(lambda x: density.score(regression.encode(x)))

# %% [markdown]
# **The WGAN anomaly score.** A WGAN trained on normal images (here `ConditionalWGAN`
# without parameters, `fit(None, x)`) can only generate normal galaxies. For an image `x`
# an encoder proposes a latent `z`, a few Adam steps on `z` refine the best reconstruction
# `G(z*)`, and the score combines the RMS residual `G = rms(x - G(z*))` with the RMS
# difference `C` of the critic's features of `x` and `G(z*)`:
# `AS = lam * G / G_0 + (1 - lam) * C / C_0` (each divided by its median on normal data).

# %%
wgan = ConditionalWGAN(8 if FAST else 32, hidden_features=32 if FAST else 128, channels=CHANNELS)
wgan.fit(None, x_train, seed=0, max_epochs=WGAN_EPOCHS, progress=False)
wgan_score = WGANAnomalyScore(wgan, num_steps=10 if FAST else 100, channels=CHANNELS)
scores["WGAN score"] = wgan_score.fit(x_train, **TRAIN)

# %% [markdown]
# ## 3. ROC curves and AUROC
#
# For a threshold `t`, the false-positive rate is the share of normal images with a score
# above `t`, the true-positive rate the share of anomalies. The ROC curve runs over all
# `t`; its area (AUROC) is the probability that an anomaly outscores a normal image
# (0.5: no better than chance, 1: perfect).

# %%
s_normal = {name: sc.score(x_normal) for name, sc in scores.items()}
s_anom = {name: {kind: sc.score(x) for kind, x in x_anomalous.items()} for name, sc in scores.items()}

print(f"{'AUROC':28s}" + "".join(f"{kind:>12s}" for kind in ANOMALY_KINDS))
for name in scores:
    print(f"{name:28s}" + "".join(f"{auroc(s_normal[name], s_anom[name][k]):12.3f}" for k in ANOMALY_KINDS))

fig, axes = plt.subplots(1, len(ANOMALY_KINDS), figsize=(4 * len(ANOMALY_KINDS), 4), sharey=True)
for ax, kind in zip(axes, ANOMALY_KINDS, strict=True):
    for name in scores:
        fpr, tpr, _ = roc_curve(s_normal[name], s_anom[name][kind])
        ax.plot(fpr, tpr, label=f"{name} ({auroc(s_normal[name], s_anom[name][kind]):.2f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_title(kind)
    ax.set_xlabel("false-positive rate")
    ax.legend(fontsize=7, loc="lower right")
axes[0].set_ylabel("true-positive rate")
fig.savefig(OUT / "roc_curves.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 4. A threshold from a false-positive rate
#
# `calibrate(x_held_out, false_positive_rate=0.05)` sets the threshold at the quantile of
# the scores of held-out normal images such that a fresh normal image exceeds it with
# probability at most 5% (exactly `floor((n + 1) 0.05) / (n + 1)`, averaged over held-out
# sets). Use normal images the detector was not fitted on: training images score lower.
# For the flow density the threshold is a density: `x` is anomalous when
# `p(s) < epsilon = exp(-threshold)`.

# %%
for name, sc in scores.items():
    sc.calibrate(x_held_out, false_positive_rate=0.05)
    realised = float(sc.is_anomalous(x_normal).float().mean())
    caught = "  ".join(f"{kind} {float(sc.is_anomalous(x).float().mean()):.2f}" for kind, x in x_anomalous.items())
    print(f"{name:28s} threshold {sc.threshold:8.3f}  false positives {realised:.3f}  detected: {caught}")

density.calibrate(regression.encode(x_held_out), false_positive_rate=0.05)
print(f"flow density: anomalous when p(s) < epsilon = {density.epsilon:.3g}")

best = "PCA residual, PSF-smoothed"
fig, ax = plt.subplots(figsize=(6, 4))
bins = np.linspace(0, float(max(s.max() for s in s_anom[best].values())), 60)
ax.hist(s_normal[best].numpy(), bins=bins, histtype="step", color="k", density=True, label="normal")
for kind in ANOMALY_KINDS:
    ax.hist(s_anom[best][kind].numpy(), bins=bins, histtype="step", density=True, label=kind)
ax.axvline(scores[best].threshold, color="r", ls="--", label="threshold (5% FPR)")
ax.set_xlabel(f"score: {best}")
ax.legend(fontsize=8)
fig.savefig(OUT / "threshold.png", dpi=80, bbox_inches="tight")
