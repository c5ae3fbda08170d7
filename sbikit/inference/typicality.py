"""Fit the typicality check a posterior carries: summaries of the training simulations.

The check (:class:`sbikit.density.misspecification.TypicalityCheck`) rates observations by
the density of a summary: for NPE the flow's embedded context, ``embed(x)`` (the z-scored
``x`` for vector data, also behind an embedding that passes ``x`` through such as
:class:`sbikit.flows.MLPEmbedding`; the embedding network's summaries for images); for
NLE the z-scored ``x``. This module collects those summaries from the training data after training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from sbikit.density.misspecification import (
    _BANK_ROWS,
    _REFERENCE_ROWS,
    ResidualStatistic,
    TypicalityCheck,
    min_simulations,
)
from sbikit.flows import ConditionalFlow
from sbikit.train import StreamingData

__all__ = ["fit_typicality"]

logger = logging.getLogger(__name__)

_ROWS = _BANK_ROWS + _REFERENCE_ROWS
_EMBED_BATCH = 4096


@torch.no_grad()
def _summarize(flow: ConditionalFlow, summarize: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``summarize`` of raw rows ``(n, ...)`` in batches, in eval mode on the flow's device -> CPU ``(n, k)``."""
    was_training = flow.training
    flow.eval()
    dev = flow.y_shift.device
    try:
        out = [summarize(x[i : i + _EMBED_BATCH].to(dev)).float().cpu() for i in range(0, len(x), _EMBED_BATCH)]
    finally:
        flow.train(was_training)
    return torch.cat(out)


def _raw_rows(data: tuple[Tensor, ...] | StreamingData, column: int, rows: int, seed: int | None) -> Tensor:
    """Up to ``rows`` rows of tensor ``column``: a random subset in memory, the first blocks of a stream."""
    if isinstance(data, StreamingData):
        parts: list[Tensor] = []
        have = 0
        for b in range(data.num_blocks):
            x = data.read(b)[column]
            parts.append(x)
            have += len(x)
            if have >= rows:
                break
        return torch.cat(parts)[:rows]
    x = data[column]
    if len(x) <= rows:
        return x
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return x[torch.randperm(len(x), generator=gen)[:rows]]


def fit_typicality(
    flow: ConditionalFlow,
    data: tuple[Tensor, ...] | StreamingData,
    *,
    column: int,
    summarize: Callable[[Tensor], Tensor],
    seed: int | None,
    append_residual: bool = False,
) -> TypicalityCheck | None:
    """A :class:`TypicalityCheck` on summaries of the training simulations, or ``None`` when too few.

    Args:
        flow: the trained flow (run in eval mode, on its device, while summarising).
        data: the training data as given to :func:`sbikit.train.fit`.
        column: which tensor of ``data`` holds the simulations ``x``.
        summarize: raw rows of that tensor ``(b, ...)`` -> summaries ``(b, k)``.
        seed: seed of the row subset and of the bank/reference split.
        append_residual: also fit a :class:`ResidualStatistic` on the raw rows and append
            its value to the summaries (for learned embeddings, which drop e.g. the noise level).
    """
    x = _raw_rows(data, column, _ROWS, seed)
    if len(x) < min_simulations():
        logger.info("%d simulations are too few for a typicality check; check_observation is unavailable", len(x))
        return None
    summaries = _summarize(flow, summarize, x)
    residual = None
    if append_residual:
        residual = ResidualStatistic.fit(x, seed=seed)
        summaries = torch.cat([summaries, residual(x)], dim=1)
    return TypicalityCheck.fit(summaries, seed=seed, residual=residual)
