"""The interface every compressor shares, saving/loading, and the frozen embedding for NPE.

A compressor maps data ``x`` of shape ``(n, *x_shape)`` (images ``(n, H, W)`` or
``(n, C, H, W)``) to summaries ``(n, k)``. It is an ``nn.Module`` whose architecture is
rebuilt from :meth:`Compressor.get_config` (JSON-able keyword arguments) and whose fitted
state (weights, standardisation, ``fitted`` flag) lives in its ``state_dict``. Files are a
``torch.save`` dict of that state dict and a JSON config, read back with
``weights_only=True``: loading never runs code from the file, and the class is named by
its import path and must be a :class:`Compressor` subclass.

Training data may be numpy arrays, tensors or arrays on disk (``sbikit.open_store(path).x``,
any zarr/h5py array): those are read into memory when their float32 size is at most
``memory_limit_gb`` and otherwise streamed through :func:`sbikit.train.fit` as a
:class:`~sbikit.train.StreamingData`, with the standardisation computed in one streaming
pass. :meth:`Compressor.encode` reads arrays on disk chunk by chunk.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sbikit.disk_inputs import finite_row_stream, read_or_stream, stream_moments, warn_dropped
from sbikit.disk_inputs import finite_rows as _finite_rows
from sbikit.train import FitResult, StreamingData, fit, is_out_of_core
from sbikit.utils import as_float_tensor, load_payload, resolve_device, save_payload

__all__ = ["Compressor", "FrozenEmbedding", "load_compressor", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "sbikit-compressor"
FORMAT_VERSION = 1

# Rows read at once by encode (bounds memory for large data sets); each read goes through the
# networks in batches of at most _ENCODE_ELEMENTS input entries (512 rows of 64 x 64 images),
# so that convolutional activations stay small.
_ENCODE_CHUNK = 4096
_ENCODE_ELEMENTS = 2**21


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Compressor(nn.Module):
    """Base class: data ``(n, *x_shape)`` -> summaries ``(n, num_summaries)``.

    Subclasses implement :meth:`_build` (create the networks once ``x_shape`` and
    ``num_summaries`` are known), :meth:`_encode` (standardised data on the device ->
    summaries) and :meth:`fit`. Data are standardised by one global mean and standard
    deviation (``x_shift``, ``x_scale``, scalars) set from the training data, which keeps
    the spatial structure of images.

    Args:
        num_summaries: ``k``, the number of summaries (``None`` where :meth:`fit` sets it).
        x_shape: shape of one data set; ``None`` takes it from the data at :meth:`fit`.

    Attributes:
        history: the :class:`~sbikit.train.FitResult` of the last fit (``None`` before, and
            for compressors fitted in closed form).
    """

    def __init__(self, num_summaries: int | None = None, *, x_shape: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__()
        if num_summaries is not None and int(num_summaries) < 1:
            raise ValueError(f"num_summaries must be a positive integer, got {num_summaries}")
        self.num_summaries = None if num_summaries is None else int(num_summaries)
        self.x_shape: tuple[int, ...] | None = None if x_shape is None else tuple(int(s) for s in x_shape)
        self.history: FitResult | None = None
        self.register_buffer("x_shift", torch.zeros(()))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._built = False

    # -- to implement -----------------------------------------------------------------------
    def _build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Standardised data ``(b, *x_shape)`` on the module's device -> summaries ``(b, k)``."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """Keyword arguments beyond ``num_summaries`` and ``x_shape`` (JSON-able)."""
        return {}

    # -- construction -------------------------------------------------------------------------
    def _maybe_build(self) -> None:
        if not self._built and self.x_shape is not None and self.num_summaries is not None:
            self._build()
            self._built = True

    def get_config(self) -> dict[str, Any]:
        """The constructor's keyword arguments (JSON-able); with the state dict they rebuild the model."""
        return {
            "num_summaries": self.num_summaries,
            "x_shape": None if self.x_shape is None else list(self.x_shape),
            **self._config(),
        }

    def config_dict(self) -> dict[str, Any]:
        """``{"class": "module:QualName", "kwargs": get_config()}``, as stored in files."""
        cls = type(self)
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": self.get_config()}

    @property
    def device(self) -> torch.device:
        return self.x_shift.device

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    # -- data checks ---------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...], name: str = "x") -> bool:
        """Check the shape of data ``(n, *x_shape)`` or ``x_shape``; -> whether it is a single data set."""
        shape = tuple(int(s) for s in shape)
        if self.x_shape is None:
            if len(shape) < 2:
                raise ValueError(f"{name} must have shape (n, *x_shape) with n data sets, got {shape}")
            return False
        if shape == self.x_shape:
            return True
        if shape[1:] != self.x_shape:
            raise ValueError(
                f"{name} must have shape (n, {', '.join(map(str, self.x_shape))}) or {_shape_text(self.x_shape)} "
                f"for this {type(self).__name__}, got {shape}"
            )
        return False

    def _check_x(self, x: Any, name: str = "x") -> tuple[Tensor, bool]:
        """Validate ``x`` -> float32 CPU ``(n, *x_shape)`` and whether a single data set was given."""
        xt = as_float_tensor(x, name)
        single = self._check_shape(tuple(xt.shape), name)
        if self.x_shape is None:
            return xt, False
        if single:
            xt = xt[None]
        if not bool(torch.isfinite(xt).all()):
            bad = int((~torch.isfinite(xt.reshape(len(xt), -1)).all(1)).sum())
            raise ValueError(f"{name} holds NaN or inf in {bad} of {len(xt)} rows; compressors need finite data")
        return xt, single

    def _start_fit(self, x: Any, *, seed: int | None, num_summaries: int | None = None) -> Tensor:
        """Validate training data, fix ``x_shape`` (and ``k``), build fresh networks; -> ``(n, *x_shape)``.

        The networks are rebuilt from ``seed`` on every fit, so a fit never depends on an
        earlier one or on the global random state.
        """
        xt, _ = self._check_x(x)
        if self.x_shape is None:
            self.x_shape = tuple(int(s) for s in xt.shape[1:])
        xt, _ = self._check_x(xt)  # finiteness check with the shape now known
        if len(xt) < 2:
            raise ValueError(f"fit needs at least 2 data sets, got {len(xt)}")
        self._build_fresh(seed=seed, num_summaries=num_summaries)
        return xt

    def _build_fresh(self, *, seed: int | None, num_summaries: int | None) -> None:
        """Fix ``k`` (when the constructor left it open) and build the networks from ``seed``."""
        if self.num_summaries is None:
            self.num_summaries = num_summaries
        if self.num_summaries is None:  # pragma: no cover - guards subclass bugs
            raise RuntimeError(f"{type(self).__name__} could not determine num_summaries")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self._build()
        self._built = True
        self.fitted.fill_(False)

    # -- data on disk: read into memory, or streamed -------------------------------------------
    def _fit_inputs(
        self, arrays: dict[str, Any], *, memory_limit_gb: float | None, stacklevel: int = 3
    ) -> tuple[dict[str, Any], bool]:
        """Decide whether training data are read into memory or streamed from disk.

        Args:
            arrays: ``{"x": x, ...}``: ``x`` ``(n, *x_shape)`` first, then row-aligned
                companions (``theta`` ``(n, d)``, ``x_pair`` ``(n, *x_shape)``); ``None``
                values are passed through. Each is numpy, torch, or an array on disk.
            memory_limit_gb: arrays on disk whose float32 size (all together) exceeds this
                are streamed; ``0`` always streams, ``None`` always reads them into memory.
            stacklevel: of the dropped-rows warning, counted from this method.

        Returns:
            ``(arrays, streamed)``. Without arrays on disk the inputs come back unchanged and
            are never streamed. Streamed: arrays on disk unchanged, in-memory companions as
            float32 numpy. Read into memory: float32 CPU tensors without the rows that hold
            NaN or inf in any array (chunks of a store that are pending or failed, NaN
            simulator output), dropped with a warning that counts them.

        Raises:
            ValueError: when the arrays have different numbers of rows, or every row read
                into memory holds NaN or inf.
        """
        return read_or_stream(arrays, memory_limit_gb=memory_limit_gb, stacklevel=stacklevel + 1)

    @staticmethod
    def _warn_dropped(dropped: int, n: int, names: list[str], *, stacklevel: int) -> None:
        """Warn that ``dropped`` of ``n`` rows were non-finite in ``names``; raise when all of them were."""
        warn_dropped(dropped, n, names, stacklevel=stacklevel + 1)

    def _start_streamed_fit(
        self,
        x: Any,
        companions: dict[str, tuple[Any, tuple[int, ...] | None]] | None = None,
        *,
        seed: int | None,
        num_summaries: int | None = None,
    ) -> StreamingData:
        """The streamed counterpart of :meth:`_start_fit`: check shapes, fix ``x_shape``, build networks.

        Nothing is read here but the shapes.

        Args:
            x: an array on disk ``(n, *x_shape)`` (or in memory, read by row slices).
            companions: ``{name: (array, row_shape)}`` of row-aligned arrays ``(n, *row_shape)``;
                ``row_shape=None`` means ``x_shape`` (a second image per row).
            seed: seeds the networks' initialisation.
            num_summaries: ``k`` when the constructor left it open.

        Returns:
            A :class:`~sbikit.train.StreamingData` whose blocks are float32 tensors
            ``[x (b, *x_shape), *companions (b, *row_shape)]``, without the rows that hold NaN
            or inf in any of them (the same rows dropped from every tensor).

        Raises:
            ValueError: on a wrong shape, mismatched rows or fewer than 2 rows.
        """
        shape = tuple(int(s) for s in x.shape)
        if self._check_shape(shape) or len(shape) < 2:
            raise ValueError(f"fit needs data sets (n, *x_shape), got one data set of shape {shape}")
        if self.x_shape is None:
            self.x_shape = shape[1:]
        n = shape[0]
        if n < 2:
            raise ValueError(f"fit needs at least 2 data sets, got {n}")
        arrays = [x]
        row_shapes: list[tuple[int, ...]] = [self.x_shape]
        for name, (value, row_shape) in (companions or {}).items():
            if int(value.shape[0]) != n:
                raise ValueError(f"x and {name} need the same number of rows, got {n} and {int(value.shape[0])}")
            want = self.x_shape if row_shape is None else tuple(row_shape)
            got = tuple(int(s) for s in value.shape[1:])
            if (got != want) if row_shape is None else (math.prod(got) != math.prod(want)):
                raise ValueError(f"{name} must have shape (n, {', '.join(map(str, want))}), got {tuple(value.shape)}")
            arrays.append(value)
            row_shapes.append(want)
        self._build_fresh(seed=seed, num_summaries=num_summaries)

        return finite_row_stream(arrays, row_shapes)

    def _streamed_moments(
        self, data: StreamingData, names: list[str], *, pooled: list[bool], stacklevel: int = 3
    ) -> list[tuple[Tensor, Tensor, int]]:
        """One pass of :func:`~sbikit.train.running_moments` over ``data``, warning with the rows dropped.

        Returns:
            Per tensor ``(mean, std, rows kept)`` in float64: pooled over all entries
            (shape ``()``) or per feature.

        Raises:
            ValueError: when fewer than 2 rows are finite.
        """
        return stream_moments(data, names, pooled=pooled, stacklevel=stacklevel + 1)

    def _image_data(
        self, x: Any, *, seed: int | None, memory_limit_gb: float | None, stacklevel: int = 3
    ) -> tuple[Tensor] | StreamingData:
        """Training data of a compressor that learns from ``x`` alone, with networks built and standardisation set.

        Args:
            x: ``(n, *x_shape)``, numpy, torch or an array on disk.
            seed: seeds the networks' initialisation.
            memory_limit_gb: see :meth:`_fit_inputs`.
            stacklevel: of the dropped-rows warning, counted from this method.

        Returns:
            ``(x,)`` with ``x`` a float32 tensor ``(n, *x_shape)``, or a
            :class:`~sbikit.train.StreamingData` of ``[x]`` blocks when streamed.
        """
        arrays, streamed = self._fit_inputs({"x": x}, memory_limit_gb=memory_limit_gb, stacklevel=stacklevel + 1)
        if not streamed:
            xt = self._start_fit(arrays["x"], seed=seed)
            self._set_standardization(xt)
            return (xt,)
        data = self._start_streamed_fit(arrays["x"], seed=seed)
        ((mean, std, _),) = self._streamed_moments(data, ["x"], pooled=[True], stacklevel=stacklevel + 1)
        self._set_standardization_values(float(mean), float(std))
        return data

    @torch.no_grad()
    def _set_standardization_values(self, mean: float, std: float) -> None:
        """Set ``x_shift``/``x_scale`` from a mean and standard deviation computed elsewhere (a stream)."""
        self.x_shift.fill_(float(mean))
        self.x_scale.fill_(float(std) if float(std) > 1e-12 else 1.0)

    @torch.no_grad()
    def _set_standardization(self, xt: Tensor) -> None:
        std = float(xt.std())
        self.x_shift.fill_(float(xt.mean()))
        self.x_scale.fill_(std if std > 1e-12 else 1.0)

    def _standardize(self, xt: Tensor) -> Tensor:
        return (xt - self.x_shift) / self.x_scale

    # -- public API -----------------------------------------------------------------------------
    def fit(self, x: Any, theta: Any = None, **kwargs: Any) -> Compressor:  # pragma: no cover - abstract
        """Fit to data ``x`` ``(n, *x_shape)`` (and ``theta`` ``(n, d)`` where needed); returns self."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, x: Any) -> Tensor:
        """Summaries of ``x``.

        Args:
            x: ``(n, *x_shape)`` or one data set ``x_shape`` (numpy or torch).

        Returns:
            ``(n, k)`` (``(k,)`` for one data set), float32 on the CPU.

        Raises:
            RuntimeError: before :meth:`fit`.
            ValueError: on a wrong shape or NaN/inf in ``x``.
        """
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x) before encode(x)")
        if is_out_of_core(x) and not self._check_shape(tuple(x.shape)):
            return self._encode_from_disk(x)
        xt, single = self._check_x(x)
        was_training = self.training
        self.eval()
        try:
            out = self._encode_batches(xt)
        finally:
            self.train(was_training)
        return out[0] if single else out

    def _encode_batches(self, xt: Tensor) -> Tensor:
        """Data units ``(n, *x_shape)`` on the CPU -> summaries ``(n, k)`` on the CPU, batch by batch."""
        assert self.x_shape is not None
        rows = max(1, min(_ENCODE_CHUNK, _ENCODE_ELEMENTS // math.prod(self.x_shape)))
        return torch.cat(
            [self._encode(self._standardize(xt[i : i + rows].to(self.device))).cpu() for i in range(0, len(xt), rows)]
        )

    @torch.no_grad()
    def _encode_from_disk(self, x: Any) -> Tensor:
        """Summaries ``(n, k)`` of an array on disk ``(n, *x_shape)``, read a few of its chunks at a time."""
        n = int(x.shape[0])
        chunks = getattr(x, "chunks", None)
        step = int(chunks[0]) if chunks else _ENCODE_CHUNK
        step = max(step, (_ENCODE_CHUNK // step) * step)  # whole chunks of the array per read
        was_training = self.training
        self.eval()
        out = []
        try:
            for i in range(0, n, step):
                xt = torch.as_tensor(np.asarray(x[i : i + step], dtype=np.float32))
                ok = _finite_rows(xt)
                if not bool(ok.all()):
                    raise ValueError(
                        f"x holds NaN or inf in {int((~ok).sum())} of its rows {i} to {i + len(xt) - 1} (of {n}); "
                        "compressors need finite data: encode only the finite rows (store.finite_mask())"
                    )
                out.append(self._encode_batches(xt))
        finally:
            self.train(was_training)
        assert self.num_summaries is not None
        return torch.cat(out) if out else torch.zeros(0, self.num_summaries)

    def as_embedding(self) -> FrozenEmbedding:
        """This compressor as a frozen ``embedding=`` for :class:`sbikit.NPE` (no gradient, eval mode)."""
        return FrozenEmbedding(self)

    def to_device(self, device: str | torch.device) -> Compressor:
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``) in place and return self."""
        self.to(resolve_device(device))
        return self

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the compressor to ``path`` atomically (a temporary file, then a rename)."""
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: there is nothing to save")
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config_dict()),
            "history": json.dumps(self.history.to_dict() if self.history is not None else None),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        return save_payload(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Compressor:
        """Load a compressor written by :meth:`save` (same as :func:`load_compressor`)."""
        comp = load_compressor(path, device=device)
        if not isinstance(comp, cls):
            raise TypeError(f"{path} holds a {type(comp).__name__}, not a {cls.__name__}")
        return comp

    def extra_repr(self) -> str:
        return f"num_summaries={self.num_summaries}, x_shape={self.x_shape}, fitted={self.is_fitted}"

    # -- shared training --------------------------------------------------------------------------
    def _train(
        self,
        loss_fn: Callable[..., Tensor],
        data: tuple[Tensor, ...] | StreamingData,
        *,
        seed: int | None,
        device: str | torch.device,
        description: str,
        **fit_kwargs: Any,
    ) -> FitResult:
        """Run :func:`sbikit.train.fit` on this module, seeding initialisation-free randomness.

        Randomness inside the loss (augmentations, the VAE's reparameterisation noise) comes
        from torch's global generator, seeded here inside a forked RNG state so that the
        caller's random state is untouched and the same seed gives the same model.
        """
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            result = fit(self, loss_fn, data, seed=seed, device=dev, description=description, **fit_kwargs)
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError(f"{description}: training diverged (the validation loss is not finite)")
        self.history = result
        self.fitted.fill_(True)
        self.eval()
        return result


class FrozenEmbedding(nn.Module):
    """A fitted compressor used as NPE's ``embedding=``: no gradient, always in eval mode.

    NPE z-scores ``x`` before its embedding; a compressor standardises ``x`` itself, so
    ``takes_raw_input`` tells NPE to pass ``x`` unchanged.

    Args:
        compressor: a fitted :class:`Compressor`, or its :meth:`Compressor.config_dict`
            (used when a saved posterior is loaded; the weights then come from the state dict).
    """

    takes_raw_input = True

    def __init__(self, compressor: Compressor | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(compressor, dict):
            compressor = _compressor_from_config(compressor)
        elif not isinstance(compressor, Compressor):
            raise TypeError(f"FrozenEmbedding needs a Compressor, got {type(compressor).__name__}")
        elif not compressor.is_fitted:
            raise RuntimeError(f"{type(compressor).__name__} is not fitted: fit it before using it as an embedding")
        self.compressor = compressor
        self.compressor.requires_grad_(False)
        self.compressor.eval()

    def train(self, mode: bool = True) -> FrozenEmbedding:
        super().train(mode)
        self.compressor.eval()  # frozen: batch statistics, dropout etc. stay in inference mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Raw data ``(b, *x_shape)`` on the compressor's device -> summaries ``(b, k)``, no gradient."""
        with torch.no_grad():
            return self.compressor._encode(self.compressor._standardize(x))

    def get_config(self) -> dict[str, Any]:
        return {"compressor": self.compressor.config_dict()}


def _compressor_from_config(cfg: dict[str, Any]) -> Compressor:
    module_name, _, qualname = str(cfg.get("class", "")).partition(":")
    if not module_name or not qualname:
        raise ValueError(f"compressor config needs a 'class' like 'package.module:Name', got {cfg.get('class')!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Compressor)):
        raise ValueError(f"{cfg['class']} is not an sbikit Compressor subclass; refusing to build it")
    return obj(**cfg.get("kwargs", {}))


def load_compressor(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Compressor:
    """Load any compressor written by :meth:`Compressor.save`.

    Args:
        path: the file.
        device: where to put it (``"cpu"``, ``"cuda"``, ``"auto"``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an sbikit compressor file.
    """
    payload = load_payload(path, fmt=FORMAT, version=FORMAT_VERSION, what="compressor")
    comp = _compressor_from_config(json.loads(payload["config"]))
    comp.load_state_dict(payload["state_dict"])
    history = json.loads(payload.get("history") or "null")
    if history is not None:
        comp.history = FitResult(
            **{k: v for k, v in history.items() if k in FitResult.__dataclass_fields__}  # type: ignore[attr-defined]
        )
    comp.eval()
    return comp.to_device(device)
