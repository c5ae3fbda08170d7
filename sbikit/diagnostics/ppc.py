"""Posterior predictive checks: does the observation look like data the posterior predicts?

``posterior_predictive`` draws ``theta_k ~ q(theta | x_o)``, simulates ``x_k`` from each,
and compares the observation with the replicates. Every point (``x_o`` and each ``x_k``)
gets a typicality score: its mean distance to the replicates (the others, for a replicate).
If ``x_o`` were one more draw from the posterior predictive, its score would be
exchangeable with the replicates' scores, so the rank p-value
``p = (1 + #{k: score_k >= score_o}) / (K + 1)`` is valid; a small ``p`` says ``x_o``
lies further from the predicted data than the predicted data lie from each other (model
misspecification, or a poor posterior).

By default data are flattened and z-scored with the replicates' standard deviation, and
distances are Euclidean; pass ``distance`` for another metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbikit.diagnostics._common import sample_batch
from sbikit.utils import as_float_tensor

__all__ = ["posterior_predictive", "PPCResult", "euclidean"]

logger = logging.getLogger("sbikit.diagnostics")


def euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Euclidean distances: ``a`` ``(k, p)``, ``b`` ``(l, p)`` -> ``(k, l)``."""
    return torch.cdist(a.double(), b.double())


@dataclass
class PPCResult:
    """Output of :func:`posterior_predictive`.

    Attributes:
        theta: ``(K, d)`` posterior draws.
        x: ``(K, *x_shape)`` data simulated from them (non-finite rows dropped).
        distance: mean distance from ``x_o`` to the replicates.
        replicate_distances: ``(K,)`` mean distance from each replicate to the others.
        pvalue: rank p-value of ``distance`` among ``replicate_distances`` (small: ``x_o`` atypical).
    """

    theta: Tensor
    x: Tensor
    distance: float
    replicate_distances: Tensor
    pvalue: float

    def as_dict(self) -> dict[str, Any]:
        return {"distance": self.distance, "pvalue": self.pvalue, "num_samples": len(self.x)}


def _simulate(simulator: Any, theta: Tensor, seed: int | None) -> Tensor:
    if hasattr(simulator, "simulate"):
        out = simulator.simulate(theta, seed=seed)
    elif callable(simulator):
        out = simulator(theta)
    else:
        raise TypeError("simulator must have a simulate(theta, seed=) method or be a callable theta -> x")
    return as_float_tensor(out, "simulated x")


def posterior_predictive(
    posterior: Any,
    simulator: Any,
    x_o: Any,
    *,
    num_samples: int = 1000,
    distance: Callable[[Tensor, Tensor], Tensor] | None = None,
    standardize: bool = True,
    seed: int | None = 0,
) -> PPCResult:
    """Posterior predictive check of one observation.

    Args:
        posterior: any object with ``sample(n, x=...)`` (see :mod:`sbikit.diagnostics`).
        simulator: an object with ``simulate(theta, seed=)`` or a callable ``theta -> x``.
        x_o: the observation, shape ``x_shape``.
        num_samples: ``K``, posterior draws (and replicates).
        distance: pairwise distance ``(k, p), (l, p) -> (k, l)`` on flattened data;
            default :func:`euclidean`.
        standardize: z-score each data coordinate by the replicates' standard deviation first.
        seed: seeds the posterior draws and the simulations.

    Returns:
        A :class:`PPCResult` with the distance of ``x_o`` and its p-value.
    """
    xo = as_float_tensor(x_o, "x_o")
    theta = sample_batch(posterior, int(num_samples), xo[None], seed=seed)[0]
    x_rep = _simulate(simulator, theta, None if seed is None else int(seed) + 1)
    flat = x_rep.reshape(len(x_rep), -1).double()
    ok = torch.isfinite(flat).all(1)
    if not bool(ok.all()):
        logger.warning("posterior_predictive: dropped %d of %d replicates with NaN or inf", int((~ok).sum()), len(ok))
    flat, theta, x_rep = flat[ok], theta[ok], x_rep[ok]
    if len(flat) < 2:
        raise ValueError("posterior_predictive needs at least 2 finite replicates")
    obs = xo.reshape(1, -1).double()
    if obs.shape[1] != flat.shape[1]:
        raise ValueError(f"x_o has {obs.shape[1]} values but the simulator returns {flat.shape[1]} per data set")
    if standardize:
        std = flat.std(0).clamp_min(1e-12)
        flat, obs = flat / std, obs / std
    dist = distance or euclidean
    k = len(flat)
    d_obs = float(dist(obs, flat).mean())
    pair = dist(flat, flat)
    d_rep = pair.sum(1) / (k - 1)  # the diagonal is zero
    pvalue = float((1 + (d_rep >= d_obs).sum()) / (k + 1))
    return PPCResult(theta, x_rep, d_obs, d_rep.float(), pvalue)
