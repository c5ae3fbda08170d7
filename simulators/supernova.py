"""Supernova cosmology: a flat wCDM Hubble diagram of type Ia supernovae."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sbikit.priors import BoxUniform
from simulators.base import ArrayLike, Simulator
from simulators.registry import register

__all__ = ["Supernova", "SPEED_OF_LIGHT_KM_S"]

SPEED_OF_LIGHT_KM_S = 299_792.458

# Rows per block when integrating, so the (rows, num_sne, nodes) array stays ~ 16 MB.
_ELEMENTS_PER_BLOCK = 2_000_000


@register("supernova")
class Supernova(Simulator):
    """Distance moduli of ``num_sne`` supernovae in a flat wCDM universe.

    ``theta = (Omega_m, w)`` with prior ``BoxUniform([0.1, -2.0], [0.6, -0.4])``: matter
    density between 0.1 and 0.6, dark-energy equation of state between -2 and -0.4
    (``w = -1`` is a cosmological constant).

    For redshifts ``z`` (by default ``np.linspace(0.05, 1.4, num_sne)``),
    ``E(z) = sqrt(Omega_m (1+z)^3 + (1 - Omega_m) (1+z)^(3 (1 + w)))``,
    ``d_L = (1 + z) (c / H0) int_0^z dz' / E(z')`` in Mpc and
    ``mu = 5 log10(d_L) + 25``. The data are ``x = mu + sigma_mu * N(0, 1)``, shape
    ``(num_sne,)``, and the likelihood is the matching independent Gaussian.
    The integral uses fixed ``num_nodes``-point Gauss-Legendre quadrature on ``[0, z]``.

    Args:
        num_sne: number of supernovae (ignored when ``redshifts`` is given).
        sigma_mu: noise standard deviation of each distance modulus (mag).
        h0: Hubble constant in km/s/Mpc.
        redshifts: optional explicit redshifts, shape ``(num_sne,)``, all positive.
        num_nodes: Gauss-Legendre nodes per integral.
    """

    def __init__(
        self,
        num_sne: int = 40,
        sigma_mu: float = 0.15,
        h0: float = 70.0,
        *,
        redshifts: Sequence[float] | np.ndarray | None = None,
        num_nodes: int = 64,
    ) -> None:
        if redshifts is None:
            if int(num_sne) < 1:
                raise ValueError(f"num_sne must be a positive integer, got {num_sne}")
            z = np.linspace(0.05, 1.4, int(num_sne))
        else:
            z = np.asarray(redshifts, dtype=np.float64)
            if z.ndim != 1 or z.size == 0 or not np.all(np.isfinite(z)) or np.any(z <= 0):
                raise ValueError(f"redshifts must be a non-empty 1-d array of positive numbers, got {z!r}")
        if not sigma_mu > 0:
            raise ValueError(f"sigma_mu must be positive, got {sigma_mu}")
        if not h0 > 0:
            raise ValueError(f"h0 must be positive, got {h0}")
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be a positive integer, got {num_nodes}")
        self.redshifts = z
        self.num_sne = int(z.size)
        self.sigma_mu = float(sigma_mu)
        self.h0 = float(h0)
        self.num_nodes = int(num_nodes)
        self.prior = BoxUniform(torch.tensor([0.1, -2.0]), torch.tensor([0.6, -0.4]))
        self.theta_names = ["Omega_m", "w"]
        self.x_shape = (self.num_sne,)
        # Quadrature on [0, z]: z' = z (t + 1) / 2, dz' = z / 2 dt.
        t, wts = np.polynomial.legendre.leggauss(self.num_nodes)
        zp = self.redshifts[:, None] * (t[None, :] + 1) / 2  # (num_sne, nodes)
        self._log1p_zp = np.log1p(zp)
        self._cube_zp = (1 + zp) ** 3
        self._weights = self.redshifts[:, None] / 2 * wts[None, :]  # (num_sne, nodes)

    def _comoving_integral(self, theta: np.ndarray) -> np.ndarray:
        """``int_0^z dz' / E(z')`` for each row and redshift: ``(n, num_sne)``."""
        n = theta.shape[0]
        out = np.empty((n, self.num_sne))
        block = max(1, _ELEMENTS_PER_BLOCK // (self.num_sne * self.num_nodes))
        for start in range(0, n, block):  # blocks of rows bound memory; each block is vectorised
            om = theta[start : start + block, 0, None, None]
            w = theta[start : start + block, 1, None, None]
            e2 = om * self._cube_zp + (1 - om) * np.exp(3 * (1 + w) * self._log1p_zp)
            out[start : start + block] = (self._weights / np.sqrt(e2)).sum(axis=-1)
        return out

    def _mu(self, theta: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            d_l = (1 + self.redshifts) * (SPEED_OF_LIGHT_KM_S / self.h0) * self._comoving_integral(theta)
            return 5 * np.log10(d_l) + 25

    def distance_modulus(self, theta: ArrayLike) -> ArrayLike:
        """Noise-free distance moduli ``mu(z)``.

        Args:
            theta: ``(n, 2)`` or ``(2,)`` rows of ``(Omega_m, w)``.

        Returns:
            ``(n, num_sne)`` (``(num_sne,)`` for one row): numpy float64 for numpy input, torch
            float32 for torch input. ``NaN`` where ``E(z)^2 < 0`` (unphysical ``Omega_m > 1``).
        """
        th, single = self._theta_array(theta)
        mu = self._mu(th)
        return self._output(mu[0] if single else mu, theta)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mu = self._mu(theta)
        return mu + self.sigma_mu * rng.standard_normal(mu.shape)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        resid = (x - self._mu(theta)) / self.sigma_mu
        norm = self.num_sne * (math.log(self.sigma_mu) + 0.5 * math.log(2 * math.pi))
        return -0.5 * (resid**2).sum(axis=1) - norm
