"""Fit the typicality check a posterior carries: summaries of training simulations, embedded.

The check (:class:`sbikit.density.misspecification.TypicalityCheck`) rates observations by
the density of the flow's embedded context, ``embed(x)``: the z-scored ``x`` for vector
data, the embedding network's summaries for images. This module collects those summaries
from the training data after training.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from sbikit.density.misspecification import _BANK_ROWS, _REFERENCE_ROWS, TypicalityCheck, min_simulations
from sbikit.flows import ConditionalFlow
from sbikit.train import StreamingData

__all__ = ["fit_typicality"]

logger = logging.getLogger(__name__)

_ROWS = _BANK_ROWS + _REFERENCE_ROWS
_EMBED_BATCH = 4096


@torch.no_grad()
def embedded_summaries(flow: ConditionalFlow, x: Tensor) -> Tensor:
    """``flow.embed`` of raw contexts ``(n, *x_shape)`` in batches, on the flow's device -> CPU ``(n, k)``."""
    was_training = flow.training
    flow.eval()
    dev = flow.y_shift.device
    try:
        out = [flow.embed(x[i : i + _EMBED_BATCH].to(dev)).float().cpu() for i in range(0, len(x), _EMBED_BATCH)]
    finally:
        flow.train(was_training)
    return torch.cat(out) if out else torch.empty(0, flow.config.context_features)


def _raw_contexts(data: tuple[Tensor, ...] | StreamingData, rows: int, seed: int | None) -> Tensor:
    """Up to ``rows`` raw contexts: a random subset in memory, the first blocks of a stream."""
    if isinstance(data, StreamingData):
        parts: list[Tensor] = []
        have = 0
        for b in range(data.num_blocks):
            x = data.read(b)[-1]
            parts.append(x)
            have += len(x)
            if have >= rows:
                break
        return torch.cat(parts)[:rows]
    x = data[-1]
    if len(x) <= rows:
        return x
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return x[torch.randperm(len(x), generator=gen)[:rows]]


def fit_typicality(
    flow: ConditionalFlow, data: tuple[Tensor, ...] | StreamingData, *, seed: int | None
) -> TypicalityCheck | None:
    """A :class:`TypicalityCheck` on the embedded training contexts, or ``None`` when too few.

    Args:
        flow: the trained flow (its ``embed`` defines the summaries).
        data: the training data as given to :func:`sbikit.train.fit` (contexts last).
        seed: seed of the row subset and of the bank/reference split.
    """
    x = _raw_contexts(data, _ROWS, seed)
    if len(x) < min_simulations():
        logger.info("%d simulations are too few for a typicality check; check_observation is unavailable", len(x))
        return None
    return TypicalityCheck.fit(embedded_summaries(flow, x), seed=seed)
