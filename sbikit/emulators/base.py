"""The interface every emulator shares: a generative model of ``x | theta`` used as a simulator.

An emulator is trained on simulated pairs ``(theta, x)`` and then draws new ``x`` for any
``theta`` far faster than the simulator it replaces. It follows the simulator protocol of
``simulators/base.py``: :meth:`Emulator.simulate` takes ``theta`` ``(n, d)`` or one row
``(d,)``, numpy in gives float64 numpy out, torch in gives float32 torch out, and a seed
makes the draws repeatable. With a ``prior`` it can be handed to :func:`sbikit.simulate`,
to NPE's training data and to the diagnostics in place of the simulator.

Data are standardised with statistics of the training data stored in buffers: ``theta``
per parameter, vectors per feature, images by one global mean and standard deviation
(which keeps their spatial structure, as the compressors do). An emulator fitted without
``theta`` (``fit(None, x)``) is unconditional: ``theta_dim == 0`` and ``simulate(n)`` takes
the number of draws.

Files are a ``torch.save`` dict of the state dict and a JSON config (architecture, prior,
names), read back with ``weights_only=True``; the class is named by its import path and
must be an :class:`Emulator` subclass, so loading a file never runs code from it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sbikit.disk_inputs import finite_row_stream, read_or_stream, stream_moments
from sbikit.priors import make_generator, prior_from_config
from sbikit.train import StreamingData, mean_and_scatter
from sbikit.utils import as_float_tensor, load_payload, resolve_device, save_payload

__all__ = ["Emulator", "load_emulator", "FORMAT", "mlp", "fill_pca_basis"]

logger = logging.getLogger(__name__)

FORMAT = "sbikit-emulator"
FORMAT_VERSION = 1

# Rows generated at once by simulate/sample (bounds memory for large requests).
_SIMULATE_CHUNK = 4096
# Floor of a standard deviation used for standardisation (constant columns keep scale 1).
_MIN_SCALE = 1e-12


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def mlp(in_features: int, out_features: int, hidden_features: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` hidden layers of ``hidden_features`` SiLU units, then a linear output layer."""
    layers: list[nn.Module] = []
    width = int(in_features)
    for _ in range(int(num_layers)):
        layers += [nn.Linear(width, int(hidden_features)), nn.SiLU()]
        width = int(hidden_features)
    layers.append(nn.Linear(width, int(out_features)))
    return nn.Sequential(*layers)


@torch.no_grad()
def fill_pca_basis(basis: Tensor, mean: Tensor, blocks: Iterable[Tensor], *, owner: str) -> None:
    """Fill a principal-component basis ``(m, D)`` and a mean ``(D,)`` in place from data blocks.

    The basis rows are the ``m`` leading eigenvectors of the float64 scatter matrix of the
    rows (:func:`sbikit.train.mean_and_scatter`, ``D x D``), i.e. the right singular vectors of
    the centred data, in decreasing order of variance; with ``n <= m`` rows only ``n - 1`` rows
    are filled and the rest stay zero (unused coefficients).

    Args:
        basis: buffer ``(m, D)``, overwritten.
        mean: buffer ``(D,)``, overwritten with the rows' mean.
        blocks: tensors ``(b, *x_shape)`` with ``prod(x_shape) == D`` (rows in memory cut into
            blocks, or the blocks of a stream), in the units the basis will be used in.
        owner: names the model in the log line (how much variance the basis keeps).
    """
    size = len(mean)
    mu, scatter, n = mean_and_scatter(blocks, size)
    vals, vecs = torch.linalg.eigh(scatter)  # ascending
    m = min(len(basis), n - 1) if n > 1 else 0
    rows = torch.zeros_like(basis)
    if m > 0:
        rows[:m] = vecs[:, -m:].flip(1).T.to(rows)
    basis.copy_(rows)
    mean.copy_(mu.to(mean))
    total = float(vals.clamp(min=0).sum())
    kept = float(vals[len(vals) - m :].clamp(min=0).sum()) if m > 0 else 0.0
    logger.info(
        "%s's %d principal components hold %.1f%% of the training images' variance "
        "(the rest is left to the per-pixel noise)",
        owner,
        m,
        100.0 * kept / total if total > 0 else 100.0,
    )


