"""Gaussian random field: a 2-d field with a power-law power spectrum, exact likelihood and Fisher matrix.

Conventions (numpy's default FFT normalisation: ``fft2`` unnormalised, ``ifft2`` with
``1 / N^2``). With white noise ``w ~ N(0, I)`` on an ``N x N`` grid,

    delta = Re IFFT2( sqrt(P(k)) * FFT2(w) ),   k = 2 pi |fftfreq(N)| on the 2-d grid,
    P(k) = A k^(-B) for k > 0,  P(0) = 0.

``P`` is symmetric under ``k -> -k``, so the imaginary part is zero up to rounding.
``delta = L w`` with the real symmetric circulant ``L = F^-1 diag(sqrt P) F``, hence
``delta ~ N(0, C)`` with ``C = L L^T = F^-1 diag(P) F``: a circulant covariance whose
eigenvalues are ``P(k)``, i.e. ``C_ab = N^-2 sum_k P(k) cos(k . (r_a - r_b))``. In terms of
``X = FFT2(x)``, ``E |X_k|^2 = N^2 P(k)``: ``P`` is the variance of the orthonormal Fourier
coefficient ``X_k / N``.

Because ``P(0) = 0`` the field has zero mean exactly and ``C`` has rank ``N^2 - 1``; the
likelihood is the density on that ``(N^2 - 1)``-dimensional subspace (the pseudo-determinant
Gaussian density, as ``scipy.stats.multivariate_normal(allow_singular=True)``), which
ignores the ``k = 0`` mode of ``x``. It is computed from independent Fourier modes: the
real coefficients of the non-redundant half-plane of ``rfft2``, where each complex mode
paired with its conjugate ``-k`` is two real Gaussian variables of variance ``P(k) / 2``
(weight 2) and each self-conjugate mode (``k = -k``: Nyquist rows/columns) is one real
variable of variance ``P(k)`` (weight 1, counted once).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sbikit.priors import BoxUniform
from simulators.base import ArrayLike, Simulator
from simulators.registry import register

__all__ = ["GaussianRandomField"]

# Rows simulated at once, so the complex128 work arrays stay ~ 64 MB for N = 64.
_ELEMENTS_PER_BLOCK = 4_000_000


@register("grf")
class GaussianRandomField(Simulator):
    """A 2-d Gaussian random field with power spectrum ``P(k) = A k^(-B)`` (``P(0) = 0``).

    ``theta = (A, B)`` with prior ``U[0.1, 1.25]^2``; ``x`` has shape ``(N, N)``.
    See the module docstring for the FFT convention and the likelihood.

    Args:
        size: grid side ``N`` (at least 2).
    """

    def __init__(self, size: int = 32) -> None:
        if int(size) < 2:
            raise ValueError(f"size must be an integer >= 2, got {size}")
        self.size = int(size)
        self.prior = BoxUniform(torch.tensor([0.1, 0.1]), torch.tensor([1.25, 1.25]))
        self.theta_names = ["A", "B"]
        self.x_shape = (self.size, self.size)
        n = self.size
        f = np.fft.fftfreq(n)
        self._k = 2 * math.pi * np.hypot(f[:, None], f[None, :])  # (N, N), full grid
        self._mask = self._k > 0
        self._log_k = np.log(np.where(self._mask, self._k, 1.0))  # 0 at k = 0 (masked anyway)
        # Independent modes on the rfft2 half plane (N, N // 2 + 1): weight 2 for a mode
        # paired with its conjugate, 1 for columns 0 and N/2 whose conjugates lie in the
        # same column (summing them all with weight 1 counts pairs twice, self-conjugate
        # modes once); k = 0 gets weight 0.
        kr = 2 * math.pi * np.hypot(f[:, None], np.fft.rfftfreq(n)[None, :])
        weight = np.full(kr.shape, 2.0)
        weight[:, 0] = 1.0
        if n % 2 == 0:
            weight[:, -1] = 1.0
        weight[0, 0] = 0.0
        self._weight_r = weight
        self._log_kr = np.log(np.where(kr > 0, kr, 1.0))

    # -- model -----------------------------------------------------------------------
    def power_spectrum(self, theta: ArrayLike) -> np.ndarray:
        """``P(k)`` on the full FFT grid.

        Args:
            theta: ``(n, 2)`` or ``(2,)`` rows of ``(A, B)``.

        Returns:
            float64 numpy ``(n, N, N)`` (``(N, N)`` for one row), zero at ``k = 0``.
        """
        th, single = self._theta_array(theta)
        p = self._power(th)
        return p[0] if single else p

    def _power(self, theta: np.ndarray) -> np.ndarray:
        a = theta[:, 0, None, None]
        b = theta[:, 1, None, None]
        return np.where(self._mask, a * np.exp(-b * self._log_k), 0.0)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, size = theta.shape[0], self.size
        out = np.empty((n, size, size))
        block = max(1, _ELEMENTS_PER_BLOCK // (size * size))
        for start in range(0, n, block):  # the noise is drawn block by block, in row order
            th = theta[start : start + block]
            w = rng.standard_normal((th.shape[0], size, size))
            out[start : start + block] = np.fft.ifft2(np.sqrt(self._power(th)) * np.fft.fft2(w)).real
        return out

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = self.size
        power = np.abs(np.fft.rfft2(x)) ** 2 / (n * n)  # |X_k|^2 / N^2: variance P(k) per complex mode
        log_p = np.log(theta[:, 0])[:, None, None] - theta[:, 1, None, None] * self._log_kr  # (n, N, N//2+1)
        w = self._weight_r
        # x -> (sqrt(2) Re X_k/N, sqrt(2) Im X_k/N) over paired modes and X_k/N over self-conjugate ones
        # is orthogonal, and each such real coordinate is N(0, P(k)); so the density w.r.t. Lebesgue
        # measure on x is a sum of weight * [-0.5 |X_k/N|^2 / P - 0.5 log(2 pi P)].
        terms = -0.5 * power * np.exp(-log_p) - 0.5 * (math.log(2 * math.pi) + log_p)
        return (w * terms).sum(axis=(1, 2))

    # -- Fisher information -------------------------------------------------------------
    def fisher_matrix(self, theta: ArrayLike) -> Tensor:
        """Fisher information of one field, ``F_ij = 1/2 sum_{k != 0} d_i log P(k) d_j log P(k)``.

        The sum runs over the full grid (each real Gaussian degree of freedom of variance
        ``propto P(k)`` contributes ``1/2 (d log P)^2``; the ``N^2 - 1`` full-grid modes are
        exactly the ``N^2 - 1`` real degrees of freedom). With ``log P = log A - B log k``:
        ``F_AA = (N^2 - 1) / (2 A^2)``, ``F_AB = -sum log k / (2 A)``, ``F_BB = sum (log k)^2 / 2``.

        Args:
            theta: ``(n, 2)`` or ``(2,)``.

        Returns:
            float64 tensor ``(n, 2, 2)`` (``(2, 2)`` for one row).
        """
        th, single = self._theta_array(theta)
        lk = self._log_k[self._mask]
        m = lk.size
        a = th[:, 0]
        fisher = np.empty((th.shape[0], 2, 2))
        fisher[:, 0, 0] = 0.5 * m / a**2
        fisher[:, 0, 1] = fisher[:, 1, 0] = -0.5 * lk.sum() / a
        fisher[:, 1, 1] = 0.5 * (lk**2).sum()
        out = torch.from_numpy(fisher)
        return out[0] if single else out
