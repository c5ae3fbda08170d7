"""Small shared helpers: devices, tensor conversion, input validation."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "resolve_device",
    "as_float_tensor",
    "drop_nonfinite_rows",
    "check_x_shape",
    "prepare_training_pairs",
    "save_payload",
    "load_payload",
]

logger = logging.getLogger("sbikit")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto"``/``None``/``"cpu"``/``"cuda"``/``"cuda:1"`` into a ``torch.device``.

    ``"auto"`` (and ``None``) pick CUDA when it is available, the CPU otherwise.
    Asking for CUDA on a machine without it raises a ``ValueError`` saying so.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def as_float_tensor(value: Any, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Convert a numpy array, list or tensor to a CPU float tensor, naming ``name`` on failure."""
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=dtype)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numpy array or torch tensor of numbers, got {type(value).__name__}") from err
    return torch.as_tensor(arr, dtype=dtype)


def drop_nonfinite_rows(theta: Tensor, x: Tensor, *, stacklevel: int = 2) -> tuple[Tensor, Tensor]:
    """Remove pairs whose ``x`` holds NaN or inf, warning with the count.

    Args:
        theta: ``(n, d)``; must itself be finite.
        x: ``(n, *x_shape)``.
        stacklevel: passed to ``warnings.warn`` (2 points at this function's caller) so the
            warning points at the user's call.

    Returns:
        ``(theta, x)`` restricted to rows where ``x`` is finite.

    Raises:
        ValueError: if ``theta`` holds NaN/inf, or no finite row of ``x`` is left.
    """
    if not bool(torch.isfinite(theta).all()):
        bad = (~torch.isfinite(theta).reshape(len(theta), -1).all(1)).sum().item()
        raise ValueError(f"theta has {bad} row(s) with NaN or inf; parameters must be finite")
    ok = torch.isfinite(x.reshape(len(x), -1)).all(1)
    n_bad = int((~ok).sum())
    if n_bad == len(x):
        raise ValueError(
            f"all {len(x)} simulations in x contain NaN or inf; nothing is left to train on. "
            "Check the simulator for failures at these parameters."
        )
    if n_bad:
        warnings.warn(f"dropped {n_bad} of {len(x)} simulations whose x holds NaN or inf", stacklevel=stacklevel)
        theta, x = theta[ok], x[ok]
    return theta, x


def check_x_shape(x: Tensor, x_shape: tuple[int, ...], name: str = "x") -> bool:
    """Check ``x`` is one observation ``x_shape`` or a batch ``(m, *x_shape)``.

    Returns:
        True when ``x`` is a batch, False when it is a single observation.

    Raises:
        ValueError: naming the expected shape.
    """
    shape = tuple(x.shape)
    if shape == tuple(x_shape):
        return False
    if len(shape) == len(x_shape) + 1 and shape[1:] == tuple(x_shape):
        return True
    raise ValueError(
        f"{name} must have shape {tuple(x_shape)} (one observation) or (m, {', '.join(map(str, x_shape))}) "
        f"(a batch), got {shape}"
    )


def prepare_training_pairs(prior: Any, theta: Any, x: Any, *, stacklevel: int = 3) -> tuple[Tensor, Tensor]:
    """Validate simulated pairs for training: shapes, finiteness, prior support.

    Args:
        prior: an sbikit prior (``dim``, ``check_support``).
        theta: ``(n, d)`` (``(n,)`` for a one-parameter prior), numpy or torch.
        x: ``(n, *x_shape)`` (``(n,)`` is read as ``(n, 1)``).
        stacklevel: ``warnings.warn`` stack level of the dropped-rows warning, counted from
            this function (3 points at the caller of the caller, e.g. the user's ``fit``).

    Returns:
        ``(theta, x)`` as float32 CPU tensors without the rows whose ``x`` holds NaN or inf.

    Raises:
        ValueError: on a wrong shape, mismatched rows, non-finite theta, no finite row
            left, or theta outside the prior support (the message names the bounds).
    """
    th = as_float_tensor(theta, "theta")
    xt = as_float_tensor(x, "x")
    if th.ndim == 1 and prior.dim == 1:
        th = th[:, None]
    if th.ndim != 2 or th.shape[1] != prior.dim:
        raise ValueError(f"theta must have shape (n, {prior.dim}) for this prior, got {tuple(th.shape)}")
    if xt.ndim == 1:
        xt = xt[:, None]
    if len(xt) != len(th):
        raise ValueError(f"theta and x need the same number of rows, got {len(th)} and {len(xt)}")
    th, xt = drop_nonfinite_rows(th, xt, stacklevel=stacklevel + 1)
    prior.check_support(th)
    return th, xt


# -- model files ------------------------------------------------------------------------------------
def save_payload(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``payload`` atomically: a temporary file in the same folder, then a rename.

    An interrupted save leaves the old file (or none), never a torn one. The file gets the
    usual read permissions (mkstemp's files are private).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
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


def load_payload(path: str | os.PathLike[str], *, fmt: str, version: int, what: str) -> dict[str, Any]:
    """Read a file written by :func:`save_payload` as weights only, checking its format tag and version.

    Args:
        path: the file.
        fmt: the expected ``payload["format"]``.
        version: the newest format version this sbikit reads.
        what: the kind of file, for messages (``"posterior"``, ``"compressor"``...).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file cannot be read as weights only, is not of format ``fmt``,
            or was written by a newer sbikit.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or hostile files
        raise ValueError(
            f"{path} is not an sbikit {what} file (it could not be read as weights only: "
            f"{type(err).__name__}); sbikit never unpickles code from a file"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not an sbikit {what} file")
    if int(payload.get("version", 0)) > version:
        raise ValueError(f"{path} was written by a newer sbikit (format version {payload['version']})")
    return payload
