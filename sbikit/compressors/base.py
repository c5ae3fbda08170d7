"""The interface every compressor shares, saving/loading, and the frozen embedding for NPE.

A compressor maps data ``x`` of shape ``(n, *x_shape)`` (images ``(n, H, W)`` or
``(n, C, H, W)``) to summaries ``(n, k)``. It is an ``nn.Module`` whose architecture is
rebuilt from :meth:`Compressor.get_config` (JSON-able keyword arguments) and whose fitted
state (weights, standardisation, ``fitted`` flag) lives in its ``state_dict``. Files are a
``torch.save`` dict of that state dict and a JSON config, read back with
``weights_only=True``: loading never runs code from the file, and the class is named by
its import path and must be a :class:`Compressor` subclass.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbikit.train import FitResult, fit
from sbikit.utils import as_float_tensor, resolve_device

__all__ = ["Compressor", "FrozenEmbedding", "load_compressor", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "sbikit-compressor"
FORMAT_VERSION = 1

# Rows encoded at once (bounds memory for large data sets).
_ENCODE_CHUNK = 4096


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
    def _check_x(self, x: Any, name: str = "x") -> tuple[Tensor, bool]:
        """Validate ``x`` -> float32 CPU ``(n, *x_shape)`` and whether a single data set was given."""
        xt = as_float_tensor(x, name)
        if self.x_shape is None:
            if xt.ndim < 2:
                raise ValueError(f"{name} must have shape (n, *x_shape) with n data sets, got {tuple(xt.shape)}")
            return xt, False
        single = tuple(xt.shape) == self.x_shape
        if single:
            xt = xt[None]
        elif tuple(xt.shape[1:]) != self.x_shape:
            raise ValueError(
                f"{name} must have shape (n, {', '.join(map(str, self.x_shape))}) or {_shape_text(self.x_shape)} "
                f"for this {type(self).__name__}, got {tuple(xt.shape)}"
            )
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
        return xt

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
        xt, single = self._check_x(x)
        was_training = self.training
        self.eval()
        try:
            out = torch.cat(
                [
                    self._encode(self._standardize(xt[i : i + _ENCODE_CHUNK].to(self.device))).cpu()
                    for i in range(0, len(xt), _ENCODE_CHUNK)
                ]
            )
        finally:
            self.train(was_training)
        return out[0] if single else out

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
        path = Path(path)
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config_dict()),
            "history": json.dumps(self.history.to_dict() if self.history is not None else None),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

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
        data: tuple[Tensor, ...],
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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no compressor file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or hostile files
        raise ValueError(
            f"{path} is not an sbikit compressor file (it could not be read as weights only: {type(err).__name__})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sbikit compressor file")
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer sbikit (format version {payload['version']})")
    comp = _compressor_from_config(json.loads(payload["config"]))
    comp.load_state_dict(payload["state_dict"])
    history = json.loads(payload.get("history") or "null")
    if history is not None:
        comp.history = FitResult(
            **{k: v for k, v in history.items() if k in FitResult.__dataclass_fields__}  # type: ignore[attr-defined]
        )
    comp.eval()
    return comp.to_device(device)
