"""The simulator protocol shared by every example simulator.

A simulator pairs a prior with a stochastic forward model and, for the examples
shipped here, its exact likelihood. Subclasses only write the numpy maths:

* ``_simulate(theta, rng)``: ``theta`` float64 ``(n, d)`` -> ``x`` ``(n, *x_shape)``;
* ``_log_likelihood(theta, x)``: ``theta`` ``(n, d)``, ``x`` ``(n, *x_shape)`` -> ``(n,)``.

:class:`Simulator` does everything else: numpy/torch conversion, unbatched inputs,
broadcasting, shape validation with errors that name the expected shape, seeding,
and turning ``NaN`` log-likelihoods into ``-inf``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.priors import Prior

__all__ = ["Simulator", "ArrayLike"]

ArrayLike = np.ndarray | Tensor


def _shape_str(shape: tuple[Any, ...]) -> str:
    """``("n", 2)`` -> ``"(n, 2)"``; ``(8,)`` -> ``"(8,)"``."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _to_numpy(value: Any) -> np.ndarray:
    """Any array-like (numpy, torch on any device, nested lists) -> float64 numpy array."""
    if isinstance(value, Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


class Simulator:
    """Base class of the example simulators.

    Attributes:
        name: the registry name (set by :func:`simulators.register`).
        prior: the prior over ``theta``, an :class:`sbikit.priors.Prior` of dimension ``d``.
        theta_names: ``d`` parameter names, for plots and tables.
        x_shape: shape of one simulated data set.
    """

    name: str = "simulator"
    prior: Prior
    theta_names: list[str]
    x_shape: tuple[int, ...]

    # -- public API -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return int(self.prior.dim)

    def simulate(
        self, theta: ArrayLike, seed: int | None = None, rng: np.random.Generator | None = None
    ) -> ArrayLike:
        """Simulate one data set per parameter row.

        Args:
            theta: parameters, shape ``(n, d)``, or a single row ``(d,)``. A numpy array
                (or nested list) gives a numpy result, a torch tensor a torch result.
            seed: seed for a fresh ``np.random.default_rng(seed)``.
            rng: a numpy ``Generator`` to draw from instead of ``seed`` (pass one of them).

        Returns:
            ``x`` of shape ``(n, *x_shape)`` (``x_shape`` for a single row): float64 numpy
            for numpy input, float32 torch on ``theta``'s device for torch input.

        Raises:
            ValueError: if ``theta`` has the wrong shape, or both ``seed`` and ``rng`` are given.
        """
        if rng is not None and seed is not None:
            raise ValueError("pass either seed or rng to simulate, not both")
        if rng is None:
            rng = np.random.default_rng(seed)
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator, got {type(rng).__name__}; pass an int as seed="
            )
        th, single = self._theta_array(theta)
        x = np.asarray(self._simulate(th, rng), dtype=np.float64)
        expected = (th.shape[0], *self.x_shape)
        if x.shape != expected:  # pragma: no cover - guards subclass bugs
            raise RuntimeError(f"{self.name}._simulate returned shape {x.shape}, expected {expected}")
        if single:
            x = x[0]
        return self._output(x, theta)

    def log_likelihood(self, theta: ArrayLike, x: ArrayLike) -> ArrayLike:
        """Exact ``log p(x | theta)``, vectorised over rows.

        Args:
            theta: shape ``(n, d)`` or ``(d,)``.
            x: shape ``(n, *x_shape)`` or ``x_shape``. An unbatched argument is broadcast
                against the batched one.

        Returns:
            Shape ``(n,)`` (``()`` if both are unbatched); ``-inf`` where ``x`` is impossible,
            never ``NaN``. Numpy float64 when ``theta`` is numpy; a torch tensor on ``theta``'s
            device (float64 if ``theta`` is float64, else float32) when ``theta`` is a tensor.
            The value is computed in numpy, so it carries no autograd graph.

        Raises:
            ValueError: on wrong shapes or mismatched batch sizes.
        """
        th, x_arr, single = self._pair(theta, x)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ll = np.asarray(self._log_likelihood(th, x_arr), dtype=np.float64)
        ll = np.where(np.isnan(ll), -np.inf, ll)
        if single:
            ll = ll[0]
        return self._output(ll, theta, keep_float64=True)

    def log_posterior_unnormalized(self, theta: ArrayLike, x: ArrayLike) -> ArrayLike:
        """``log p(x | theta) + log p(theta)``: same shapes and types as :meth:`log_likelihood`."""
        ll = self.log_likelihood(theta, x)
        th, _ = self._theta_array(theta)
        lp = self.prior.log_prob(torch.from_numpy(th)).detach().cpu().double().numpy()  # (n_theta,)
        if ll.ndim == 0:
            lp = lp[0]
        if isinstance(ll, Tensor):
            return ll + torch.as_tensor(lp, dtype=ll.dtype, device=ll.device)
        return ll + lp

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, x_shape={self.x_shape})"

    # -- to implement ----------------------------------------------------------------
    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        """``theta`` float64 ``(n, d)`` -> ``x`` ``(n, *x_shape)``; vectorised, randomness from ``rng``."""
        raise NotImplementedError

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        """``theta`` ``(n, d)``, ``x`` ``(n, *x_shape)`` (float64) -> ``(n,)``."""
        raise NotImplementedError

    # -- conversion and validation ---------------------------------------------------
    def _theta_array(self, theta: Any) -> tuple[np.ndarray, bool]:
        """Validate ``theta`` and return it as float64 ``(n, d)`` plus whether it was a single row."""
        arr = _to_numpy(theta)
        d = self.dim
        if arr.ndim == 1 and arr.shape[0] == d:
            return arr[None, :], True
        if arr.ndim == 2 and arr.shape[1] == d:
            return arr, False
        raise ValueError(f"theta must have shape (n, {d}) or ({d},) for {self.name}, got {tuple(arr.shape)}")

    def _x_array(self, x: Any) -> tuple[np.ndarray, bool]:
        """Validate ``x`` and return it as float64 ``(n, *x_shape)`` plus whether it was unbatched."""
        arr = _to_numpy(x)
        k = len(self.x_shape)
        if arr.shape == tuple(self.x_shape):
            return arr[None], True
        if arr.ndim == k + 1 and arr.shape[1:] == tuple(self.x_shape):
            return arr, False
        raise ValueError(
            f"x must have shape {_shape_str(('n', *self.x_shape))} or {_shape_str(tuple(self.x_shape))} "
            f"for {self.name}, got {tuple(arr.shape)}"
        )

    def _pair(self, theta: Any, x: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        th, th_single = self._theta_array(theta)
        xa, x_single = self._x_array(x)
        n_th, n_x = th.shape[0], xa.shape[0]
        if not th_single and not x_single and n_th != n_x:
            raise ValueError(
                f"theta has {n_th} rows but x has {n_x}; give both n rows or one of them unbatched"
            )
        n = n_x if th_single else n_th
        th = np.broadcast_to(th, (n, th.shape[1]))
        xa = np.broadcast_to(xa, (n, *xa.shape[1:]))
        return th, xa, th_single and x_single

    @staticmethod
    def _output(value: np.ndarray, like: Any, keep_float64: bool = False) -> ArrayLike:
        """Return ``value`` as numpy, or as torch on ``like``'s device if ``like`` is a tensor."""
        if isinstance(like, Tensor):
            dtype = torch.float64 if keep_float64 and like.dtype == torch.float64 else torch.float32
            return torch.as_tensor(np.ascontiguousarray(value), dtype=dtype).to(like.device)
        return np.asarray(value, dtype=np.float64)