class Emulator(nn.Module):
    """Base class: a fitted generative model of ``x | theta`` with the simulator protocol.

    Subclasses implement :meth:`_build` (create the networks once ``x_shape`` and
    ``theta_dim`` are known), :meth:`_draw` (standardised ``theta`` -> standardised draws of
    ``x``, all randomness from a given generator), :meth:`_config` and :meth:`fit`.

    Args:
        latent_dim: dimension of the latent variable ``z``.
        x_shape: shape of one output (``(D,)``, ``(H, W)`` or ``(C, H, W)``); ``None`` takes
            it from the data at :meth:`fit`.
        theta_dim: ``d``, the number of parameters (``0``: unconditional); ``None`` takes it
            from ``prior`` or the data.
        prior: a prior with ``sample(n, seed=)`` and ``dim`` (an sbikit prior is saved with
            the emulator); needed to pass the emulator to :func:`sbikit.simulate`.
        theta_names: names of the ``d`` parameters (default ``theta_0, theta_1, ...``).

    Attributes:
        history: the training history of the last fit (``None`` before).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        x_shape: Sequence[int] | None = None,
        theta_dim: int | None = None,
        prior: Any = None,
        theta_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        if prior is not None and not (hasattr(prior, "sample") and hasattr(prior, "dim")):
            raise TypeError(f"prior needs sample(n, seed=) and dim, got {type(prior).__name__}")
        if prior is not None:
            if theta_dim is not None and int(theta_dim) != int(prior.dim):
                raise ValueError(f"theta_dim={theta_dim} but the prior has dimension {prior.dim}")
            theta_dim = int(prior.dim)
        if theta_dim is not None and int(theta_dim) < 0:
            raise ValueError(f"theta_dim must be >= 0, got {theta_dim}")
        self.latent_dim = int(latent_dim)
        self.x_shape: tuple[int, ...] | None = None if x_shape is None else tuple(int(s) for s in x_shape)
        if self.x_shape is not None and (not self.x_shape or min(self.x_shape) < 1):
            raise ValueError(f"x_shape must be a non-empty shape of positive sizes, got {x_shape}")
        self.theta_dim: int | None = None if theta_dim is None else int(theta_dim)
        self.prior = prior
        self.theta_names: list[str] | None = None if theta_names is None else [str(s) for s in theta_names]
        if self.theta_names is not None and self.theta_dim is not None and len(self.theta_names) != self.theta_dim:
            raise ValueError(f"theta_names has {len(self.theta_names)} names for {self.theta_dim} parameters")
        self.history: Any = None
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._built = False  # subclasses call self._maybe_build() at the end of their __init__

    # -- to implement -----------------------------------------------------------------------
    def _build(self) -> None:  # pragma: no cover - abstract
        """Create the networks (``x_shape`` and ``theta_dim`` are known)."""
        raise NotImplementedError

    def _draw(self, theta_s: Tensor, gen: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        """Standardised ``theta`` ``(b, d)`` on the device -> standardised draws ``(b, *x_shape)``."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """Constructor keyword arguments beyond those of :class:`Emulator` (JSON-able)."""
        return {}

    # -- construction -------------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        """Whether one output is an image, ``(H, W)`` or ``(C, H, W)`` (convolutional networks)."""
        return self.x_shape is not None and len(self.x_shape) in (2, 3)

    def _build_all(self) -> None:
        assert self.x_shape is not None and self.theta_dim is not None
        if len(self.x_shape) > 3:
            raise ValueError(f"outputs must be vectors (D,) or images (H, W) / (C, H, W), got x_shape={self.x_shape}")
        dev = self.fitted.device
        self.register_buffer("theta_shift", torch.zeros(self.theta_dim, device=dev))
        self.register_buffer("theta_scale", torch.ones(self.theta_dim, device=dev))
        self.register_buffer("x_shift", torch.zeros(self.x_shape, device=dev))
        self.register_buffer("x_scale", torch.ones(self.x_shape, device=dev))
        self._build()
        self.to(dev)
        self._built = True

    def _maybe_build(self) -> None:
        if not self._built and self.x_shape is not None and self.theta_dim is not None:
            self._build_all()

    def get_config(self) -> dict[str, Any]:
        """The constructor's keyword arguments (JSON-able); with the state dict they rebuild the model."""
        prior_cfg = None
        if self.prior is not None:
            try:
                prior_cfg = self.prior.to_config()
            except (AttributeError, ValueError, NotImplementedError):
                logger.warning("the prior (%s) cannot be saved; the loaded emulator has no prior", type(self.prior))
        return {
            "latent_dim": self.latent_dim,
            "x_shape": None if self.x_shape is None else list(self.x_shape),
            "theta_dim": self.theta_dim,
            "prior": prior_cfg,
            "theta_names": self.theta_names,
            **self._config(),
        }

    def config_dict(self) -> dict[str, Any]:
        """``{"class": "module:QualName", "kwargs": get_config()}``, as stored in files."""
        cls = type(self)
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": self.get_config()}

    @property
    def device(self) -> torch.device:
        return self.fitted.device

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @property
    def conditional(self) -> bool:
        """Whether the emulator takes parameters (``theta_dim > 0``)."""
        return bool(self.theta_dim)

    @property
    def dim(self) -> int:
        """Number of parameters ``d`` (as ``Simulator.dim``)."""
        if self.theta_dim is None:
            raise RuntimeError(f"{type(self).__name__} does not know its number of parameters before fit")
        return self.theta_dim

    def _require_fitted(self, action: str) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(theta, x) before {action}")

    # -- checks and standardisation -------------------------------------------------------------
    def _check_theta(self, theta: Any, name: str = "theta") -> tuple[Tensor, bool]:
        """Validate ``theta`` -> float32 CPU ``(n, d)`` and whether a single row ``(d,)`` was given."""
        d = self.dim
        th = as_float_tensor(theta, name)
        single = th.ndim == 1 and th.shape[0] == d
        if single:
            th = th[None]
        elif th.ndim == 1 and d == 1:
            th = th[:, None]
        if th.ndim != 2 or th.shape[1] != d:
            raise ValueError(
                f"{name} must have shape (n, {d}) or ({d},) for this {type(self).__name__}, got {tuple(th.shape)}"
            )
        if not bool(torch.isfinite(th).all()):
            bad = int((~torch.isfinite(th).all(1)).sum())
            raise ValueError(f"{name} holds NaN or inf in {bad} of {len(th)} rows; parameters must be finite")
        return th, single

    def _check_x(self, x: Any, name: str = "x") -> Tensor:
        """Validate training data -> float32 CPU ``(n, *x_shape)`` (``(n,)`` is read as ``(n, 1)``)."""
        xt = as_float_tensor(x, name)
        if xt.ndim == 1:
            xt = xt[:, None]
        if self.x_shape is not None and tuple(xt.shape[1:]) != self.x_shape:
            raise ValueError(
                f"{name} must have shape (n, {', '.join(map(str, self.x_shape))}) for this "
                f"{type(self).__name__}, got {tuple(xt.shape)}"
            )
        if not bool(torch.isfinite(xt).all()):
            bad = int((~torch.isfinite(xt.reshape(len(xt), -1)).all(1)).sum())
            raise ValueError(
                f"{name} holds NaN or inf in {bad} of {len(xt)} rows; an emulator learns the distribution of x, "
                "so drop failed simulations first (e.g. sbikit.utils.drop_nonfinite_rows) and know that this "
                "biases it where the simulator fails"
            )
        return xt

    def _start_fit(self, theta: Any, x: Any, *, seed: int | None) -> tuple[Tensor, Tensor]:
        """Validate training pairs, fix ``x_shape``/``theta_dim``, build fresh networks, standardise.

        The networks are rebuilt from ``seed`` on every fit, so a fit never depends on an
        earlier one or on the global random state.

        Returns:
            ``(theta, x)``: float32 CPU ``(n, d)`` and ``(n, *x_shape)`` in data units.
        """
        xt = as_float_tensor(x, "x")
        th_raw = None if theta is None else as_float_tensor(theta, "theta")
        theta_dim = self._fix_shapes(None if th_raw is None else tuple(th_raw.shape), tuple(xt.shape))
        assert self.x_shape is not None
        xt = xt.reshape(len(xt), *self.x_shape)
        if th_raw is not None and theta_dim:
            th, _ = self._check_theta(th_raw.reshape(len(xt), theta_dim))
        else:
            th = torch.zeros(len(xt), 0)
        xt = self._check_x(xt)
        self._build_fresh(seed)
        self._set_standardization(th, xt)
        return th, xt

    def _fix_shapes(self, theta_shape: tuple[int, ...] | None, x_shape: tuple[int, ...]) -> int:
        """Check the shapes of training pairs and fix ``x_shape``, ``theta_dim`` and ``theta_names``.

        Args:
            theta_shape: shape of ``theta``, ``(n, d)`` or ``(n,)`` for one parameter; ``None``
                for an unconditional emulator.
            x_shape: shape of ``x``, ``(n, *x_shape)``; ``(n,)`` is read as ``(n, 1)``.

        Returns:
            ``d`` (``0`` when unconditional).

        Raises:
            ValueError: on a wrong width or number of dimensions, mismatched rows, fewer than
                2 rows, or ``theta_names`` of another length.
        """
        shape = tuple(int(s) for s in x_shape)
        if len(shape) == 1:
            shape = (shape[0], 1)
        if len(shape) < 2:
            raise ValueError(f"x must have shape (n, *x_shape) with n simulations, got {tuple(x_shape)}")
        n = shape[0]
        if theta_shape is None:
            if self.theta_dim not in (None, 0):
                raise ValueError(f"this {type(self).__name__} has {self.theta_dim} parameters: pass theta to fit")
            theta_dim = 0
        else:
            th_shape = tuple(int(s) for s in theta_shape)
            if len(th_shape) == 1 and self.theta_dim in (None, 1):
                th_shape = (th_shape[0], 1)
            if len(th_shape) != 2 or (self.theta_dim is not None and th_shape[1] != self.theta_dim):
                want = "d" if self.theta_dim is None else str(self.theta_dim)
                raise ValueError(f"theta must have shape (n, {want}), got {tuple(theta_shape)}")
            if th_shape[0] != n:
                raise ValueError(f"theta and x need the same number of rows, got {th_shape[0]} and {n}")
            theta_dim = th_shape[1]
        if self.x_shape is not None and shape[1:] != self.x_shape:
            raise ValueError(
                f"x must have shape (n, {', '.join(map(str, self.x_shape))}) for this {type(self).__name__}, "
                f"got {tuple(x_shape)}"
            )
        if n < 2:
            raise ValueError(f"fit needs at least 2 simulations, got {n}")
        self.x_shape, self.theta_dim = shape[1:], theta_dim
        if self.theta_names is None:
            self.theta_names = [f"theta_{i}" for i in range(theta_dim)]
        elif len(self.theta_names) != theta_dim:
            raise ValueError(f"theta_names has {len(self.theta_names)} names for {theta_dim} parameters")
        return theta_dim

    def _build_fresh(self, seed: int | None) -> None:
        """Build the networks anew from ``seed`` (``x_shape`` and ``theta_dim`` are known)."""
        self._built = False
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self._build_all()
        self.fitted.fill_(False)

    # -- training data on disk: read into memory, or streamed -------------------------------------
    def _fit_data(
        self, theta: Any, x: Any, *, seed: int | None, memory_limit_gb: float | None, stacklevel: int = 3
    ) -> tuple[Tensor, Tensor] | StreamingData:
        """Validated training pairs with networks built and standardisation set.

        Args:
            theta: ``(n, d)`` or ``None`` (unconditional); numpy, torch or an array on disk.
            x: ``(n, *x_shape)``; numpy, torch or an array on disk (``sbikit.open_store(p).x``).
            seed: seeds the networks' initialisation.
            memory_limit_gb: arrays on disk whose float32 size (together) exceeds this are
                streamed; ``0`` always streams, ``None`` always reads them into memory.
            stacklevel: of the dropped-rows warning, ``1`` being this method (the default
                ``3`` points at the user's call of ``fit``).

        Returns:
            In memory: ``(theta, x)`` as :meth:`_start_fit` returns them (data units). Streamed:
            a :class:`~sbikit.train.StreamingData` whose blocks are the standardised tensors
            ``[theta_s (b, d), x_s (b, *x_shape)]`` (``d = 0`` when unconditional) without the
            rows holding NaN or inf; the standardisation comes from one streaming pass.

        Raises:
            ValueError: on wrong shapes, mismatched rows, or fewer than 2 finite rows.
        """
        arrays, streamed = read_or_stream(
            {"x": x, "theta": theta}, memory_limit_gb=memory_limit_gb, stacklevel=stacklevel + 1
        )
        if not streamed:
            return self._start_fit(arrays["theta"], arrays["x"], seed=seed)
        return self._start_streamed_fit(arrays["theta"], arrays["x"], seed=seed, stacklevel=stacklevel + 1)

    def _start_streamed_fit(self, theta: Any, x: Any, *, seed: int | None, stacklevel: int) -> StreamingData:
        """The streamed counterpart of :meth:`_start_fit` (only shapes are read before the statistics pass)."""
        theta_dim = self._fix_shapes(None if theta is None else tuple(theta.shape), tuple(x.shape))
        assert self.x_shape is not None
        self._build_fresh(seed)
        arrays, shapes, names = [x], [self.x_shape], ["x"]
        if theta_dim:
            arrays, shapes, names = [theta, x], [(theta_dim,), self.x_shape], ["x", "theta"]
        raw = finite_row_stream(arrays, shapes)
        moments = stream_moments(
            raw,
            names,
            pooled=[False] * (len(arrays) - 1) + [self.is_image],
            unit="simulations",
            stacklevel=stacklevel + 1,
        )
        x_mean, x_std, _ = moments[-1]
        with torch.no_grad():
            if theta_dim:
                t_mean, t_std, _ = moments[0]
                self.theta_shift.copy_(t_mean.float())
                self.theta_scale.copy_(torch.where(t_std > _MIN_SCALE, t_std, torch.ones_like(t_std)).float())
            if self.is_image:
                self.x_shift.fill_(float(x_mean))
                self.x_scale.fill_(float(x_std) if float(x_std) > _MIN_SCALE else 1.0)
            else:
                self.x_shift.copy_(x_mean.float().reshape(self.x_shape))
                safe = torch.where(x_std > _MIN_SCALE, x_std, torch.ones_like(x_std)).float()
                self.x_scale.copy_(safe.reshape(self.x_shape))
        # CPU copies: the transform runs in the stream's reader thread, whatever the model's device.
        t_shift, t_scale = self.theta_shift.detach().cpu().clone(), self.theta_scale.detach().cpu().clone()
        x_shift, x_scale = self.x_shift.detach().cpu().clone(), self.x_scale.detach().cpu().clone()

        def standardize(ts: list[Tensor]) -> list[Tensor]:
            xs = (ts[-1] - x_shift) / x_scale
            th = (ts[0] - t_shift) / t_scale if theta_dim else torch.zeros(len(xs), 0)
            return [th, xs]

        return finite_row_stream(arrays, shapes, then=standardize)

    @torch.no_grad()
    def _set_standardization(self, th: Tensor, xt: Tensor) -> None:
        if th.shape[1]:
            self.theta_shift.copy_(th.mean(0))
            std = th.std(0) if len(th) > 1 else torch.ones(th.shape[1])
            self.theta_scale.copy_(torch.where(std > _MIN_SCALE, std, torch.ones_like(std)))
        if self.is_image:
            std = float(xt.std())
            self.x_shift.fill_(float(xt.mean()))
            self.x_scale.fill_(std if std > _MIN_SCALE else 1.0)
        else:
            std = xt.std(0)
            self.x_shift.copy_(xt.mean(0))
            self.x_scale.copy_(torch.where(std > _MIN_SCALE, std, torch.ones_like(std)))

    def standardize_theta(self, theta: Tensor) -> Tensor:
        """``(theta - mean) / std`` with the training statistics; ``(b, d)`` -> ``(b, d)``."""
        return (theta - self.theta_shift) / self.theta_scale

    def standardize_x(self, x: Tensor) -> Tensor:
        """Data units -> standardised units; ``(b, *x_shape)`` -> ``(b, *x_shape)``."""
        return (x - self.x_shift) / self.x_scale

    def unstandardize_x(self, xs: Tensor) -> Tensor:
        """Standardised units -> data units; ``(b, *x_shape)`` -> ``(b, *x_shape)``."""
        return xs * self.x_scale + self.x_shift

    # -- a principal-component output basis (the CVAE's decoder="pca", the WGAN's generator="pca") --
    def _register_pca_buffers(self, num_components: int) -> int:
        """Zero buffers ``pca_basis`` ``(m, D)`` and ``pca_mean`` ``(D,)``, filled by fit; returns ``m``.

        ``D`` is the number of output elements and ``m = min(num_components, D)``; both are in
        standardised units.
        """
        assert self.x_shape is not None
        size = math.prod(self.x_shape)
        m = min(int(num_components), size)
        self.register_buffer("pca_basis", torch.zeros(m, size))
        self.register_buffer("pca_mean", torch.zeros(size))
        return m

    def _from_pca(self, coefficients: Tensor) -> Tensor:
        """Coefficients ``(b, m)`` -> standardised outputs ``(b, *x_shape)``: mean plus coefficients times the basis."""
        assert self.x_shape is not None
        return (coefficients @ self.pca_basis + self.pca_mean).reshape(coefficients.shape[0], *self.x_shape)

    def _fit_pca_basis(self, data: tuple[Tensor, Tensor] | StreamingData, *, x_standardized: bool, owner: str) -> None:
        """Fill ``pca_basis`` and ``pca_mean`` from the training images (:func:`fill_pca_basis`).

        Args:
            data: ``(theta, x)`` in memory (``x`` standardised when ``x_standardized``, else in
                data units), or a stream of standardised ``[theta_s, x_s]`` blocks.
            x_standardized: whether the in-memory ``x`` is standardised already.
            owner: names the model and its network in the log line.
        """
        if isinstance(data, StreamingData):
            blocks: Iterable[Tensor] = (block[1] for block in data.iter_blocks())
        elif x_standardized:
            blocks = data[1].split(4096)
        else:
            blocks = (self.standardize_x(b.to(self.device)) for b in data[1].split(4096))
        fill_pca_basis(self.pca_basis, self.pca_mean, blocks, owner=owner)

    def _theta_for_network(self, theta: Any, n: int, name: str = "theta") -> Tensor:
        """``theta`` ``(n, d)`` (tensor, any device) or ``None`` (unconditional) -> standardised, on the device."""
        if not self.conditional:
            if theta is not None and (not isinstance(theta, Tensor) or theta.numel() != 0):
                raise ValueError(f"this {type(self).__name__} is unconditional (fitted without theta): pass theta=None")
            return torch.zeros(n, 0, device=self.device)
        if theta is None:
            raise ValueError(f"this {type(self).__name__} is conditional on {self.dim} parameters: pass theta (n, d)")
        if not isinstance(theta, Tensor):
            theta = torch.as_tensor(np.asarray(theta, dtype=np.float32))
        if theta.ndim != 2 or theta.shape != (n, self.dim):
            raise ValueError(f"{name} must have shape ({n}, {self.dim}), got {tuple(theta.shape)}")
        return self.standardize_theta(theta.to(device=self.device, dtype=torch.float32))

    # -- the simulator protocol ----------------------------------------------------------------
    @torch.no_grad()
    def _generate_rows(self, th: Tensor, seed: int | None) -> Tensor:
        """Float32 CPU ``theta`` ``(n, d)`` -> float32 CPU draws ``(n, *x_shape)`` (one per row)."""
        gen = make_generator(seed, self.device)
        was_training = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(th), _SIMULATE_CHUNK):
                ts = self.standardize_theta(th[i : i + _SIMULATE_CHUNK].to(self.device))
                out.append(self.unstandardize_x(self._draw(ts, gen)).cpu())
        finally:
            self.train(was_training)
        assert self.x_shape is not None
        return torch.cat(out) if out else torch.zeros(0, *self.x_shape)

    def simulate(self, theta: Any, seed: int | None = None) -> Any:
        """Draw one output per parameter row, as a simulator does.

        Args:
            theta: ``(n, d)`` or one row ``(d,)``, numpy (or a list) or torch; for an
                unconditional emulator the number of draws ``n`` (an int).
            seed: makes the draws repeatable (on one device).

        Returns:
            ``(n, *x_shape)`` (``x_shape`` for one row): float64 numpy for numpy input,
            float32 torch on ``theta``'s device for torch input (and for an int).

        Raises:
            RuntimeError: before :meth:`fit`.
            ValueError: on a wrong shape or NaN/inf in ``theta``.
        """
        self._require_fitted("simulate(theta)")
        if not self.conditional:
            if isinstance(theta, (int, np.integer)) and not isinstance(theta, bool):
                return self.sample(int(theta), seed=seed)
            raise ValueError(
                f"this {type(self).__name__} is unconditional (fitted without theta): simulate(n) takes the number "
                f"of draws, got {type(theta).__name__}"
            )
        th, single = self._check_theta(theta)
        if self.prior is not None and hasattr(self.prior, "in_support"):
            outside = int((~self.prior.in_support(th)).sum())
            if outside:
                logger.warning(
                    "%d of %d theta rows lie outside the prior support: the emulator extrapolates", outside, len(th)
                )
        x = self._generate_rows(th, seed)
        if single:
            x = x[0]
        if isinstance(theta, Tensor):
            return x.to(theta.device)
        return x.double().numpy()

    def sample(self, n: int, theta: Any = None, seed: int | None = None) -> Tensor:
        """``n`` draws: at one ``theta`` ``(d,)``, one per row of ``theta`` ``(n, d)``, or unconditional.

        Args:
            n: number of draws.
            theta: one row ``(d,)`` (repeated ``n`` times), ``(n, d)``, or ``None`` for an
                unconditional emulator.
            seed: makes the draws repeatable (on one device).

        Returns:
            ``(n, *x_shape)``, float32 on the CPU, data units.
        """
        self._require_fitted("sample(n)")
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if not self.conditional:
            if theta is not None:
                raise ValueError(f"this {type(self).__name__} is unconditional (fitted without theta): pass theta=None")
            th = torch.zeros(n, 0)
        else:
            if theta is None:
                raise ValueError(f"this {type(self).__name__} is conditional on {self.dim} parameters: pass theta")
            th, single = self._check_theta(theta)
            if single:
                th = th.expand(n, -1)
            elif len(th) != n:
                raise ValueError(f"theta has {len(th)} rows but n={n} draws were asked for; pass one row or n rows")
        return self._generate_rows(th, seed)

    def to_device(self, device: str | torch.device) -> Emulator:
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``) in place and return self."""
        self.to(resolve_device(device))
        return self

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the emulator to ``path`` atomically (a temporary file, then a rename)."""
        self._require_fitted("save(path)")
        history = self.history.to_dict() if self.history is not None else None
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config_dict()),
            "history": json.dumps(history),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        return save_payload(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Emulator:
        """Load an emulator written by :meth:`save` (same as :func:`load_emulator`)."""
        emu = load_emulator(path, device=device)
        if not isinstance(emu, cls):
            raise TypeError(f"{path} holds a {type(emu).__name__}, not a {cls.__name__}")
        return emu

    @classmethod
    def _history_from_dict(cls, data: dict[str, Any]) -> Any:
        """Rebuild :attr:`history` from its ``to_dict()`` (subclasses know its type)."""
        return None

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, x_shape={self.x_shape}, theta_dim={self.theta_dim}, fitted={self.is_fitted}"
        )


