"""Conditional variational autoencoder: ``q(z | x, theta)``, ``p(x | z, theta)`` and ``p(z) = N(0, I)``.

As an emulator it draws ``z ~ N(0, I)`` and then ``x = mu(z, theta) + s * eps`` with the
decoder mean ``mu`` and a learned scale ``s`` per output element (``eps ~ N(0, I)``): a
deterministic part that the latent variable can vary plus independent Gaussian noise,
which is what many instrument simulators produce (the ``sersic`` galaxy plus white pixel
noise is exactly of this form).

For random fields (``decoder="spectral"``) the latent variable is a white field of the image's
size and the decoder a stationary, isotropic linear filter of it whose transfer function is a
network of ``(|k|, theta)`` (:mod:`sbikit.emulators.spectral`), plus a level per channel and a
stationary noise field: a Gaussian, stationary field with a learned power spectrum
``P(|k|, theta)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvDecoder, ConvEncoder
from sbikit.emulators.base import Emulator, mlp
from sbikit.emulators.spectral import filter_fields, radial_frequencies
from sbikit.priors import make_generator
from sbikit.train import FitResult, StreamingData, fit
from sbikit.utils import resolve_device

__all__ = ["ConditionalVAE", "cvae_loss", "cvae_terms", "DECODERS"]

logger = logging.getLogger(__name__)

_LOG_2PI = math.log(2 * math.pi)
#: Decoders for images: convolutional (``ConvDecoder``), an MLP to all pixels, an MLP to the
#: coefficients of the training images' leading principal components, or a stationary filter of
#: a white latent field (random fields).
DECODERS: tuple[str, ...] = ("conv", "mlp", "pca", "spectral")
# log transfer functions and log variances of decoder="spectral" are clamped to this range
_LOG_CLAMP = 12.0
# the noise share rho of decoder="spectral" lies in (sigmoid(-6), sigmoid(6)) = (0.0025, 0.9975)
_RHO_LOGIT_BOUND = 6.0
# log noise scale = _NOISE_GAIN * parameter: a learning rate 10x that of the weights for it.
_NOISE_GAIN = 10.0


def cvae_terms(model: ConditionalVAE, theta_s: Tensor, x_s: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The two pieces of the negative ELBO per row, for given reparameterisation noise.

    With ``(mu, log_var) = encoder(x, theta)`` and ``z = mu + exp(log_var / 2) * eps``:

    * reconstruction ``-log N(x; decoder(z, theta), diag s^2)
      = sum_i [(x_i - m_i)^2 / (2 s_i^2) + log s_i + log(2 pi) / 2]``;
    * ``KL(q(z | x, theta) || N(0, I)) = 1/2 sum_j (mu_j^2 + exp(log_var_j) - 1 - log_var_j)``.

    Args:
        model: the emulator (built).
        theta_s: standardised parameters ``(b, d)``.
        x_s: standardised data ``(b, *x_shape)``.
        eps: standard normal noise ``(b, latent_dim)``.

    With ``decoder="spectral"`` (:meth:`ConditionalVAE._spectral_terms`) ``eps`` has the
    image's shape and both Gaussians are stationary fields.

    Returns:
        ``(reconstruction, kl)``, each ``(b,)``, in nats of standardised data.
    """
    if model.uses_spectral:
        return model._spectral_terms(theta_s, x_s, eps)
    mu, log_var = model._posterior(x_s, theta_s)
    z = mu + torch.exp(0.5 * log_var) * eps
    r = (x_s - model._decode(z, theta_s)).flatten(1)
    log_s = model.log_noise_scale.flatten()
    recon = (0.5 * r**2 * torch.exp(-2 * log_s) + log_s + 0.5 * _LOG_2PI).sum(1)
    kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).sum(1)
    return recon, kl


