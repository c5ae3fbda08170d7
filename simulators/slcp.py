"""SLCP: simple likelihood, complex posterior (Papamakarios et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sbikit.priors import BoxUniform
from simulators.base import Simulator
from simulators.registry import register

__all__ = ["SLCP"]


def _log_cosh(t: np.ndarray) -> np.ndarray:
    """``log cosh t`` without overflow."""
    a = np.abs(t)
    return a + np.log1p(np.exp(-2 * a)) - math.log(2.0)


@register("slcp")
class SLCP(Simulator):
    """SLCP.

    Prior ``theta ~ U[-3, 3]^5``. With ``m = (theta_1, theta_2)``, ``s_1 = theta_3^2``,
    ``s_2 = theta_4^2``, ``rho = tanh(theta_5)`` and
    ``S = [[s_1^2, rho s_1 s_2], [rho s_1 s_2, s_2^2]]``, ``x`` is ``num_draws = 4`` iid
    draws from ``N(m, S)`` flattened to shape ``(8,)`` as
    ``(x1_1, x1_2, x2_1, x2_2, x3_1, x3_2, x4_1, x4_2)``.

    The likelihood is the sum of four closed-form bivariate normal log densities; it is
    ``-inf`` where ``S`` is singular (``theta_3 = 0`` or ``theta_4 = 0``).
    """

    num_draws: int = 4

    def __init__(self) -> None:
        self.prior = BoxUniform(torch.full((5,), -3.0), torch.full((5,), 3.0))
        self.theta_names = ["m_1", "m_2", "sqrt_s_1", "sqrt_s_2", "atanh_rho"]
        self.x_shape = (2 * self.num_draws,)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, k = theta.shape[0], self.num_draws
        m1, m2 = theta[:, 0:1], theta[:, 1:2]
        s1, s2 = theta[:, 2:3] ** 2, theta[:, 3:4] ** 2
        rho = np.tanh(theta[:, 4:5])  # sqrt(1 - rho^2) = 1 / cosh(theta_5)
        z = rng.standard_normal((n, k, 2))
        x1 = m1 + s1 * z[:, :, 0]
        x2 = m2 + s2 * (rho * z[:, :, 0] + z[:, :, 1] / np.cosh(theta[:, 4:5]))
        return np.stack([x1, x2], axis=2).reshape(n, 2 * k)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        n, k = theta.shape[0], self.num_draws
        xs = x.reshape(n, k, 2)
        s1, s2 = theta[:, 2:3] ** 2, theta[:, 3:4] ** 2
        t5 = theta[:, 4:5]
        rho = np.tanh(t5)
        one_m_rho2 = 1.0 / np.cosh(t5) ** 2  # 1 - tanh^2, accurate for large |theta_5|
        log_one_m_rho2 = -2.0 * _log_cosh(t5)
        d1 = (xs[:, :, 0] - theta[:, 0:1]) / s1
        d2 = (xs[:, :, 1] - theta[:, 1:2]) / s2
        maha = (d1**2 - 2 * rho * d1 * d2 + d2**2) / one_m_rho2
        log_det = 2 * np.log(s1) + 2 * np.log(s2) + log_one_m_rho2  # log det S
        lp = -math.log(2 * math.pi) - 0.5 * log_det - 0.5 * maha
        out = lp.sum(axis=1)
        singular = (s1[:, 0] == 0) | (s2[:, 0] == 0) | (one_m_rho2[:, 0] == 0)
        return np.where(singular, -np.inf, out)
