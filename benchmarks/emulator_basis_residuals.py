"""How well a principal-component basis of NOISY sersic images spans the noiseless ones.

The PCA decoder of :class:`sbikit.emulators.ConditionalVAE` (and the WGAN's PCA generator)
restricts the mean image to the span of the leading principal components of the training
images. This script measures what that restriction costs on ``sersic`` (white noise of
known ``sigma``): for a basis of ``m`` components it projects noiseless images ``m(theta)``
(centred on the training mean) and reports the residual ``sum_pixels (r / sigma)^2`` per
image, at 2,000 held-out prior draws (``prior.sample(2000, seed=20)``) and at the 4 corners of
``benchmarks/screen_emulators.py``. Bases, each from the 5,000 training images of
``screen_emulators.training_design`` (``--designs``):

* ``noisy``: PCA of the training images, as the library computes it;
* ``noiseless``: PCA of ``m(theta)`` at the same parameters (an oracle: the best any basis
  estimated from these parameters can do);
* ``snr``: rows weighted by ``max(|x - mean|^2 - D sigma^2, 0) / |x - mean|^2`` (brightness);
* ``knnK``: each image replaced by the mean of its ``K`` nearest neighbours in z-scored
  ``theta`` (noise variance / K, the signal blurred) before the PCA.

Usage::

    python benchmarks/emulator_basis_residuals.py --out benchmarks/results/emulator_basis_residuals.json

About a minute on one core (numpy SVDs of 5,000 x 1,024).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from screen_emulators import corners, training_design  # noqa: E402

import simulators  # noqa: E402


def leading_basis(rows: np.ndarray, m: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Top ``m`` right singular vectors ``(m, D)`` of the centred (optionally row-weighted) rows."""
    centred = rows - rows.mean(0)
    if weights is not None:
        centred = centred * np.sqrt(weights)[:, None]
    return np.linalg.svd(centred, full_matrices=False)[2][:m]


def residual_chi2(images: np.ndarray, mean: np.ndarray, basis: np.ndarray, sigma: float) -> np.ndarray:
    """``sum_pixels ((I - P) (image - mean))^2 / sigma^2`` per row."""
    d = images - mean
    return ((d - d @ basis.T @ basis) ** 2).sum(1) / sigma**2


def run(designs: list[str], components: list[int], ks: list[int]) -> list[dict[str, Any]]:
    sim = simulators.get("sersic", size=32)
    prior, sigma = sim.prior, sim.noise_sigma
    held = np.asarray(sim.model_image(prior.sample(2000, seed=20).double().numpy())).reshape(2000, -1)
    corner = np.asarray(sim.model_image(corners(prior))).reshape(4, -1)
    out = []
    for design in designs:
        theta = training_design(prior, 5000, design).double().numpy()
        x = np.asarray(sim.simulate(theta, seed=1)).reshape(len(theta), -1)
        clean = np.asarray(sim.model_image(theta)).reshape(len(theta), -1)
        mean = x.mean(0)
        n2 = ((x - mean) ** 2).sum(1)
        sources: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
            "noisy": (x, None),
            "noiseless": (clean, None),
            "snr": (x, np.clip(n2 - x.shape[1] * sigma**2, 0, None) / n2),
        }
        ts = (theta - theta.mean(0)) / theta.std(0)
        order = np.argsort(((ts[:, None] - ts[None]) ** 2).sum(-1), axis=1)
        for k in ks:
            sources[f"knn{k}"] = (x[order[:, :k]].mean(1), None)
        for name, (rows, w) in sources.items():
            full = leading_basis(rows, max(components), w)
            for m in components:
                rh = residual_chi2(held, mean, full[:m], sigma)
                rc = residual_chi2(corner, mean, full[:m], sigma)
                rec = {
                    "design": design,
                    "basis": name,
                    "components": m,
                    "heldout_mean": float(rh.mean()),
                    "heldout_p99": float(np.quantile(rh, 0.99)),
                    "heldout_max": float(rh.max()),
                    "corners": rc.round(2).tolist(),
                }
                out.append(rec)
                print(json.dumps(rec), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="+", default=["prior", "mix50"])
    parser.add_argument("--components", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--knn", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    recs = run(args.designs, args.components, args.knn)
    if args.out:
        args.out.write_text(json.dumps(recs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
