"""Training data that may live on disk: read into memory below a size limit, streamed above it.

Every model that trains from simulations (the compressors, the emulators) takes numpy
arrays, tensors or arrays on disk (``sbikit.open_store(path).x``, any zarr/h5py array).
:func:`read_or_stream` decides per fit: arrays on disk whose float32 size is at most
``memory_limit_gb`` are read into memory, larger ones stay on disk and are streamed
through :func:`sbikit.train.fit` as a :class:`~sbikit.train.StreamingData`
(:func:`finite_row_stream`), with statistics from one streaming pass
(:func:`stream_moments`).

Arrays read from disk lose the rows that hold NaN or inf in any array (chunks of a store
that are not simulated yet or failed, NaN simulator output), with one warning that counts
them (:func:`warn_dropped`). Data given in memory are never thinned silently: models check
them and raise.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.train import StreamingData, is_out_of_core, running_moments, stream_or_load
from sbikit.utils import as_float_tensor

__all__ = [
    "finite_rows",
    "float32_tensor",
    "warn_dropped",
    "read_or_stream",
    "finite_row_stream",
    "stream_moments",
]


def finite_rows(t: Tensor) -> Tensor:
    """``(n,)`` bool: rows of ``t`` ``(n, ...)`` without NaN or inf."""
    return torch.isfinite(t.reshape(len(t), -1)).all(1)


def float32_tensor(value: Any, name: str) -> Tensor:
    """A float32 CPU tensor; numpy input is cast in place of the float64 detour of ``as_float_tensor``."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    return as_float_tensor(value, name)


def warn_dropped(dropped: int, n: int, names: Sequence[str], *, stacklevel: int) -> None:
    """Warn that ``dropped`` of ``n`` rows were non-finite in ``names``; raise when all of them were.

    Args:
        dropped: rows dropped.
        n: rows in all.
        names: the arrays that were checked (named in the message).
        stacklevel: of the warning, ``1`` being this function.

    Raises:
        ValueError: when every row was dropped.
    """
    if dropped == n:
        raise ValueError(
            f"every one of the {n} rows holds NaN or inf in {' or '.join(names)} (chunks of the store not "
            "simulated yet or failed?); nothing is left to fit"
        )
    warnings.warn(
        f"dropped {dropped} of {n} rows whose {' or '.join(names)} holds NaN or inf "
        "(chunks of the store not simulated yet or failed, or NaN simulator output)",
        stacklevel=stacklevel,
    )


def read_or_stream(
    arrays: dict[str, Any], *, memory_limit_gb: float | None, stacklevel: int = 2
) -> tuple[dict[str, Any], bool]:
    """Decide whether training data are read into memory or streamed from disk.

    Args:
        arrays: ``{name: array}`` of row-aligned arrays ``(n, ...)``, the first one setting
            ``n``; ``None`` values are passed through. Each is numpy, torch, a list, or an
            array on disk.
        memory_limit_gb: arrays on disk whose float32 size (all together) exceeds this are
            streamed; ``0`` always streams, ``None`` always reads them into memory.
        stacklevel: of the dropped-rows warning, ``1`` being this function.

    Returns:
        ``(arrays, streamed)``. Without arrays on disk the inputs come back unchanged and are
        never streamed. Streamed: arrays on disk unchanged, in-memory companions as float32
        numpy. Read into memory: float32 CPU tensors without the rows that hold NaN or inf
        in any array, dropped with a warning that counts them.

    Raises:
        ValueError: when the arrays have different numbers of rows, or every row read into
            memory holds NaN or inf.
    """
    given = {k: v for k, v in arrays.items() if v is not None}
    if not any(is_out_of_core(v) for v in given.values()):
        return arrays, False
    for name, value in given.items():  # lists and the like next to an array on disk
        if not (is_out_of_core(value) or isinstance(value, (np.ndarray, Tensor))):
            given[name] = as_float_tensor(value, name)
    first = next(iter(given))
    n = int(given[first].shape[0])
    for name, value in given.items():
        if int(value.shape[0]) != n:
            raise ValueError(f"{first} and {name} need the same number of rows, got {n} and {int(value.shape[0])}")
    values, streamed = stream_or_load(list(given.values()), memory_limit_gb=memory_limit_gb)
    out = dict(arrays)
    if streamed:
        for name, value in zip(given, values, strict=True):
            out[name] = value if is_out_of_core(value) else as_float_tensor(value, name).numpy()
        return out, True
    tensors = [float32_tensor(v, k) for k, v in zip(given, values, strict=True)]
    ok = torch.ones(n, dtype=torch.bool)
    for t in tensors:
        ok &= finite_rows(t)
    dropped = n - int(ok.sum())
    if dropped:
        warn_dropped(dropped, n, list(given), stacklevel=stacklevel + 1)
        tensors = [t[ok] for t in tensors]
    out.update(zip(given, tensors, strict=True))
    return out, False


def finite_row_stream(
    arrays: Sequence[Any],
    row_shapes: Sequence[tuple[int, ...]],
    *,
    then: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> StreamingData:
    """A :class:`~sbikit.train.StreamingData` of float32 tensors without non-finite rows.

    Args:
        arrays: row-aligned arrays ``(n, ...)`` (on disk, or numpy read by row slices).
        row_shapes: the shape each array's rows are reshaped to (``(b, *row_shape)``).
        then: applied to the finite tensors of each block (e.g. standardisation).

    Returns:
        The stream; a block is ``[t_1 (b, *row_shape_1), ...]`` with the same rows dropped
        from every tensor (those holding NaN or inf in any of them).
    """
    shapes = [tuple(int(s) for s in rs) for rs in row_shapes]

    def transform(raw: list[np.ndarray]) -> list[Tensor]:
        ts = [
            torch.as_tensor(np.asarray(r, dtype=np.float32)).reshape(-1, *rs) for r, rs in zip(raw, shapes, strict=True)
        ]
        ok = finite_rows(ts[0])
        for t in ts[1:]:
            ok &= finite_rows(t)
        if not bool(ok.all()):
            ts = [t[ok] for t in ts]
        return then(ts) if then is not None else ts

    return StreamingData(list(arrays), transform=transform)


def stream_moments(
    data: StreamingData,
    names: Sequence[str],
    *,
    pooled: Sequence[bool],
    unit: str = "data sets",
    stacklevel: int = 2,
) -> list[tuple[Tensor, Tensor, int]]:
    """One pass of :func:`~sbikit.train.running_moments` over ``data``, warning with the rows dropped.

    Args:
        data: the stream (its transform drops non-finite rows).
        names: names of its tensors (for the messages).
        pooled: per tensor, one mean and scale over all entries instead of per feature.
        unit: what a row is called in the error message.
        stacklevel: of the dropped-rows warning, ``1`` being this function.

    Returns:
        Per tensor ``(mean, std, rows kept)`` in float64: pooled over all entries
        (shape ``()``) or per feature.

    Raises:
        ValueError: when fewer than 2 rows are finite.
    """
    try:
        moments = running_moments(data, global_entries=list(pooled))
    except ValueError as err:
        if "every row was dropped" not in str(err):
            raise
        moments = []  # no row at all is finite
    kept = moments[0][2] if moments else 0
    if kept < data.num_rows:
        warn_dropped(data.num_rows - kept, data.num_rows, names, stacklevel=stacklevel + 1)
    if kept < 2:
        raise ValueError(f"fit needs at least 2 {unit} with finite values, got {kept} of {data.num_rows}")
    return moments
