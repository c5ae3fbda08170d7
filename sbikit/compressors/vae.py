"""Variational autoencoder: an encoder q(z | x), a decoder p(x | z) and a standard normal prior p(z)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbikit.compressors.base import Compressor
from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvDecoder, ConvEncoder
from sbikit.priors import make_generator

__all__ = ["VAE", "vae_loss"]

_LOG_2PI = math.log(2 * math.pi)


def vae_loss(model: VAE, x: Tensor) -> Tensor:
    """Negative ELBO per image, ``reconstruction + beta * KL``, averaged over the batch.

    With ``(mu, log_var) = encoder(x)`` and ``z = mu + exp(log_var / 2) * eps`` (the
    reparameterisation, ``eps ~ N(0, I)``), the reconstruction term is the Gaussian negative
    log-likelihood ``sum_pixels [(x - decoder(z))^2 / (2 s^2) + log(2 pi s^2) / 2]`` of the
    standardised image with one learned noise scale ``s``, and
    ``KL = 1/2 sum_j (mu_j^2 + exp(log_var_j) - 1 - log_var_j)``. Both are in nats per image.

    Args:
        model: the VAE.
        x: images ``(b, *x_shape)`` in data units.

    Returns:
        Scalar tensor.
    """
    xs = model._standardize(x)
    mu, log_var = model._posterior(xs)
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
    recon = _gaussian_nll(xs, model.decoder(z), model.log_noise_scale)
    kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).sum(1)
    return (recon + model.beta * kl).mean()


def _gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """``-log N(x; mean, exp(log_scale)^2)`` summed over all but the first dimension -> ``(b,)``."""
    r = (x - mean).flatten(1)
    return (0.5 * r**2 * torch.exp(-2 * log_scale) + log_scale + 0.5 * _LOG_2PI).sum(1)


class VAE(Compressor):
    """A convolutional variational autoencoder; :meth:`encode` returns the posterior mean of ``z``.

    Args:
        num_summaries: latent dimension ``k``.
        beta: weight of the KL term (``beta = 1`` is the ELBO; ``> 1`` a beta-VAE).
        channels: channels per encoder stage (the decoder mirrors them).
        x_shape: one image, ``(H, W)`` or ``(C, H, W)`` (``None``: from the data at :meth:`fit`).
    """

    def __init__(
        self,
        num_summaries: int = 8,
        *,
        beta: float = 1.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        x_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(num_summaries, x_shape=x_shape)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.channels = tuple(int(c) for c in channels)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {"beta": self.beta, "channels": list(self.channels)}

    def _build(self) -> None:
        assert self.x_shape is not None and self.num_summaries is not None
        self.encoder = ConvEncoder(self.x_shape, 2 * self.num_summaries, channels=self.channels)
        self.decoder = ConvDecoder(self.num_summaries, self.x_shape, channels=self.channels)
        self.log_noise_scale = nn.Parameter(torch.zeros(()))

    def _posterior(self, xs: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised images -> ``(mu, log_var)``, each ``(b, k)`` (log-variance clamped to [-12, 8])."""
        h = self.encoder(xs)
        mu, log_var = h.chunk(2, dim=1)
        return mu, log_var.clamp(-12.0, 8.0)

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
    ) -> VAE:
        """Train by maximising the ELBO (:func:`vae_loss`) with :func:`sbikit.train.fit`.

        Args:
            x: images ``(n, *x_shape)``: numpy, torch, or an array on disk such as
                ``sbikit.open_store(path).x`` (rows with NaN or inf are then dropped with a
                warning that counts them).
            theta: ignored (unsupervised); accepted for the common interface.
            seed: initial weights, reparameterisation noise, validation split and batch order.
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
            self; ``self.history.train_loss`` is the negative ELBO per image per epoch.
        """
        data = self._image_data(x, seed=seed, memory_limit_gb=memory_limit_gb)
        self._train(
            vae_loss,
            data,
            seed=seed,
            device=device,
            description="VAE",
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
        return self._posterior(xs)[0]

    @torch.no_grad()
    def decode(self, z: Any) -> Tensor:
        """Decoder mean images for latents ``(n, k)`` -> ``(n, *x_shape)`` (CPU, data units)."""
        if not self.is_fitted:
            raise RuntimeError("VAE is not fitted: call fit(x) before decode(z)")
        zt = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if zt.ndim != 2 or zt.shape[1] != self.num_summaries:
            raise ValueError(f"z must have shape (n, {self.num_summaries}), got {tuple(zt.shape)}")
        self.eval()
        return (self.decoder(zt) * self.x_scale + self.x_shift).cpu()

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, *, noise: bool = False) -> Tensor:
        """New images from the generative model: ``z ~ N(0, I)``, then the decoder.

        Args:
            n: number of images.
            seed: makes the draws repeatable.
            noise: add the learned pixel noise (``False`` returns the decoder means).

        Returns:
            ``(n, *x_shape)``, CPU float32, data units.
        """
        if not self.is_fitted:
            raise RuntimeError("VAE is not fitted: call fit(x) before sample(n)")
        gen = make_generator(seed, self.device)
        z = torch.randn(int(n), self.num_summaries, generator=gen, device=self.device)
        self.eval()
        mean = self.decoder(z)
        if noise:
            mean = mean + torch.exp(self.log_noise_scale) * torch.randn(mean.shape, generator=gen, device=self.device)
        return (mean * self.x_scale + self.x_shift).cpu()

    @torch.no_grad()
    def elbo(self, x: Any, seed: int | None = 0) -> Tensor:
        """ELBO (``beta = 1`` weighting regardless of ``beta``) per image with one reparameterised draw.

        Args:
            x: ``(n, *x_shape)``.
            seed: seed of the reparameterisation noise.

        Returns:
            ``(n,)`` in nats of standardised images (add ``-prod(x_shape) * log(x_scale)`` for data units).
        """
        if not self.is_fitted:
            raise RuntimeError("VAE is not fitted: call fit(x) before elbo(x)")
        xt, _ = self._check_x(x)
        xs = self._standardize(xt.to(self.device))
        self.eval()
        mu, log_var = self._posterior(xs)
        gen = make_generator(seed, self.device)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=gen, device=self.device)
        kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).sum(1)
        return (-_gaussian_nll(xs, self.decoder(z), self.log_noise_scale) - kl).cpu()
