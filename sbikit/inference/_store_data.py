"""Training pairs from a simulation store: read into memory, or streamed when they are too large.

Used by :class:`~sbikit.NPE` and :class:`~sbikit.NLE` when ``theta``/``x`` are arrays on
disk (``sbikit.open_store(path).theta`` / ``.x``). Rows of chunks that are not simulated yet
(NaN ``theta``) are skipped, and rows whose ``x`` holds NaN or inf (failed chunks, simulator
NaN output) are dropped, both with a warning that counts them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.flows import ConditionalFlow
from sbikit.train import StreamingData, is_out_of_core, running_moments, stream_or_load

__all__ = ["training_inputs", "pair_stream", "standardize_from_stream", "standardize"]

PairFn = Callable[[Tensor, Tensor], list[Tensor]]


def training_inputs(theta: Any, x: Any, *, memory_limit_gb: float | None, stacklevel: int = 3) -> tuple[Any, Any, bool]:
    """``(theta, x, streamed)``: arrays on disk read into numpy unless they exceed ``memory_limit_gb``.

    In-memory inputs come back unchanged. Arrays read from disk lose the rows of chunks
    that were never simulated (all-NaN ``theta``), with a warning.
    """
    from_disk = is_out_of_core(theta) or is_out_of_core(x)
    (th, xx), streamed = stream_or_load([theta, x], memory_limit_gb=memory_limit_gb)
    if from_disk and not streamed:
        th = np.asarray(th, dtype=np.float32)
        pending = ~np.isfinite(th.reshape(len(th), -1)).any(1)
        if pending.any():
            warnings.warn(
                f"skipped {int(pending.sum())} of {len(th)} rows that are not simulated yet "
                "(pending chunks of the store; rerun sbikit.simulate to complete it)",
                stacklevel=stacklevel,
            )
            th, xx = th[~pending], np.asarray(xx)[~pending]
    return th, xx, streamed


def pair_stream(prior: Any, theta: Any, x: Any, make: PairFn) -> tuple[StreamingData, tuple[int, ...]]:
    """A :class:`StreamingData` of training tensors from arrays ``theta`` ``(n, d)``, ``x`` ``(n, *x_shape)``.

    Each block is checked like :func:`sbikit.utils.prepare_training_pairs`: rows with
    non-finite ``theta`` or ``x`` are dropped, the rest must lie in the prior support; then
    ``make(theta, x)`` builds the tensors for the loss.

    Returns:
        The stream and ``x_shape``.

    Raises:
        ValueError: on a wrong ``theta`` width or mismatched rows.
    """
    th_shape, x_shape = tuple(theta.shape), tuple(x.shape)
    if len(th_shape) == 1 and prior.dim == 1:
        th_cols = 1
    elif len(th_shape) == 2 and th_shape[1] == prior.dim:
        th_cols = prior.dim
    else:
        raise ValueError(f"theta must have shape (n, {prior.dim}) for this prior, got {th_shape}")
    if x_shape[0] != th_shape[0]:
        raise ValueError(f"theta and x need the same number of rows, got {th_shape[0]} and {x_shape[0]}")
    one_x = x_shape[1:] if len(x_shape) > 1 else (1,)

    def transform(raw: list[np.ndarray]) -> list[Tensor]:
        th = torch.as_tensor(np.asarray(raw[0], dtype=np.float32)).reshape(-1, th_cols)
        xt = torch.as_tensor(np.asarray(raw[1], dtype=np.float32)).reshape(-1, *one_x)
        ok = torch.isfinite(th).all(1) & torch.isfinite(xt.reshape(len(xt), -1)).all(1)
        th, xt = th[ok], xt[ok]
        if len(th):
            prior.check_support(th)
        return make(th, xt)

    return StreamingData([theta, x], transform=transform), one_x


def _safe(std: Tensor, min_scale: float = 1e-8) -> Tensor:
    return torch.where(std > min_scale, std, torch.ones_like(std))


def standardize_from_stream(flow: ConditionalFlow, data: StreamingData, *, stacklevel: int = 3) -> int:
    """Set the flow's z-scoring from one streaming pass over ``data`` (tensors ``(y, context)``).

    Matches :meth:`ConditionalFlow.set_standardization`: ``y`` per feature; a vector
    context per entry, a multi-dimensional one (images) by one pooled mean and scale.
    Warns with the number of rows dropped as non-finite.

    Returns:
        The number of rows kept.
    """
    pooled = len(flow.context_shape) > 1
    (y_mean, y_std, kept), (c_mean, c_std, _) = running_moments(data, global_entries=[False, pooled])
    with torch.no_grad():
        flow.y_shift.copy_(y_mean.float())
        flow.y_scale.copy_(_safe(y_std).float())
        if pooled:
            flow.c_shift.fill_(float(c_mean))
            flow.c_scale.fill_(float(_safe(c_std)))
        else:
            flow.c_shift.copy_(c_mean.float().reshape(flow.c_shift.shape))
            flow.c_scale.copy_(_safe(c_std).float().reshape(flow.c_scale.shape))
    dropped = data.num_rows - kept
    if kept == 0:
        raise ValueError("every row of the store holds NaN or inf (or is not simulated yet); nothing to train on")
    if dropped:
        warnings.warn(
            f"dropped {dropped} of {data.num_rows} rows whose theta or x holds NaN or inf "
            "(chunks not simulated or failed, or NaN simulator output)",
            stacklevel=stacklevel,
        )
    return kept


def standardize(flow: ConditionalFlow, data: tuple[Tensor, ...] | StreamingData) -> int:
    """Set the flow's z-scoring from in-memory tensors ``(y, context)`` or a stream of them.

    Returns:
        The number of training rows (after dropping non-finite streamed rows, with a warning
        that points at the user's ``fit`` call).
    """
    if isinstance(data, StreamingData):
        return standardize_from_stream(flow, data, stacklevel=4)
    flow.set_standardization(*data)
    return len(data[0])
