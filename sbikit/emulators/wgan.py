"""Conditional Wasserstein GAN with gradient penalty (WGAN-GP), usable as a simulator or unconditionally.

A generator ``G(z, theta)`` turns ``z ~ N(0, I)`` into data; a critic ``D(x, theta)`` scores
data. With ``x_hat = u * x_real + (1 - u) * x_fake`` (``u ~ U[0, 1]`` per row) the critic
minimises

    L_D = E[D(x_fake)] - E[D(x_real)] + lambda * E[(||grad_x_hat D(x_hat)||_2 - 1)^2]

(``lambda = 10``) and the generator minimises ``L_G = -E[D(G(z, theta))]``; the critic takes
``critic_steps`` (5) steps per generator step, both with Adam (``betas = (0.5, 0.9)``). The
generator kept after training is the moving average of its weights (``ema_decay``).
``-L_D`` without the penalty estimates the Wasserstein-1 distance between the data and the
generator. Real and fake rows of a critic batch share their ``theta`` (the generator is
fed the parameters of the real batch), and the penalty interpolates ``x`` only. Networks
work in standardised units and the penalty is on the gradient with respect to standardised
data.

With ``noise="diagonal"`` (default) the generator is ``G(z, theta) = m(z, theta) + s * eps``:
a network ``m`` plus independent Gaussian noise ``eps`` with a learned scale ``s`` per output
element, so that white pixel noise (hundreds of independent degrees of freedom) need not
come out of a low-dimensional ``z``.

Fitted without ``theta`` (``fit(None, x)``) the WGAN is unconditional; every method then
takes ``theta=None``. The public pieces that other tools (the anomaly score) build on:
``latent_dim``, ``x_shape``, :meth:`ConditionalWGAN.generate`,
:meth:`ConditionalWGAN.critic`, :meth:`ConditionalWGAN.critic_features` and
:meth:`ConditionalWGAN.sample`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbikit.compressors.cnn import DEFAULT_CHANNELS, POOLINGS, ConvDecoder, ConvEncoder
from sbikit.emulators.base import Emulator, mlp
from sbikit.priors import make_generator
from sbikit.train import (
    StreamingData,
    _check_fingerprint,
    _checksum,
    _load_checkpoint,
    _save_checkpoint,
    _Streamed,
    _torch_threads,
)
from sbikit.utils import as_float_tensor, resolve_device

__all__ = ["ConditionalWGAN", "WGANHistory", "gradient_penalty", "critic_loss", "NOISE_MODELS", "GENERATORS"]

logger = logging.getLogger(__name__)

#: Output noise models of :class:`ConditionalWGAN`.
NOISE_MODELS: tuple[str | None, ...] = ("diagonal", None)
#: Generators for images: convolutional (``ConvDecoder``), an MLP to all pixels, or an MLP to
#: the coefficients of the training images' leading principal components.
GENERATORS: tuple[str, ...] = ("conv", "mlp", "pca")
_CHECKPOINT_KIND = "sbikit-wgan"
_CHECKPOINT_FORMAT = 1  # the format number sbikit.train's checkpoint reader accepts
# Rows per forward pass when the validation Wasserstein estimate is computed: at most 2048,
# and at most 2**21 output elements (8 MiB of float32 per batch; 512 rows of 64 x 64 images),
# so that the critic's activations, not the data, bound the memory of that pass.
_EVAL_CHUNK = 2048
_EVAL_ELEMENTS = 2**21
_LEAKY_SLOPE = 0.2
# log noise scale = _NOISE_GAIN * parameter (a larger learning rate for it); initial log scale.
_NOISE_GAIN = 1.0
_NOISE_INIT = 0.0


@dataclass
class WGANHistory:
    """What happened during :meth:`ConditionalWGAN.fit`, one entry per epoch.

    Attributes:
        critic_loss: mean critic loss ``L_D`` (penalty included).
        generator_loss: mean generator loss ``L_G``.
        wasserstein: mean of ``E[D(real)] - E[D(fake)]`` over the critic's training batches.
        gradient_penalty: mean of ``E[(||grad D|| - 1)^2]`` (without the weight).
        val_wasserstein: ``E[D(real)] - E[D(fake)]`` on the held-out rows with fixed latents
            (the same ``z`` every epoch), a progress measure: it falls as the generator improves.
        epochs: number of epochs run.
        generator_steps: generator updates done.
        train_time: wall time in seconds.
    """

    critic_loss: list[float] = field(default_factory=list)
    generator_loss: list[float] = field(default_factory=list)
    wasserstein: list[float] = field(default_factory=list)
    gradient_penalty: list[float] = field(default_factory=list)
    val_wasserstein: list[float] = field(default_factory=list)
    epochs: int = 0
    generator_steps: int = 0
    train_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "critic_loss": self.critic_loss,
            "generator_loss": self.generator_loss,
            "wasserstein": self.wasserstein,
            "gradient_penalty": self.gradient_penalty,
            "val_wasserstein": self.val_wasserstein,
            "epochs": self.epochs,
            "generator_steps": self.generator_steps,
            "train_time": self.train_time,
        }


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, u: Tensor) -> Tensor:
    """``E[(||grad_x_hat critic(x_hat)||_2 - 1)^2]`` at ``x_hat = u * real + (1 - u) * fake``.

    Args:
        critic: maps a batch ``(b, *x_shape)`` to scores ``(b,)``.
        real: ``(b, *x_shape)``.
        fake: ``(b, *x_shape)`` (treated as a constant).
        u: interpolation weights in [0, 1], ``(b, 1, ..., 1)`` (broadcast over ``x_shape``).

    Returns:
        Scalar tensor, differentiable with respect to the critic's parameters.
    """
    x_hat = (u * real + (1.0 - u) * fake).detach().requires_grad_(True)
    score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(grad.flatten(1).square().sum(1) + 1e-12)  # the offset keeps the gradient finite at 0
    return (norm - 1.0).square().mean()


def critic_loss(
    model: ConditionalWGAN, theta_s: Tensor, real_s: Tensor, fake_s: Tensor, u: Tensor, *, gp_weight: float = 10.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The critic's WGAN-GP loss on one batch (standardised units).

    Args:
        model: the WGAN.
        theta_s: standardised parameters ``(b, d)`` shared by the real and fake rows.
        real_s: standardised simulations ``(b, *x_shape)``.
        fake_s: standardised generator outputs ``(b, *x_shape)`` (no gradient needed).
        u: interpolation weights ``(b, 1, ..., 1)``.
        gp_weight: ``lambda``.

    Returns:
        ``(loss, wasserstein, penalty)``: ``E[D(fake)] - E[D(real)] + lambda * penalty``,
        ``E[D(real)] - E[D(fake)]`` and the unweighted penalty (scalars).
    """
    wasserstein = model._critic_score(real_s, theta_s).mean() - model._critic_score(fake_s, theta_s).mean()
    penalty = gradient_penalty(lambda xh: model._critic_score(xh, theta_s), real_s, fake_s, u)
    return -wasserstein + gp_weight * penalty, wasserstein, penalty


