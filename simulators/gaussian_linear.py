"""Gaussian linear: Gaussian prior, Gaussian noise, Gaussian posterior in closed form."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sbikit.priors import Gaussian
from simulators.base import ArrayLike, Simulator, _to_numpy
from simulators.registry import register

__all__ = ["GaussianLinear"]


@register("gaussian_linear")
class GaussianLinear(Simulator):
    """``theta ~ N(0, prior_var I)``, ``x ~ N(theta, noise_var I)`` in ``dim`` dimensions.

    The defaults (``dim=10``, both variances 0.1) are the sbibm benchmark; its posterior
    is ``N(x_o / 2, 0.05 I)``.

    Args:
        dim: number of parameters ``d`` (``x`` has shape ``(d,)`` too).
        prior_var: prior variance per coordinate (positive).
        noise_var: noise variance per coordinate (positive).
    """

    def __init__(self, dim: int = 10, *, prior_var: float = 0.1, noise_var: float = 0.1) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if not (prior_var > 0 and noise_var > 0):
            raise ValueError(f"prior_var and noise_var must be positive, got {prior_var} and {noise_var}")
        d = int(dim)
        self.prior_var = float(prior_var)
        self.noise_var = float(noise_var)
        self.prior = Gaussian(torch.zeros(d), self.prior_var)
        self.theta_names = [f"theta_{i + 1}" for i in range(d)]
        self.x_shape = (d,)
        self._prior_mean = np.zeros(d)
        self._prior_cov = self.prior_var * np.eye(d)
        self._noise_cov = self.noise_var * np.eye(d)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + math.sqrt(self.noise_var) * rng.standard_normal(theta.shape)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = theta.shape[1]
        sq = ((x - theta) ** 2).sum(axis=1)
        return -0.5 * sq / self.noise_var - 0.5 * d * math.log(2 * math.pi * self.noise_var)

    def posterior_mean_cov(self, x_o: ArrayLike) -> tuple[Tensor, Tensor]:
        """Analytic posterior ``N(mean, cov)`` for one observation.

        ``cov = (S_prior^-1 + S_noise^-1)^-1`` and
        ``mean = cov (S_prior^-1 m_prior + S_noise^-1 x_o)``.

        Args:
            x_o: shape ``(d,)`` or ``(1, d)``.

        Returns:
            ``mean`` ``(d,)`` and ``cov`` ``(d, d)``, float64 tensors on the CPU.
        """
        xo = self._one_x(x_o)
        prior_prec = np.linalg.inv(self._prior_cov)
        noise_prec = np.linalg.inv(self._noise_cov)
        cov = np.linalg.inv(prior_prec + noise_prec)
        cov = 0.5 * (cov + cov.T)
        mean = cov @ (prior_prec @ self._prior_mean + noise_prec @ xo)
        return torch.from_numpy(mean), torch.from_numpy(cov)

    def sample_posterior(self, x_o: ArrayLike, n: int, seed: int | None = None) -> Tensor:
        """Exact posterior samples.

        Args:
            x_o: shape ``(d,)`` or ``(1, d)``.
            n: number of samples.
            seed: seed for ``np.random.default_rng``.

        Returns:
            Tensor ``(n, d)``, float32.
        """
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        mean, cov = self.posterior_mean_cov(x_o)
        chol = np.linalg.cholesky(cov.numpy())
        z = np.random.default_rng(seed).standard_normal((int(n), mean.numel()))
        return torch.from_numpy(mean.numpy() + z @ chol.T).to(torch.float32)

    def _one_x(self, x_o: ArrayLike) -> np.ndarray:
        xo = _to_numpy(x_o)
        d = self.x_shape[0]
        if xo.shape not in ((d,), (1, d)):
            raise ValueError(f"x_o must have shape ({d},) or (1, {d}) for {self.name}, got {tuple(xo.shape)}")
        return xo.reshape(d)
