"""Gaussian mixture: two components with a shared mean and very different widths."""

from __future__ import annotations

import math

import numpy as np
import torch

from sbikit.priors import BoxUniform
from simulators.base import Simulator
from simulators.registry import register

__all__ = ["GaussianMixture"]


@register("gaussian_mixture")
class GaussianMixture(Simulator):
    """``theta ~ U[-10, 10]^2``, ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``, shape ``(2,)``.

    The component weights and standard deviations are the class attributes ``weights``
    and ``scales``, used by both :meth:`simulate` and :meth:`log_likelihood`.
    """

    weights: tuple[float, float] = (0.5, 0.5)
    scales: tuple[float, float] = (1.0, 0.1)

    def __init__(self) -> None:
        self.prior = BoxUniform(torch.full((2,), -10.0), torch.full((2,), 10.0))
        self.theta_names = ["theta_1", "theta_2"]
        self.x_shape = (2,)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = theta.shape[0]
        first = rng.random(n) < self.weights[0]
        scale = np.where(first, self.scales[0], self.scales[1])
        return theta + scale[:, None] * rng.standard_normal((n, 2))

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        sq = ((x - theta) ** 2).sum(axis=1)
        comps = [
            math.log(w) - 0.5 * sq / s**2 - math.log(2 * math.pi * s**2)  # 2-d normal, covariance s^2 I
            for w, s in zip(self.weights, self.scales, strict=True)
        ]
        return np.logaddexp(comps[0], comps[1])