def _adam(params: list[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where torch supports it (small steps are overhead-bound)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


class ConditionalWGAN(Emulator):
    """A (conditional) WGAN-GP used as a fast simulator of ``x | theta``, or as a model of ``x`` alone.

    Networks: for vectors ``(D,)`` MLPs (generator on ``[z, theta]``; critic on ``[x, theta]``
    with LeakyReLU); for images ``(H, W)`` / ``(C, H, W)`` a generator fed ``[z, theta]`` (an
    MLP to all pixels, ``generator="mlp"``, default as for the CVAE's decoder; an MLP to the
    coefficients of the ``num_components`` leading principal components of the training
    images, ``generator="pca"``: mean image plus coefficients times a fixed orthonormal basis
    computed by :meth:`fit`, as the CVAE's ``decoder="pca"``; or a
    :class:`~sbikit.compressors.ConvDecoder`, ``generator="conv"``) and a critic made of a
    :class:`~sbikit.compressors.ConvEncoder` whose features are joined with ``theta`` in a
    LeakyReLU layer (the critic features) and a linear score. No batch normalisation (it
    breaks the per-row gradient penalty), so training and evaluation modes compute the same.

    Args:
        latent_dim: dimension of ``z``.
        hidden_features: width of the MLPs, of the image critic's features and of
            :meth:`critic_features`.
        num_layers: hidden layers of the vector MLPs.
        channels: channels per convolutional stage (images).
        critic_pooling: pooling of the image critic's encoder (``"flatten"`` keeps positions,
            right for centred objects; ``"power"`` or ``"mean"`` for stationary fields).
        generator: ``"mlp"``, ``"pca"`` or ``"conv"`` for images (vectors always use an MLP).
        num_components: size of the basis of ``generator="pca"`` (at most ``H W``).
        noise: ``"diagonal"`` adds learned independent Gaussian noise per output element to
            the generator's output; ``None`` makes the generator a plain network of ``z``.
        x_shape, theta_dim, prior, theta_names: see :class:`~sbikit.emulators.Emulator`.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        *,
        hidden_features: int = 128,
        num_layers: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        critic_pooling: str = "flatten",
        noise: str | None = "diagonal",
        generator: str = "mlp",
        num_components: int = 64,
        x_shape: Sequence[int] | None = None,
        theta_dim: int | None = None,
        prior: Any = None,
        theta_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            latent_dim=latent_dim, x_shape=x_shape, theta_dim=theta_dim, prior=prior, theta_names=theta_names
        )
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
        if critic_pooling not in POOLINGS:
            raise ValueError(f"critic_pooling must be one of {POOLINGS}, got {critic_pooling!r}")
        if int(hidden_features) < 1 or int(num_layers) < 1:
            raise ValueError("hidden_features and num_layers must be positive integers")
        self.hidden_features = int(hidden_features)
        self.num_layers = int(num_layers)
        self.channels = tuple(int(c) for c in channels)
        self.critic_pooling = critic_pooling
        self.noise = noise
        if generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
        if int(num_components) < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components}")
        self.generator_kind = generator
        self.num_components = int(num_components)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {
            "hidden_features": self.hidden_features,
            "num_layers": self.num_layers,
            "channels": list(self.channels),
            "critic_pooling": self.critic_pooling,
            "noise": self.noise,
            "generator": self.generator_kind,
            "num_components": self.num_components,
        }

    def _build(self) -> None:
        assert self.x_shape is not None and self.theta_dim is not None
        d, k, h = self.theta_dim, self.latent_dim, self.hidden_features
        if self.is_image:
            if self.generator_kind == "conv":
                self.generator_net: nn.Module = ConvDecoder(k + d, self.x_shape, channels=self.channels)
            elif self.generator_kind == "pca":
                self.generator_net = mlp(k + d, self._register_pca_buffers(self.num_components), h, self.num_layers)
            else:
                self.generator_net = mlp(k + d, math.prod(self.x_shape), h, self.num_layers)
            self.critic_encoder: nn.Module = ConvEncoder(
                self.x_shape, h, channels=self.channels, pooling=self.critic_pooling
            )
            self.critic_body: nn.Module = nn.Sequential(nn.Linear(h + d, h), nn.LeakyReLU(_LEAKY_SLOPE))
        else:
            size = math.prod(self.x_shape)
            self.generator_net = mlp(k + d, size, h, self.num_layers)
            self.critic_encoder = nn.Flatten(1)
            layers: list[nn.Module] = []
            width = size + d
            for _ in range(self.num_layers):
                layers += [nn.Linear(width, h), nn.LeakyReLU(_LEAKY_SLOPE)]
                width = h
            self.critic_body = nn.Sequential(*layers)
        self.critic_out = nn.Linear(h, 1)
        if self.noise == "diagonal":
            self.noise_scale_raw = nn.Parameter(torch.full(self.x_shape, _NOISE_INIT / _NOISE_GAIN))

    @property
    def uses_pca(self) -> bool:
        """Whether the generator's output is built from a principal-component basis (images, ``generator="pca"``)."""
        return self.is_image and self.generator_kind == "pca"

    @property
    def log_noise_scale(self) -> Tensor:
        """Log of the learned output noise scale per element, ``x_shape`` (standardised units).

        It is ``gain * noise_scale_raw`` (the parameter), so that the optimiser moves it
        faster than the network weights.
        """
        return _NOISE_GAIN * self.noise_scale_raw

    def _generator_parameters(self) -> list[nn.Parameter]:
        params = list(self.generator_net.parameters())
        if self.noise == "diagonal":
            params.append(self.noise_scale_raw)
        return params

    def _critic_parameters(self) -> list[nn.Parameter]:
        return [*self.critic_encoder.parameters(), *self.critic_body.parameters(), *self.critic_out.parameters()]

    # -- networks in standardised units ----------------------------------------------------------
    def _generate_s(self, z: Tensor, theta_s: Tensor, noise: Tensor | None = None) -> Tensor:
        """``z`` ``(b, k)``, ``theta_s`` ``(b, d)`` and optional unit noise ``(b, *x_shape)`` -> ``(b, *x_shape)``."""
        assert self.x_shape is not None
        out = self.generator_net(torch.cat([z, theta_s], dim=1))
        out = self._from_pca(out) if self.uses_pca else out.reshape(z.shape[0], *self.x_shape)
        if noise is not None and self.noise == "diagonal":
            out = out + torch.exp(self.log_noise_scale) * noise
        return out

    def _critic_hidden(self, x_s: Tensor, theta_s: Tensor) -> Tensor:
        """Standardised ``x`` ``(b, *x_shape)`` and ``theta_s`` ``(b, d)`` -> last hidden layer ``(b, f)``."""
        if self.is_image:
            return self.critic_body(torch.cat([self.critic_encoder(x_s), theta_s], dim=1))
        return self.critic_body(torch.cat([x_s.flatten(1), theta_s], dim=1))

    def _critic_score(self, x_s: Tensor, theta_s: Tensor) -> Tensor:
        """Standardised ``x`` and ``theta`` -> critic scores ``(b,)``."""
        return self.critic_out(self._critic_hidden(x_s, theta_s)).squeeze(-1)

    def _unit_noise(self, b: int, gen: torch.Generator | None, device: torch.device) -> Tensor | None:
        assert self.x_shape is not None
        if self.noise != "diagonal":
            return None
        return torch.randn(b, *self.x_shape, generator=gen, device=device)

    def _draw(self, theta_s: Tensor, gen: torch.Generator) -> Tensor:
        b = theta_s.shape[0]
        z = torch.randn(b, self.latent_dim, generator=gen, device=theta_s.device)
        return self._generate_s(z, theta_s, self._unit_noise(b, gen, theta_s.device))

    # -- the public, differentiable interface ----------------------------------------------------------
    def _theta_arg(self, theta: Any, n: int) -> Tensor:
        """``theta`` ``(n, d)`` or ``(d,)`` (or ``None`` when unconditional) -> standardised on the device."""
        if theta is not None and self.conditional:
            th = theta if isinstance(theta, Tensor) else as_float_tensor(theta, "theta")
            if th.ndim == 1 and th.shape[0] == self.dim:
                th = th.expand(n, -1)
            if not bool(torch.isfinite(th).all()):
                raise ValueError("theta holds NaN or inf; parameters must be finite")
            theta = th
        return self._theta_for_network(theta, n)

    def _x_arg(self, x: Any, name: str = "x") -> Tensor:
        assert self.x_shape is not None
        xt = x if isinstance(x, Tensor) else as_float_tensor(x, name)
        if tuple(xt.shape[1:]) != self.x_shape or xt.ndim != len(self.x_shape) + 1:
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, self.x_shape))}), got {tuple(xt.shape)}")
        return xt

    def generate(self, z: Tensor, theta: Tensor | None = None, *, noise: Tensor | None = None) -> Tensor:
        """The generator in data units, differentiable with respect to ``z`` (and ``noise``).

        Args:
            z: latents ``(n, latent_dim)``.
            theta: parameters ``(n, d)`` or one row ``(d,)``; ``None`` for an unconditional WGAN.
            noise: unit Gaussian noise ``(n, *x_shape)`` scaled by the learned noise scale and
                added (``noise="diagonal"`` only); ``None`` gives the noise-free part ``m(z, theta)``.
                ``sample`` draws it; a reconstruction by optimising ``z`` usually leaves it out.

        Returns:
            ``(n, *x_shape)`` float32 on ``z``'s device.
        """
        self._require_fitted("generate(z)")
        zt = z if isinstance(z, Tensor) else torch.as_tensor(np.asarray(z, dtype=np.float32))
        if zt.ndim != 2 or zt.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (n, {self.latent_dim}), got {tuple(zt.shape)}")
        ts = self._theta_arg(theta, zt.shape[0])
        nz = None
        if noise is not None:
            nz = self._x_arg(noise, "noise").to(device=self.device, dtype=torch.float32)
            if nz.shape[0] != zt.shape[0]:
                raise ValueError(f"noise has {nz.shape[0]} rows but z has {zt.shape[0]}")
        out = self.unstandardize_x(self._generate_s(zt.to(device=self.device, dtype=torch.float32), ts, nz))
        return out.to(zt.device)

    def critic_features(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """The critic's last hidden-layer activations, differentiable with respect to ``x``.

        Args:
            x: data ``(n, *x_shape)`` in data units.
            theta: ``(n, d)`` or ``(d,)``; ``None`` for an unconditional WGAN.

        Returns:
            ``(n, hidden_features)`` float32 on ``x``'s device.
        """
        self._require_fitted("critic_features(x)")
        xt = self._x_arg(x)
        ts = self._theta_arg(theta, xt.shape[0])
        xs = self.standardize_x(xt.to(device=self.device, dtype=torch.float32))
        return self._critic_hidden(xs, ts).to(xt.device)

    def critic(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """The critic's score ``D(x, theta)`` (higher = more like the training data), differentiable.

        Args:
            x: data ``(n, *x_shape)`` in data units.
            theta: ``(n, d)`` or ``(d,)``; ``None`` for an unconditional WGAN.

        Returns:
            ``(n,)`` float32 on ``x``'s device.
        """
        self._require_fitted("critic(x)")
        xt = self._x_arg(x)
        ts = self._theta_arg(theta, xt.shape[0])
        xs = self.standardize_x(xt.to(device=self.device, dtype=torch.float32))
        return self._critic_score(xs, ts).to(xt.device)

    # -- training -------------------------------------------------------------------------------------
    def fit(
        self,
        theta: Any,
        x: Any,
        *,
        seed: int | None = None,
        batch_size: int = 64,
        max_epochs: int = 100,
        critic_steps: int = 5,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.9),
        gp_weight: float = 10.0,
        ema_decay: float | None = 0.999,
        validation_fraction: float = 0.1,
        device: str | torch.device = "auto",
        num_threads: int | None = None,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> ConditionalWGAN:
        """Train the critic and the generator in alternation (WGAN-GP).

        One epoch is one pass of the critic over the training rows in batches of
        ``batch_size`` (full batches only, reshuffled every epoch); after every
        ``critic_steps`` critic steps the generator takes one step at the parameters of the
        current batch (streamed from disk, an epoch is one pass over shuffled buffers of
        chunks and its last batch may be smaller). There is no early stopping (GAN losses do
        not measure sample quality): training runs ``max_epochs`` epochs and keeps the last
        weights.

        Args:
            theta: parameters ``(n, d)`` (numpy, torch or an array on disk such as
                ``sbikit.open_store(path).theta``), or ``None`` for an unconditional WGAN of ``x``.
            x: simulations ``(n, *x_shape)``: numpy or torch (must be finite), or an array on
                disk (rows holding NaN or inf, from pending or failed chunks, are dropped with
                a warning).
            seed: makes initial weights, split, batch order and all noise repeatable.
            batch_size: rows per critic step.
            max_epochs: epochs to run (raise it and pass ``resume=True`` to train a finished
                run on).
            critic_steps: critic steps per generator step.
            learning_rate: Adam's learning rate (both networks). 1e-3, ten times the WGAN-GP
                paper's rate for large convolutional nets: with the small networks here 1e-4
                and 2e-4 had barely moved the output noise scale after ~800 generator steps on
                sersic images, 1e-3 matched the noise floor (docs/emulators.md).
            betas: Adam's ``(beta1, beta2)``.
            gp_weight: ``lambda`` of the gradient penalty.
            ema_decay: the generator kept after fit is the exponential moving average of its
                weights over generator steps, with decay ``min(ema_decay, (1 + t) / (10 + t))``
                at step ``t`` (``None``: the last weights). Averaging damps the oscillation of
                the adversarial game: on a 2-d Gaussian it cut the error of the conditional
                mean after 1,000 steps from 0.1-0.4 to under 0.1 (docs/emulators.md).
            validation_fraction: share of rows held out for :attr:`WGANHistory.val_wasserstein`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            num_threads: CPU threads torch may use (``None``: 1 for models under a million
                parameters, as :func:`sbikit.train.fit`).
            progress: show a tqdm progress bar (epochs).
            checkpoint: file written atomically after every epoch (weights, optimisers,
                random generator states, history).
            resume: continue from ``checkpoint`` when it exists; with the same data and
                settings the result equals that of an uninterrupted run on the same device.
            memory_limit_gb: arrays on disk larger than this (as float32, ``theta`` and ``x``
                together) are streamed in shuffled buffers of chunks (standardisation from one
                streaming pass, copied to the device per buffer) instead of read into memory;
                ``0`` always streams, ``None`` never does.

        Returns:
            self; ``self.history`` is a :class:`WGANHistory`.

        Raises:
            ValueError: on bad shapes, NaN/inf, bad settings, or a checkpoint of another run.
        """
        if int(critic_steps) < 1 or int(batch_size) < 1 or int(max_epochs) < 1:
            raise ValueError("critic_steps, batch_size and max_epochs must be positive integers")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        if not (learning_rate > 0 and gp_weight >= 0):
            raise ValueError(f"learning_rate must be > 0 and gp_weight >= 0, got {learning_rate} and {gp_weight}")
        data = self._fit_data(theta, x, seed=seed, memory_limit_gb=memory_limit_gb)
        n = data.num_rows if isinstance(data, StreamingData) else len(data[1])
        n_val = max(1, int(round(n * validation_fraction)))
        n_train = n - n_val
        if n_train < 1:
            raise ValueError(f"no training rows are left: n={n} with validation_fraction={validation_fraction}")
        ckpt_path = Path(checkpoint) if checkpoint is not None else None
        saved = _load_checkpoint(ckpt_path, resume)
        if saved is not None and saved.get("kind") != _CHECKPOINT_KIND:
            raise ValueError(f"{ckpt_path} is a training checkpoint of another model, not of a ConditionalWGAN")
        if self.uses_pca and saved is None:  # a resumed run loads the basis with the weights
            self._fit_pca_basis(data, x_standardized=False, owner="ConditionalWGAN: the generator")
        if saved is not None and seed is None:
            seed = int(saved["seed"])
        elif seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        dev = resolve_device(device)
        self.to(dev)
        if num_threads is None and dev.type == "cpu":
            num_threads = 1 if sum(p.numel() for p in self.parameters()) < 1_000_000 else None
        with _torch_threads(num_threads):
            self._train_loop(
                data,
                n_val=n_val,
                seed=seed,
                saved=saved,
                ckpt_path=ckpt_path,
                device=dev,
                batch_size=min(int(batch_size), n_train),
                max_epochs=int(max_epochs),
                critic_steps=int(critic_steps),
                learning_rate=float(learning_rate),
                betas=(float(betas[0]), float(betas[1])),
                gp_weight=float(gp_weight),
                ema_decay=None if ema_decay is None else float(ema_decay),
                progress=progress,
            )
        return self

    def _train_loop(
        self,
        data: tuple[Tensor, Tensor] | StreamingData,
        *,
        n_val: int,
        seed: int,
        saved: dict[str, Any] | None,
        ckpt_path: Path | None,
        device: torch.device,
        batch_size: int,
        max_epochs: int,
        critic_steps: int,
        learning_rate: float,
        betas: tuple[float, float],
        gp_weight: float,
        ema_decay: float | None,
        progress: bool,
    ) -> None:
        order_gen = make_generator(seed)  # split and batch order (CPU)
        noise_gen = make_generator(seed + 1, device)  # latents, output noise, interpolation weights
        source = _WGANData(self, data, n_val, order_gen, device)
        del data
        bs = batch_size
        assert self.x_shape is not None
        u_dims = (1,) * len(self.x_shape)  # interpolation weights (m, 1, ..., 1): one per row

        gen_params, critic_params = self._generator_parameters(), self._critic_parameters()
        opt_g = _adam(gen_params, learning_rate, betas)
        opt_c = _adam(critic_params, learning_rate, betas)
        fingerprint = {
            "kind": _CHECKPOINT_KIND,
            "num_rows": source.num_rows,
            "num_validation": n_val,
            "batch_size": bs,
            "seed": seed,
            "learning_rate": learning_rate,
            "betas": list(betas),
            "gp_weight": gp_weight,
            "ema_decay": ema_decay,
            "critic_steps": critic_steps,
            "data": source.describe(),
            "parameters": [f"{k}:{tuple(v.shape)}" for k, v in self.state_dict().items()],
        }
        history = WGANHistory()
        # Exponential moving average of the generator's weights (the weights kept after fit).
        ema = [p.detach().clone() for p in gen_params] if ema_decay is not None else []
        start_epoch, step, previous_time = 0, 0, 0.0
        if saved is not None:
            _check_fingerprint(saved["fingerprint"], fingerprint, ckpt_path)
            self.load_state_dict(saved["model"])
            opt_g.load_state_dict(saved["generator_optimizer"])
            opt_c.load_state_dict(saved["critic_optimizer"])
            order_gen.set_state(saved["order_generator"])
            noise_gen.set_state(saved["noise_generator"])
            ema = [t.to(device) for t in saved["ema"]]
            start_epoch, step = int(saved["epoch"]), int(saved["critic_step"])
            history = WGANHistory(**saved["history"])
            previous_time = history.train_time
            logger.info("ConditionalWGAN: resuming from %s after epoch %d", ckpt_path, start_epoch)
        began = time.perf_counter()
        bar = tqdm(
            total=max_epochs,
            initial=min(start_epoch, max_epochs),
            desc="ConditionalWGAN",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        self.train()
        for epoch in range(start_epoch, max_epochs):
            sums = torch.zeros(4, device=device)  # critic loss, wasserstein, penalty, generator loss
            num_g = batches = 0
            for tb, real in source.train_batches(bs, order_gen):
                m = real.shape[0]
                batches += 1
                with torch.no_grad():
                    z = torch.randn(m, self.latent_dim, generator=noise_gen, device=device)
                    fake = self._generate_s(z, tb, self._unit_noise(m, noise_gen, device))
                u = torch.rand(m, *u_dims, generator=noise_gen, device=device)
                loss_c, w, gp = critic_loss(self, tb, real, fake, u, gp_weight=gp_weight)
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()
                sums[:3] += torch.stack([loss_c.detach(), w.detach(), gp.detach()])
                step += 1
                if step % critic_steps == 0:
                    for p in critic_params:
                        p.requires_grad_(False)
                    z = torch.randn(m, self.latent_dim, generator=noise_gen, device=device)
                    fake = self._generate_s(z, tb, self._unit_noise(m, noise_gen, device))
                    loss_g = -self._critic_score(fake, tb).mean()
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    for p in critic_params:
                        p.requires_grad_(True)
                    sums[3] += loss_g.detach()
                    if ema_decay is not None:
                        done = history.generator_steps + num_g
                        # the average forgets the initial weights quickly at first: (1 + t) / (10 + t)
                        decay = min(ema_decay, (1.0 + done) / (10.0 + done))
                        with torch.no_grad():
                            for e, p in zip(ema, gen_params, strict=True):
                                e.lerp_(p.detach(), 1.0 - decay)
                    num_g += 1
            if batches == 0:
                bar.close()
                raise ValueError("no training batch in an epoch: every training row was dropped as non-finite")
            means = (sums[:3] / batches).tolist()
            history.critic_loss.append(means[0])
            history.wasserstein.append(means[1])
            history.gradient_penalty.append(means[2])
            history.generator_loss.append(float(sums[3]) / num_g if num_g else math.nan)
            history.val_wasserstein.append(source.val_wasserstein(seed))
            self.train()
            history.epochs = epoch + 1
            history.generator_steps += num_g
            history.train_time = previous_time + time.perf_counter() - began
            bar.update(1)
            bar.set_postfix(W=f"{means[1]:.3f}", val_W=f"{history.val_wasserstein[-1]:.3f}", refresh=False)
            if not all(math.isfinite(v) for v in means):
                bar.close()
                raise RuntimeError(f"ConditionalWGAN: training diverged at epoch {epoch} (losses {means})")
            if ckpt_path is not None:
                _save_checkpoint(
                    ckpt_path,
                    {
                        "format": _CHECKPOINT_FORMAT,
                        "kind": _CHECKPOINT_KIND,
                        "fingerprint": fingerprint,
                        "seed": seed,
                        "epoch": epoch + 1,
                        "critic_step": step,
                        "model": self.state_dict(),
                        "generator_optimizer": opt_g.state_dict(),
                        "critic_optimizer": opt_c.state_dict(),
                        "order_generator": order_gen.get_state(),
                        "noise_generator": noise_gen.get_state(),
                        "history": history.to_dict(),
                        "ema": ema,
                    },
                )
        bar.close()
        history.train_time = previous_time + time.perf_counter() - began
        logger.info(
            "ConditionalWGAN: %d epochs (%d generator steps) in %.1f s, validation W %.4f",
            history.epochs,
            history.generator_steps,
            history.train_time,
            history.val_wasserstein[-1] if history.val_wasserstein else math.nan,
        )
        if ema_decay is not None:
            with torch.no_grad():
                for e, p in zip(ema, gen_params, strict=True):
                    p.copy_(e)
        self.history = history
        self.fitted.fill_(True)
        self.eval()

    def _eval_rows(self) -> int:
        """Rows per validation forward pass (see ``_EVAL_ELEMENTS``)."""
        assert self.x_shape is not None
        return max(1, min(_EVAL_CHUNK, _EVAL_ELEMENTS // math.prod(self.x_shape)))

    @torch.no_grad()
    def _wasserstein_sum(self, ts: Tensor, real: Tensor, gen: torch.Generator) -> float:
        """``sum D(real) - D(fake)`` over standardised rows ``(b, d)``, ``(b, *x_shape)``, fakes drawn from ``gen``."""
        total = 0.0
        step = self._eval_rows()
        for i in range(0, len(real), step):
            tb, rb = ts[i : i + step], real[i : i + step]
            z = torch.randn(len(rb), self.latent_dim, generator=gen, device=rb.device)
            fake = self._generate_s(z, tb, self._unit_noise(len(rb), gen, rb.device))
            total += float((self._critic_score(rb, tb) - self._critic_score(fake, tb)).sum())
        return total

    @classmethod
    def _history_from_dict(cls, data: dict[str, Any]) -> WGANHistory:
        return WGANHistory(**{k: v for k, v in data.items() if k in WGANHistory.__dataclass_fields__})


class _WGANData:
    """Training and validation rows of a WGAN fit: in memory on the device, or streamed from disk.

    In memory (``data = (theta, x)`` in data units) the rows are standardised once and split
    by a permutation from ``gen``; an epoch is ``n_train // batch_size`` full batches in a
    fresh order. Streamed (``data`` a :class:`~sbikit.train.StreamingData` of standardised
    ``[theta_s, x_s]``), the split and the order of chunks and rows come from ``gen`` as in
    :func:`sbikit.train.fit`.
    """

    def __init__(
        self,
        model: ConditionalWGAN,
        data: tuple[Tensor, Tensor] | StreamingData,
        n_val: int,
        gen: torch.Generator,
        device: torch.device,
    ) -> None:
        self.model = model
        self.stream: _Streamed | None = None
        if isinstance(data, StreamingData):
            self.num_rows = data.num_rows
            self.stream = _Streamed(data, n_val, gen, device)
            return
        th, xt = data
        self.num_rows = len(xt)
        self.shapes = [list(th.shape), list(xt.shape), _checksum(th), _checksum(xt)]
        with torch.no_grad():
            ts_all = model.standardize_theta(th.to(device))
            xs_all = model.standardize_x(xt.to(device))
        perm = torch.randperm(len(xt), generator=gen).to(device)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.ts_tr, self.xs_tr = ts_all[train_idx], xs_all[train_idx]
        self.ts_val, self.xs_val = ts_all[val_idx], xs_all[val_idx]
        self.device = device

    def describe(self) -> object:
        """What the checkpoint's fingerprint records of the data."""
        return self.shapes if self.stream is None else self.stream.describe()

    def train_batches(self, bs: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of ``(theta_s (b, d), x_s (b, *x_shape))`` batches on the device."""
        if self.stream is not None:
            yield from self.stream.train_batches(bs, gen)  # type: ignore[misc]
            return
        n_train = len(self.xs_tr)
        order = torch.randperm(n_train, generator=gen).to(self.device)
        for b in range(max(1, n_train // bs)):
            idx = order[b * bs : (b + 1) * bs]
            yield self.ts_tr[idx], self.xs_tr[idx]

    def val_wasserstein(self, seed: int) -> float:
        """``E[D(real)] - E[D(fake)]`` on the held-out rows, with the same latents and noise every epoch."""
        model = self.model
        if self.stream is None:
            gen = make_generator(seed + 2, self.xs_val.device)
            return model._wasserstein_sum(self.ts_val, self.xs_val, gen) / len(self.xs_val)
        gen = make_generator(seed + 2, self.stream.device)

        def mean_gap(m: nn.Module, tb: Tensor, xb: Tensor) -> Tensor:
            return torch.tensor(model._wasserstein_sum(tb, xb, gen) / len(xb))

        return self.stream.val_loss(model, mean_gap, batch_size=model._eval_rows())