def _emulator_from_config(cfg: dict[str, Any]) -> Emulator:
    module_name, _, qualname = str(cfg.get("class", "")).partition(":")
    if not module_name or not qualname:
        raise ValueError(f"emulator config needs a 'class' like 'package.module:Name', got {cfg.get('class')!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Emulator)):
        raise ValueError(f"{cfg['class']} is not an sbikit Emulator subclass; refusing to build it")
    kwargs = dict(cfg.get("kwargs", {}))
    if kwargs.get("prior") is not None:
        kwargs["prior"] = prior_from_config(kwargs["prior"])
    return obj(**kwargs)


def load_emulator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Emulator:
    """Load any emulator written by :meth:`Emulator.save`.

    Args:
        path: the file.
        device: where to put it (``"cpu"``, ``"cuda"``, ``"auto"``).

    Returns:
        The fitted emulator in evaluation mode.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an sbikit emulator file.
    """
    payload = load_payload(path, fmt=FORMAT, version=FORMAT_VERSION, what="emulator")
    emu = _emulator_from_config(json.loads(payload["config"]))
    emu.load_state_dict(payload["state_dict"])
    history = json.loads(payload.get("history") or "null")
    if history is not None:
        emu.history = type(emu)._history_from_dict(history)
    emu.eval()
    return emu.to_device(device)
