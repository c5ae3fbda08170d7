"""Convolutional autoencoder: summaries are the bottleneck of an image reconstruction network."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sbikit.compressors.base import Compressor
from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvDecoder, ConvEncoder

__all__ = ["AutoEncoder", "autoencoder_loss"]


def autoencoder_loss(model: AutoEncoder, x: Tensor) -> Tensor:
    """Mean squared reconstruction error per pixel of standardised images ``x`` ``(b, *x_shape)``."""
    xs = model._standardize(x)
    return ((model.decoder(model.encoder(xs)) - xs) ** 2).mean()


class AutoEncoder(Compressor):
    """A convolutional autoencoder; :meth:`encode` returns the bottleneck ``(n, k)``.

    Args:
        num_summaries: bottleneck width ``k``.
        channels: channels per encoder stage (the decoder mirrors them).
        x_shape: one image, ``(H, W)`` or ``(C, H, W)`` (``None``: from the data at :meth:`fit`).
    """

    def __init__(
        self,
        num_summaries: int = 8,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        x_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(num_summaries, x_shape=x_shape)
        self.channels = tuple(int(c) for c in channels)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {"channels": list(self.channels)}

    def _build(self) -> None:
        assert self.x_shape is not None and self.num_summaries is not None
        self.encoder = ConvEncoder(self.x_shape, self.num_summaries, channels=self.channels)
        self.decoder = ConvDecoder(self.num_summaries, self.x_shape, channels=self.channels)

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
    ) -> AutoEncoder:
        """Train by minimising the reconstruction error with :func:`sbikit.train.fit`.

        Args:
            x: images ``(n, *x_shape)``: numpy, torch, or an array on disk such as
                ``sbikit.open_store(path).x`` (rows with NaN or inf are then dropped with a
                warning that counts them).
            theta: ignored (unsupervised); accepted for the common interface.
            seed: initial weights, validation split and batch order.
            batch_size, learning_rate, max_epochs, validation_fraction, patience, progress:
                passed to :func:`sbikit.train.fit`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            checkpoint: file written atomically after every epoch; with ``resume=True`` a
                killed fit continues from it (see :func:`sbikit.train.fit`).
            resume: continue from ``checkpoint`` when it exists.
            memory_limit_gb: arrays on disk larger than this (as float32) are streamed in
                shuffled buffers of chunks (the standardisation from one streaming pass)
                instead of read into memory; ``0`` always streams, ``None`` never does.

        Returns:
            self, on ``device``; ``self.history`` holds the losses.
        """
        data = self._image_data(x, seed=seed, memory_limit_gb=memory_limit_gb)
        self._train(
            autoencoder_loss,
            data,
            seed=seed,
            device=device,
            description="AutoEncoder",
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

    def _encode(self, xs: Tensor) -> Tensor:
        return self.encoder(xs)

    @torch.no_grad()
    def decode(self, z: Any) -> Tensor:
        """Reconstruct images from summaries ``(n, k)`` -> ``(n, *x_shape)`` (CPU, data units)."""
        if not self.is_fitted:
            raise RuntimeError("AutoEncoder is not fitted: call fit(x) before decode(z)")
        zt = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if zt.ndim != 2 or zt.shape[1] != self.num_summaries:
            raise ValueError(f"z must have shape (n, {self.num_summaries}), got {tuple(zt.shape)}")
        self.eval()
        return (self.decoder(zt) * self.x_scale + self.x_shift).cpu()
