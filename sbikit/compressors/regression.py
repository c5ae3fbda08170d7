"""Regression compressor: a CNN trained to predict theta; its predictions are the summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sbikit.compressors.base import Compressor
from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvEncoder
from sbikit.train import StreamingData
from sbikit.utils import as_float_tensor

__all__ = ["Regression", "regression_loss"]


def regression_loss(model: Regression, x: Tensor, theta: Tensor) -> Tensor:
    """Mean squared error between the network's output and standardised ``theta`` ``(b, d)``."""
    target = (theta - model.theta_shift) / model.theta_scale
    return ((model.network(model._standardize(x)) - target) ** 2).mean()


class Regression(Compressor):
    """A CNN regressing ``theta`` on ``x`` by mean squared error.

    For a flat prior, MSE regression estimates the posterior mean ``E[theta | x]``, a
    sufficient-in-practice summary of dimension ``d``. :meth:`encode` returns the
    predictions in parameter units, ``(n, d)``.

    Args:
        channels: channels per encoder stage.
        pooling: ``"power"`` (default: spatial mean plus log band powers of every convolution,
            translation invariant), ``"mean"`` or ``"flatten"`` (keeps positions); see
            :class:`~sbikit.compressors.ConvEncoder`.
        num_summaries: ``d``, the parameter dimension (``None``: from ``theta`` at :meth:`fit`).
        x_shape: one image, ``(H, W)`` or ``(C, H, W)`` (``None``: from the data at :meth:`fit`).
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        pooling: str = "power",
        num_summaries: int | None = None,
        x_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(num_summaries, x_shape=x_shape)
        self.channels = tuple(int(c) for c in channels)
        self.pooling = pooling
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "pooling": self.pooling}

    def _build(self) -> None:
        assert self.x_shape is not None and self.num_summaries is not None
        dev = self.x_shift.device
        self.network = ConvEncoder(self.x_shape, self.num_summaries, channels=self.channels, pooling=self.pooling)
        self.register_buffer("theta_shift", torch.zeros(self.num_summaries, device=dev))
        self.register_buffer("theta_scale", torch.ones(self.num_summaries, device=dev))

    def fit(
        self,
        x: Any,
        theta: Any = None,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float = 1e-3,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str | torch.device = "auto",
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> Regression:
        """Train the CNN to predict ``theta`` with :func:`sbikit.train.fit`.

        Args:
            x: images ``(n, *x_shape)``: numpy, torch, or an array on disk such as
                ``sbikit.open_store(path).x``.
            theta: parameters ``(n, d)`` (required); numpy, torch or an array on disk
                (``store.theta``). With arrays on disk, rows whose ``x`` or ``theta`` holds
                NaN or inf are dropped with a warning that counts them.
            seed: initial weights, validation split and batch order.
            batch_size, learning_rate, max_epochs, validation_fraction, patience, progress:
                passed to :func:`sbikit.train.fit`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            checkpoint: file written atomically after every epoch; with ``resume=True`` a
                killed fit continues from it (see :func:`sbikit.train.fit`).
            resume: continue from ``checkpoint`` when it exists.
            memory_limit_gb: arrays on disk larger than this (as float32, ``x`` and
                ``theta`` together) are streamed in shuffled buffers of chunks (the
                standardisation of ``x`` and ``theta`` from one streaming pass) instead of
                read into memory; ``0`` always streams, ``None`` never does.

        Returns:
            self.
        """
        if theta is None:
            raise ValueError("Regression needs theta: fit(x, theta) with theta of shape (n, d)")
        arrays, streamed = self._fit_inputs({"x": x, "theta": theta}, memory_limit_gb=memory_limit_gb)
        data: tuple[Tensor, Tensor] | StreamingData
        if streamed:
            data = self._start_streamed_regression(arrays["x"], arrays["theta"], seed=seed)
        else:
            data = self._start_regression(arrays["x"], arrays["theta"], seed=seed)
        self._train(
            regression_loss,
            data,
            seed=seed,
            device=device,
            description="Regression",
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
        )
        return self

    def _theta_columns(self, shape: tuple[int, ...]) -> int:
        """``d`` from the shape of ``theta`` ``(n, d)`` or ``(n,)``, checked against ``num_summaries``."""
        if len(shape) not in (1, 2):
            raise ValueError(f"theta must have shape (n, d), got {shape}")
        d = 1 if len(shape) == 1 else int(shape[1])
        if self.num_summaries is not None and d != self.num_summaries:
            raise ValueError(f"theta has {d} columns but num_summaries={self.num_summaries}")
        return d

    def _start_regression(self, x: Any, theta: Any, *, seed: int | None) -> tuple[Tensor, Tensor]:
        """In-memory data: checks, networks, standardisation of ``x`` and ``theta``; -> ``(x, theta)``."""
        th = as_float_tensor(theta, "theta")
        if th.ndim == 1:
            th = th[:, None]
        self._theta_columns(tuple(th.shape))
        if not bool(torch.isfinite(th).all()):
            raise ValueError("theta holds NaN or inf; parameters must be finite")
        xt = self._start_fit(x, seed=seed, num_summaries=int(th.shape[1]))
        if len(th) != len(xt):
            raise ValueError(f"x and theta need the same number of rows, got {len(xt)} and {len(th)}")
        self._set_standardization(xt)
        std = th.std(0)
        self.theta_shift.copy_(th.mean(0))
        self.theta_scale.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))
        return xt, th

    def _start_streamed_regression(self, x: Any, theta: Any, *, seed: int | None) -> StreamingData:
        """Streamed data: checks, networks, and both standardisations from one pass; -> the stream."""
        d = self._theta_columns(tuple(int(s) for s in theta.shape))
        data = self._start_streamed_fit(x, {"theta": (theta, (d,))}, seed=seed, num_summaries=d)
        (x_mean, x_std, _), (t_mean, t_std, _) = self._streamed_moments(
            data, ["x", "theta"], pooled=[True, False], stacklevel=4
        )
        self._set_standardization_values(float(x_mean), float(x_std))
        self.theta_shift.copy_(t_mean.float())
        self.theta_scale.copy_(torch.where(t_std > 1e-12, t_std, torch.ones_like(t_std)).float())
        return data

    def _encode(self, xs: Tensor) -> Tensor:
        return self.network(xs) * self.theta_scale + self.theta_shift
