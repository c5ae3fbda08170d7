"""Two moons: a bimodal, crescent-shaped posterior (the SBI benchmark of Greenberg et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sbikit.priors import BoxUniform
from simulators.base import ArrayLike, Simulator, _to_numpy
from simulators.registry import register

__all__ = ["TwoMoons"]

_SQRT2 = math.sqrt(2.0)


@register("two_moons")
class TwoMoons(Simulator):
    """Two moons.

    Prior ``theta ~ U[-1, 1]^2``. Noise: ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
    ``p = (r cos a + 0.25, r sin a)``; then
    ``x = p + (-|theta_1 + theta_2| / sqrt(2), (-theta_1 + theta_2) / sqrt(2))``, shape ``(2,)``.

    The likelihood is exact: with ``q = x - shift(theta) - (0.25, 0)`` in polar coordinates
    ``(|q|, atan2 q)``, ``p(x | theta) = N(r; 0.1, 0.01^2) / (pi |q|)`` where the signed
    radius is ``r = |q|`` for ``q_1 > 0`` and ``r = -|q|`` for ``q_1 < 0`` (a negative draw of
    ``r``, probability ~1e-23, lands in the left half plane; keeping it makes the density
    exact and finite everywhere instead of ``-inf``).

    The noise constants are class attributes (``r_mean``, ``r_std``, ``center``) used by
    both :meth:`simulate` and :meth:`log_likelihood`.
    """

    r_mean: float = 0.1
    r_std: float = 0.01
    center: float = 0.25

    def __init__(self) -> None:
        self.prior = BoxUniform(-torch.ones(2), torch.ones(2))
        self.theta_names = ["theta_1", "theta_2"]
        self.x_shape = (2,)

    # -- model -----------------------------------------------------------------------
    @staticmethod
    def _shift(theta: np.ndarray) -> np.ndarray:
        """The deterministic part ``(n, 2)``: ``(-|t1 + t2|, -t1 + t2) / sqrt(2)``."""
        u = theta[:, 0] + theta[:, 1]
        v = -theta[:, 0] + theta[:, 1]
        return np.stack([-np.abs(u) / _SQRT2, v / _SQRT2], axis=1)

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws ``(n, 2)`` of ``p = (r cos a + 0.25, r sin a)``."""
        a = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
        r = self.r_mean + self.r_std * rng.standard_normal(n)
        return np.stack([r * np.cos(a) + self.center, r * np.sin(a)], axis=1)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._noise(theta.shape[0], rng) + self._shift(theta)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        q = x - self._shift(theta)
        q1 = q[:, 0] - self.center
        q2 = q[:, 1]
        radius = np.hypot(q1, q2)
        signed_r = np.where(q1 > 0, radius, -radius)
        log_norm = math.log(self.r_std * math.sqrt(2 * math.pi))
        log_n = -0.5 * ((signed_r - self.r_mean) / self.r_std) ** 2 - log_norm
        # |q| = 0 has probability zero; clamp so the value stays finite.
        return log_n - math.log(math.pi) - np.log(np.maximum(radius, np.finfo(np.float64).tiny))

    # -- exact posterior ---------------------------------------------------------------
    def sample_posterior(self, x_o: ArrayLike, n: int, seed: int | None = None) -> Tensor:
        """Exact samples from ``p(theta | x_o)`` under the uniform prior.

        Why it is exact: write ``u = theta_1 + theta_2`` and ``v = -theta_1 + theta_2``; then
        ``x = p + g(theta)`` with ``g(theta) = (-|u|, v) / sqrt(2)``. On each half plane
        ``u > 0`` and ``u < 0`` the map ``g`` is linear (a rotation, possibly composed with a
        reflection) with ``|det| = 1``. Draw ``p`` from the noise distribution and set
        ``s = x_o - p``, which has density ``p_noise(x_o - s)``. If ``s_1 <= 0`` it has one
        preimage on each half plane: ``u = +-(-sqrt(2) s_1)``, ``v = sqrt(2) s_2``; choosing
        the sign with probability 1/2 gives ``theta`` the density
        ``p_noise(x_o - g(theta)) / 2 = p(x_o | theta) / 2`` on the whole plane (``s_1 > 0``
        has no preimage and is dropped). Rejecting ``theta`` outside the box multiplies by
        the uniform prior, so the accepted ``theta`` follow ``p(x_o | theta) p(theta)``
        normalised, i.e. the posterior.

        Args:
            x_o: the observation, shape ``(2,)`` or ``(1, 2)``.
            n: number of samples.
            seed: seed for ``np.random.default_rng``.

        Returns:
            Tensor ``(n, 2)``, float32, strictly inside the prior box.

        Raises:
            ValueError: if ``x_o`` has the wrong shape, or the posterior has (numerically)
                no mass inside the prior box.
        """
        xo = _to_numpy(x_o)
        if xo.shape not in ((2,), (1, 2)):
            raise ValueError(f"x_o must have shape (2,) or (1, 2) for {self.name}, got {tuple(xo.shape)}")
        xo = xo.reshape(2)
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        n = int(n)
        rng = np.random.default_rng(seed)
        accepted: list[np.ndarray] = []
        count, proposed = 0, 0
        while count < n:
            rate = max(count / proposed, 1e-3) if proposed else 0.5
            batch = int(min(max(1.2 * (n - count) / rate, 1024), 1_000_000))
            s = xo[None, :] - self._noise(batch, rng)
            sign = np.where(rng.random(batch) < 0.5, 1.0, -1.0)
            u = sign * (-_SQRT2 * s[:, 0])
            v = _SQRT2 * s[:, 1]
            # Cast first so the support check sees the float32 values that are returned.
            theta = np.stack([(u - v) / 2, (u + v) / 2], axis=1).astype(np.float32)
            ok = (s[:, 0] <= 0) & self.prior.in_support(torch.from_numpy(theta)).numpy()
            accepted.append(theta[ok])
            count += int(ok.sum())
            proposed += batch
            if count == 0 and proposed >= 10_000_000:
                raise ValueError(
                    f"none of {proposed} proposals fell inside the prior box for x_o={xo.tolist()}; "
                    "the posterior has (almost) no mass there"
                )
        out = np.concatenate(accepted, axis=0)[:n] if accepted else np.zeros((0, 2), np.float32)
        return torch.from_numpy(np.ascontiguousarray(out))