def cvae_loss(model: ConditionalVAE, theta_s: Tensor, x_s: Tensor) -> Tensor:
    """Negative ELBO ``reconstruction + beta * KL`` (:func:`cvae_terms`) averaged over the batch.

    The reparameterisation noise comes from torch's global generator (seeded by
    :meth:`ConditionalVAE.fit`).

    Args:
        model: the emulator.
        theta_s: standardised parameters ``(b, d)``.
        x_s: standardised data ``(b, *x_shape)``.

    Returns:
        Scalar tensor (nats per row).
    """
    eps = torch.randn(x_s.shape[0], *model.latent_shape, device=x_s.device)
    recon, kl = cvae_terms(model, theta_s, x_s, eps)
    return (recon + model.beta * kl).mean()


class ConditionalVAE(Emulator):
    """A conditional VAE used as a fast simulator of ``x | theta``.

    Networks: for vectors ``(D,)`` MLPs (encoder on ``[x, theta]``, decoder on ``[z, theta]``);
    for images ``(H, W)`` / ``(C, H, W)`` a :class:`~sbikit.compressors.ConvEncoder` (positions
    kept, ``pooling="flatten"``) whose features are joined with ``theta`` in an MLP head, and a
    decoder fed ``[z, theta]``: an MLP to all pixels (``decoder="mlp"``, default), an MLP to
    the coefficients of the ``num_components`` leading principal components of the training
    images (``decoder="pca"``: mean image plus coefficients times a fixed orthonormal basis
    ``(num_components, H W)`` computed by :meth:`fit`), or a
    :class:`~sbikit.compressors.ConvDecoder` (``decoder="conv"``). ``theta`` enters
    standardised. The likelihood is Gaussian with one learned scale per output element.

    Why an MLP decoder by default: its last layer is a learned basis of ``hidden_features``
    images with non-linear coefficients, which suits centred objects; on 32 x 32 ``sersic``
    images (5,000 simulations, 40 epochs) it put 92 of 96 power-spectrum bins within 5% against
    83 for the convolutional decoder, and simulated 10x faster (docs/emulators.md). For images
    that are nearly low-rank (smooth centred objects plus noise) ``decoder="pca"`` is better
    still: on ``sersic`` it cut the mean-image error from 9.1 to 5.9 noise variances per image
    and met the benchmark's targets (benchmarks/RESULTS.md); it is not the default because the
    truncated basis cannot represent images that are not low-rank (random fields).

    ``amplitude_head=True`` (MLP decoders: vectors, ``"mlp"``, ``"pca"``) makes the decoder
    output ``a + exp(s) * b`` instead of one vector ``a``: ``a`` and ``b`` have the output's
    size, ``s`` is one number per row (clamped to [-20, 20]), all from the same MLP. Outputs
    whose overall scale grows exponentially with a parameter (a flux, an amplitude) then need
    a linear ``s`` rather than a regression over orders of magnitude. Screened on ``sersic``
    with ``decoder="pca"`` and the edge-weighted design at two fit seeds (benchmarks/RESULTS.md):
    mean-image error at held-out prior draws 3.7 / 4.0 -> 3.2 / 3.2 noise variances per image,
    the bright compact prior corner's largest power error 0.40 / 0.44 -> 0.13 / 0.15; not
    the default (not yet through the full benchmark).

    ``decoder="spectral"`` (images) is for statistically homogeneous fields (Gaussian random
    fields, noise maps, textures): ``x = m(theta) + L(theta) z + N(theta) eps`` with ``z`` a
    white field of the image's shape (``latent_dim`` is then set to the number of pixels),
    ``L = F^H diag(t(|k|, theta)) F`` and ``N = F^H diag(n(|k|, theta)) F`` stationary
    isotropic filters (``F`` the orthonormal 2-d DFT, per channel) and a level ``m`` per
    channel (constant over the pixels, as a stationary field's mean is). The output's power
    spectrum ``a^2 = t^2 + n^2`` is what is modelled: ``log a`` is a power law in ``|k|``
    whose intercept and slope (in ``log |k|``) come from an MLP of ``theta``, plus a
    correction from an MLP of ``(log |k|, theta)`` evaluated at each distinct ``|k|``; a share
    ``rho(theta)`` of it is noise (``t = a sqrt(1 - rho)``, ``n = a sqrt(rho)``), which keeps
    the encoder's posterior proper without bending the spectrum. The encoder is the same kind
    of map, ``q(z | x, theta) = N(F^H diag(g) F (x - m), F^H diag(v) F)`` (``log g`` and
    ``log v`` also power laws plus corrections), which contains the exact posterior of this
    linear-Gaussian model (``g = t / a^2``, ``v = n^2 / a^2``), so the ELBO can reach
    ``log p(x | theta)``. The power law lets a spectrum whose slope depends on ``theta`` be
    fitted up to the steep, sparsely sampled lowest wave numbers, which a network of
    ``(log |k|, theta)`` alone underestimated, and a modelled total (rather than a filter
    plus white noise) keeps it a power law where the noise would otherwise flatten it
    (benchmarks/RESULTS.md).
    An emulated field is always Gaussian given ``theta`` (no phase structure, no channel
    correlations), so it suits fields whose information is in the power spectrum; centred
    objects need the other decoders. On ``grf`` it is the decoder of the benchmark
    (benchmarks/RESULTS.md); a truncated principal-component basis cannot represent such
    full-rank images, and the latent of the other decoders is too small for their randomness.

    Args:
        latent_dim: dimension of ``z``.
        hidden_features: width of the MLPs (and of the image encoder's features).
        num_layers: hidden layers of the vector MLPs.
        channels: channels per convolutional stage (images).
        beta: weight of the KL term (``1`` is the ELBO).
        decoder: ``"mlp"``, ``"pca"``, ``"conv"`` or ``"spectral"`` for images (vectors always use
            an MLP; ``"spectral"`` needs images).
        num_components: size of the basis of ``decoder="pca"`` (at most ``H W``).
        amplitude_head: decoder output ``a + exp(s) * b`` (see above); not with ``"conv"`` or
            ``"spectral"``.
        x_shape, theta_dim, prior, theta_names: see :class:`~sbikit.emulators.Emulator`.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        *,
        hidden_features: int = 128,
        num_layers: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        beta: float = 1.0,
        decoder: str = "mlp",
        num_components: int = 64,
        amplitude_head: bool = False,
        x_shape: Sequence[int] | None = None,
        theta_dim: int | None = None,
        prior: Any = None,
        theta_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            latent_dim=latent_dim, x_shape=x_shape, theta_dim=theta_dim, prior=prior, theta_names=theta_names
        )
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if int(hidden_features) < 1 or int(num_layers) < 1:
            raise ValueError("hidden_features and num_layers must be positive integers")
        self.hidden_features = int(hidden_features)
        self.num_layers = int(num_layers)
        self.channels = tuple(int(c) for c in channels)
        self.beta = float(beta)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_kind = decoder
        if int(num_components) < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components}")
        self.num_components = int(num_components)
        if amplitude_head and decoder in ("conv", "spectral"):
            raise ValueError(f"amplitude_head needs an MLP decoder (decoder='mlp' or 'pca'), not decoder={decoder!r}")
        self.amplitude_head = bool(amplitude_head)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {
            "hidden_features": self.hidden_features,
            "num_layers": self.num_layers,
            "channels": list(self.channels),
            "beta": self.beta,
            "decoder": self.decoder_kind,
            "num_components": self.num_components,
            "amplitude_head": self.amplitude_head,
        }

    def _build(self) -> None:
        assert self.x_shape is not None and self.theta_dim is not None
        d, k, h = self.theta_dim, self.latent_dim, self.hidden_features
        if self.uses_spectral:
            self._build_spectral()
        elif self.is_image:
            self.encoder = ConvEncoder(self.x_shape, h, channels=self.channels, pooling="flatten")
            self.encoder_head = mlp(h + d, 2 * k, h, 1)
            if self.decoder_kind == "conv":
                self.decoder = ConvDecoder(k + d, self.x_shape, channels=self.channels)
            elif self.decoder_kind == "pca":
                self.decoder = mlp(
                    k + d, self._head_size(self._register_pca_buffers(self.num_components)), h, self.num_layers
                )
            else:
                self.decoder = mlp(k + d, self._head_size(math.prod(self.x_shape)), h, self.num_layers)
        else:
            size = math.prod(self.x_shape)
            self.encoder = mlp(size + d, 2 * k, h, self.num_layers)
            self.encoder_head = nn.Identity()
            self.decoder = mlp(k + d, self._head_size(size), h, self.num_layers)
        if not self.uses_spectral:  # decoder="spectral" has a noise filter, from theta
            self.noise_scale_raw = nn.Parameter(torch.zeros(self.x_shape))

    def _build_spectral(self) -> None:
        """Networks of ``decoder="spectral"``: one MLP of ``theta`` to each channel's mean, noise
        share (a logit) and a power law in ``|k|`` (intercept and slope in ``log |k|``) for each
        of ``log a``, ``log g`` and ``log v``, one MLP of ``(|k|, theta)`` to their corrections."""
        assert self.x_shape is not None and self.theta_dim is not None
        if not self.is_image:
            raise ValueError(
                f"decoder='spectral' needs images (H, W) or (C, H, W), got x_shape={self.x_shape}: "
                "use decoder='mlp' for vectors"
            )
        size = math.prod(self.x_shape)
        if self.latent_dim != size:
            logger.info(
                "ConditionalVAE: decoder='spectral' uses a white latent field, latent_dim %d -> %d",
                self.latent_dim,
                size,
            )
            self.latent_dim = size
        d, h = self.theta_dim, self.hidden_features
        channels = 1 if len(self.x_shape) == 2 else self.x_shape[0]
        features, index = radial_frequencies(self.x_shape[-2], self.x_shape[-1])
        self.register_buffer("spectral_features", features, persistent=False)
        self.register_buffer("spectral_index", index, persistent=False)
        # per channel: level, noise-share logit, and an intercept and a slope in log |k| for each of
        # the three per-k outputs; a constant input as well, for d = 0
        self.decoder = mlp(d + 1, 8 * channels, h, self.num_layers)
        self.spectral_net = mlp(features.shape[1] + d, 3 * channels, h, self.num_layers)

    @property
    def uses_spectral(self) -> bool:
        """Whether the decoder is a stationary filter of a white latent field (``decoder="spectral"``)."""
        return self.decoder_kind == "spectral"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent draw: ``(latent_dim,)``, or the image's shape with ``decoder="spectral"``."""
        if self.uses_spectral:
            assert self.x_shape is not None
            return self.x_shape
        return (self.latent_dim,)

    def _spectral_parts(self, theta_s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Standardised ``theta`` ``(b, d)`` -> ``(m, log n, log t, g, log v)``, each ``(b, *x_shape)``.

        ``m`` (the mean) is constant over each channel's pixels, as a stationary field's is;
        ``t`` and ``n`` are the transfer functions of the decoder's signal and noise filters,
        ``g > 0`` and ``v`` the encoder's mean filter and variance per Fourier mode, all even in ``k``
        (functions of ``|k|``). The output's power spectrum ``a^2 = t^2 + n^2`` is the modelled
        quantity: ``log a`` is a power law in ``|k|`` plus a correction, and a share
        ``rho(theta)`` of it, the same at every ``k``, is noise: ``t = a sqrt(1 - rho)``,
        ``n = a sqrt(rho)``. Log scales are clamped to +-12.
        """
        assert self.x_shape is not None
        b = theta_s.shape[0]
        h, w = self.x_shape[-2], self.x_shape[-1]
        ones = torch.ones(b, 1, device=theta_s.device, dtype=theta_s.dtype)
        per_theta = self.decoder(torch.cat([theta_s, ones], dim=1))  # (b, 8 C)
        c = per_theta.shape[1] // 8
        mean = per_theta[:, :c].reshape(b, c, 1, 1).expand(b, c, h, w).reshape(b, *self.x_shape)
        rho_logit = _RHO_LOGIT_BOUND * torch.tanh(per_theta[:, c : 2 * c] / _RHO_LOGIT_BOUND)  # smooth bound
        rho_logit = rho_logit.reshape(b, c, 1, 1).expand(b, c, h, w).reshape(b, *self.x_shape)
        intercept, slope = per_theta[:, 2 * c : 5 * c], per_theta[:, 5 * c :]  # (b, 3 C) each
        feats = self.spectral_features
        inputs = torch.cat(
            [feats.expand(b, *feats.shape), theta_s[:, None, :].expand(b, feats.shape[0], theta_s.shape[1])], dim=2
        )
        # a power law in |k| per theta (linear in the standardised log |k|), plus a correction: (b, U, 3 C)
        per_k = intercept[:, None, :] + slope[:, None, :] * feats[None, :, :1] + self.spectral_net(inputs)
        grid = per_k[:, self.spectral_index]  # (b, H W, 3 C)
        grid = grid.reshape(b, h, w, 3, -1).permute(3, 0, 4, 1, 2).reshape(3, b, *self.x_shape)
        log_a = grid[0].clamp(-_LOG_CLAMP, _LOG_CLAMP)
        log_t = log_a + 0.5 * nn.functional.logsigmoid(-rho_logit)  # log(a sqrt(1 - rho))
        log_n = log_a + 0.5 * nn.functional.logsigmoid(rho_logit)  # log(a sqrt(rho))
        # the exact posterior's gain t / a^2 is positive and a power law where a is: modelled as log g
        g = torch.exp(grid[1].clamp(-_LOG_CLAMP, _LOG_CLAMP))
        return mean, log_n, log_t, g, grid[2].clamp(-_LOG_CLAMP, _LOG_CLAMP)

    def _spectral_terms(self, theta_s: Tensor, x_s: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`cvae_terms` for ``decoder="spectral"``; ``eps`` ``(b, *x_shape)``.

        ``z = F^H diag(g) F (x - m) + F^H diag(sqrt v) F eps``; the KL of ``N(mu, C)`` with
        ``C = F^H diag(v) F`` from ``N(0, I)`` is ``1/2 [sum(v) + |mu|^2 - n - sum(log v)]``
        over all ``n`` pixels (the orthonormal DFT keeps traces, norms and determinants). The
        noise ``N = F^H diag(n) F`` of the residual ``r = x - m - L z`` gives
        ``-log N(r; 0, N N^T) = 1/2 |N^-1 r|^2 + sum(log n) + n/2 log(2 pi)``.
        """
        mean, log_n, log_t, g, log_v = self._spectral_parts(theta_s)
        mu = filter_fields(x_s - mean, g)
        z = mu + filter_fields(eps, torch.exp(0.5 * log_v))
        r = x_s - mean - filter_fields(z, torch.exp(log_t))
        white = filter_fields(r, torch.exp(-log_n)).flatten(1)
        recon = (0.5 * white**2 + log_n.flatten(1) + 0.5 * _LOG_2PI).sum(1)
        kl = 0.5 * (log_v.exp() + mu**2 - 1.0 - log_v).flatten(1).sum(1)
        return recon, kl

    @property
    def log_noise_scale(self) -> Tensor:
        """Log of the learned noise scale per output element, ``x_shape`` (standardised units).

        It is ``10 * noise_scale_raw`` (the parameter): the factor makes the optimiser move it
        10x faster than the network weights (Adam's steps are about ``learning_rate`` per
        parameter), so that it reaches the noise level in hundreds of steps, not thousands.

        Raises:
            RuntimeError: with ``decoder="spectral"``, whose noise scale depends on ``theta``.
        """
        if self.uses_spectral:
            raise RuntimeError(
                "decoder='spectral' has no fixed noise scale per element: its noise filter is a "
                "function of theta (the second output of _spectral_parts)"
            )
        return _NOISE_GAIN * self.noise_scale_raw

    # -- networks ---------------------------------------------------------------------------------
    def _posterior(self, x_s: Tensor, theta_s: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised ``x`` ``(b, *x_shape)`` and ``theta`` ``(b, d)`` -> ``(mu, log_var)``, each ``(b, k)``.

        The log-variance is clamped to [-12, 8].
        """
        if self.is_image:
            h = self.encoder_head(torch.cat([self.encoder(x_s), theta_s], dim=1))
        else:
            h = self.encoder(torch.cat([x_s.flatten(1), theta_s], dim=1))
        mu, log_var = h.chunk(2, dim=1)
        return mu, log_var.clamp(-12.0, 8.0)

    @property
    def uses_pca(self) -> bool:
        """Whether the decoder mean is built from a principal-component basis (images, ``decoder="pca"``)."""
        return self.is_image and self.decoder_kind == "pca"

    def _head_size(self, size: int) -> int:
        """Outputs of the decoder MLP for ``size`` outputs: ``size``, or ``2 size + 1`` with the amplitude head."""
        return 2 * size + 1 if self.amplitude_head else size

    def _decode(self, z: Tensor, theta_s: Tensor) -> Tensor:
        """Latents ``(b, k)`` and standardised ``theta`` ``(b, d)`` -> standardised means ``(b, *x_shape)``."""
        assert self.x_shape is not None
        if self.uses_spectral:
            mean, _, log_t, _, _ = self._spectral_parts(theta_s)
            return mean + filter_fields(z.reshape(mean.shape), torch.exp(log_t))
        out = self.decoder(torch.cat([z, theta_s], dim=1))
        if self.amplitude_head:
            q = (out.shape[1] - 1) // 2
            out = out[:, :q] + torch.exp(out[:, 2 * q :].clamp(-20.0, 20.0)) * out[:, q : 2 * q]
        if self.uses_pca:
            return self._from_pca(out)
        return out.reshape(z.shape[0], *self.x_shape)

    def _draw(self, theta_s: Tensor, gen: torch.Generator) -> Tensor:
        assert self.x_shape is not None
        b = theta_s.shape[0]
        z = torch.randn(b, *self.latent_shape, generator=gen, device=theta_s.device)
        noise = torch.randn(b, *self.x_shape, generator=gen, device=theta_s.device)
        if self.uses_spectral:
            mean, log_n, log_t, _, _ = self._spectral_parts(theta_s)
            return mean + filter_fields(z, torch.exp(log_t)) + filter_fields(noise, torch.exp(log_n))
        return self._decode(z, theta_s) + torch.exp(self.log_noise_scale) * noise

    # -- training -----------------------------------------------------------------------------------
    def fit(
        self,
        theta: Any,
        x: Any,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 20,
        schedule: str = "plateau",
        weight_decay: float = 0.0,
        ema_decay: float | None = None,
        device: str | torch.device = "auto",
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> ConditionalVAE:
        """Maximise the ELBO (:func:`cvae_loss`) with :func:`sbikit.train.fit`.

        Args:
            theta: parameters ``(n, d)`` (numpy, torch or an array on disk such as
                ``sbikit.open_store(path).theta``), or ``None`` for an unconditional VAE.
            x: simulations ``(n, *x_shape)``: numpy or torch (must be finite), or an array on
                disk (rows holding NaN or inf, from pending or failed chunks, are dropped with
                a warning).
            seed: initial weights, reparameterisation noise, validation split and batch order.
            batch_size, learning_rate, max_epochs, validation_fraction, patience, progress:
                passed to :func:`sbikit.train.fit` (early stopping on the validation ELBO, the
                best epoch's weights restored). ``learning_rate=None``: 3e-3 with
                ``decoder="spectral"`` (on ``grf`` 1e-3 left an amplitude error at the prior's
                low edge in three of four fits, docs/emulators.md), 1e-3 otherwise.
            schedule, weight_decay, ema_decay: learning-rate schedule (``"plateau"`` or
                ``"cosine"``), AdamW weight decay and the decay of a moving average of the
                weights (validated and returned instead of the last iterate; ``None``: off),
                passed to :func:`sbikit.train.fit`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            checkpoint: file written atomically after every epoch; with ``resume=True`` a
                killed fit continues from it and ends as the uninterrupted run would.
            resume: continue from ``checkpoint`` when it exists.
            memory_limit_gb: arrays on disk larger than this (as float32, ``theta`` and ``x``
                together) are streamed in shuffled buffers of chunks, with the
                standardisation from one streaming pass, instead of read into memory; ``0``
                always streams, ``None`` never does.

        Returns:
            self; ``self.history`` is the :class:`~sbikit.train.FitResult` (negative ELBO per
            row, in nats of standardised data).

        Raises:
            ValueError: on mismatched rows, wrong shapes or NaN/inf in ``theta`` or ``x``.
        """
        prepared = self._fit_data(theta, x, seed=seed, memory_limit_gb=memory_limit_gb)
        dev = resolve_device(device)
        data: tuple[Tensor, Tensor] | StreamingData
        if isinstance(prepared, StreamingData):
            data = prepared
        else:
            th, xt = prepared
            with torch.no_grad():
                data = (self.standardize_theta(th.to(self.device)).cpu(), self.standardize_x(xt.to(self.device)).cpu())
        if self.uses_pca:
            self._fit_pca_basis(data, x_standardized=True, owner="ConditionalVAE: the decoder")
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            result = fit(
                self,
                cvae_loss,
                data,
                seed=seed,
                batch_size=batch_size,
                learning_rate=self._default_learning_rate() if learning_rate is None else learning_rate,
                max_epochs=max_epochs,
                validation_fraction=validation_fraction,
                patience=patience,
                schedule=schedule,
                weight_decay=weight_decay,
                ema_decay=ema_decay,
                device=dev,
                progress=progress,
                description="ConditionalVAE",
                checkpoint=checkpoint,
                resume=resume,
            )
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError("ConditionalVAE: training diverged (the validation loss is not finite)")
        self.history = result
        self.fitted.fill_(True)
        self.eval()
        return self

    def _default_learning_rate(self) -> float:
        """The peak learning rate of :meth:`fit` when none is given."""
        return 3e-3 if self.uses_spectral else 1e-3

    @classmethod
    def _history_from_dict(cls, data: dict[str, Any]) -> FitResult:
        return FitResult(**{k: v for k, v in data.items() if k in FitResult.__dataclass_fields__})

    # -- extras ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: Any, theta: Any = None) -> Tensor:
        """Decoder means (no pixel noise) for latents ``z`` ``(n, k)`` at ``theta`` ``(n, d)``.

        Returns:
            ``(n, *x_shape)``, float32 CPU, data units.
        """
        self._require_fitted("decode(z, theta)")
        zt = torch.as_tensor(z, dtype=torch.float32)
        if zt.ndim != 2 or zt.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (n, {self.latent_dim}), got {tuple(zt.shape)}")
        th = None
        if self.conditional:
            th, _ = self._check_theta(theta)
            if len(th) != len(zt):
                raise ValueError(f"z has {len(zt)} rows but theta has {len(th)}")
        ts = self._theta_for_network(th, len(zt))
        self.eval()
        return self.unstandardize_x(self._decode(zt.to(self.device), ts)).cpu()

    @torch.no_grad()
    def elbo(self, theta: Any, x: Any, seed: int | None = 0) -> Tensor:
        """ELBO (``beta = 1``) per row with one reparameterised draw, a lower bound on ``log p(x | theta)``.

        Args:
            theta: ``(n, d)`` (``None`` for an unconditional VAE).
            x: ``(n, *x_shape)``.
            seed: seed of the reparameterisation noise.

        Returns:
            ``(n,)`` in nats of ``x`` in data units (comparable with a simulator's log-likelihood).
        """
        self._require_fitted("elbo(theta, x)")
        xt = self._check_x(x)
        th = None
        if self.conditional:
            th, _ = self._check_theta(theta)
            if len(th) != len(xt):
                raise ValueError(f"theta and x need the same number of rows, got {len(th)} and {len(xt)}")
        ts = self._theta_for_network(th, len(xt))
        xs = self.standardize_x(xt.to(self.device))
        gen = make_generator(seed, self.device)
        eps = torch.randn(len(xt), *self.latent_shape, generator=gen, device=self.device)
        self.eval()
        recon, kl = cvae_terms(self, ts, xs, eps)
        log_jacobian = torch.log(self.x_scale).sum()
        return (-recon - kl - log_jacobian).cpu()

    def _require_spectral(self, what: str) -> None:
        if not self.uses_spectral:
            raise RuntimeError(
                f"{what} is exact only for decoder='spectral' (a Gaussian field given theta); "
                f"this emulator has decoder={self.decoder_kind!r}: use elbo(theta, x), a lower bound"
            )

    @torch.no_grad()
    def power_spectrum(self, theta: Any = None, n: int | None = None) -> Tensor:
        """The emulator's exact power per orthonormal Fourier mode (``decoder="spectral"`` only).

        Each output is a stationary Gaussian field whose orthonormal 2-d DFT coefficient at
        ``k != 0`` has variance ``x_scale^2 (t^2 + n^2)`` (signal and noise filters, data units;
        ``norm="ortho"``, so a field ``F^H diag(sqrt P) F w`` with white ``w`` has power ``P``).
        The ``k = 0`` entry is the variance about the level, the level itself is not included.

        Args:
            theta: ``(n, d)`` (``None`` for an unconditional VAE, with ``n`` rows).
            n: number of rows when ``theta`` is ``None``.

        Returns:
            ``(n, *x_shape)`` float32 CPU, in the FFT grid's order (numpy's ``fftfreq`` on each axis).

        Raises:
            RuntimeError: for any other decoder, or before ``fit``.
        """
        self._require_fitted("power_spectrum(theta)")
        self._require_spectral("power_spectrum(theta)")
        th = self._check_theta(theta)[0] if self.conditional else None
        rows = len(th) if th is not None else (1 if n is None else int(n))
        ts = self._theta_for_network(th, rows)
        self.eval()
        _, log_n, log_t, _, _ = self._spectral_parts(ts)
        power = torch.exp(2 * log_t) + torch.exp(2 * log_n)
        return (power * self.x_scale**2).cpu()

    @torch.no_grad()
    def log_likelihood(self, theta: Any, x: Any) -> Tensor:
        """Exact ``log p(x | theta)`` of the emulator per row (``decoder="spectral"`` only).

        With ``decoder="spectral"`` the output given ``theta`` is ``N(m, F^H diag(a^2) F)``
        (``a^2 = t^2 + n^2``), so the likelihood is closed-form:
        ``-1/2 sum |F(x - m)|^2 / a^2 - sum log a - n/2 log(2 pi)``, plus the change of units.
        :meth:`elbo` is a lower bound on it; the gap measures the encoder.

        Args:
            theta: ``(n, d)`` (``None`` for an unconditional VAE).
            x: ``(n, *x_shape)``.

        Returns:
            ``(n,)`` in nats of ``x`` in data units (comparable with :meth:`elbo`).

        Raises:
            RuntimeError: for any other decoder, or before ``fit``.
            ValueError: on a shape mismatch or non-finite values (as :meth:`elbo`).
        """
        self._require_fitted("log_likelihood(theta, x)")
        self._require_spectral("log_likelihood(theta, x)")
        xt = self._check_x(x)
        th = None
        if self.conditional:
            th, _ = self._check_theta(theta)
            if len(th) != len(xt):
                raise ValueError(f"theta and x need the same number of rows, got {len(th)} and {len(xt)}")
        ts = self._theta_for_network(th, len(xt))
        xs = self.standardize_x(xt.to(self.device))
        self.eval()
        mean, log_n, log_t, _, _ = self._spectral_parts(ts)
        log_a = 0.5 * torch.logaddexp(2 * log_t, 2 * log_n)
        white = filter_fields(xs - mean, torch.exp(-log_a)).flatten(1)
        log_p = -(0.5 * white**2 + log_a.flatten(1) + 0.5 * _LOG_2PI).sum(1)
        return (log_p - torch.log(self.x_scale).sum()).cpu()
