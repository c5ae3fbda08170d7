"""The one training loop every trainable model in sbikit uses.

:func:`fit` minimises ``loss_fn(model, *batch)`` over mini-batches of in-memory tensors,
holds out a validation split, stops early when the validation loss has not improved for
``patience`` epochs, halves the learning rate on plateaus, and restores the weights of the
best validation epoch. The data are moved to the device once and batches are taken by
indexing, which keeps the per-step overhead small.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbikit.priors import make_generator

__all__ = ["FitResult", "fit", "default_batch_size"]

logger = logging.getLogger(__name__)

LossFn = Callable[..., Tensor]


@dataclass
class FitResult:
    """What happened during :func:`fit`.

    Attributes:
        train_loss: mean training loss per epoch.
        val_loss: validation loss per epoch.
        learning_rate: learning rate used in each epoch.
        best_epoch: index (0-based) of the epoch whose weights were restored.
        epochs: number of epochs run.
        train_time: wall time in seconds.
        stopped_early: whether early stopping ended training before ``max_epochs``.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = -1
    epochs: int = 0
    train_time: float = 0.0
    stopped_early: bool = False

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch] if self.val_loss else math.nan

    def to_dict(self) -> dict[str, object]:
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "learning_rate": self.learning_rate,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "train_time": self.train_time,
            "stopped_early": self.stopped_early,
            "best_val_loss": self.best_val_loss,
        }


def default_batch_size(num_train: int) -> int:
    """Batches of 128, smaller for small data so an epoch has at least ~16 steps (min 32).

    What limits the accuracy of small flows on simulation budgets of 10^3 to 10^5 is the
    number of optimiser steps, and a step costs mostly per-operation overhead (a batch of
    128 takes about 2/3 of the time of one of 512). On two_moons with 10^4 simulations,
    batches of 128 instead of 512 reached a validation loss of -0.57 instead of -0.24 nats
    and a C2ST of 0.63 instead of 0.69 for 1.3x the wall time (see docs/defaults.md).
    """
    return int(max(32, min(128, num_train // 16)))


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor],
    *,
    seed: int | None = None,
    batch_size: int | None = None,
    learning_rate: float = 1e-3,
    max_epochs: int = 1000,
    validation_fraction: float = 0.1,
    patience: int = 20,
    min_delta: float = 1e-3,
    lr_patience: int | None = None,
    lr_factor: float = 0.5,
    min_learning_rate: float = 1e-5,
    clip_norm: float | None = 5.0,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    num_threads: int | None = None,
    progress: bool = True,
    description: str = "training",
) -> FitResult:
    """Train ``model`` in place by minimising ``loss_fn(model, *batch)``.

    Args:
        model: the module to train; it is moved to ``device``.
        loss_fn: returns the mean loss (a scalar tensor) of a batch; called as
            ``loss_fn(model, t1[idx], t2[idx], ...)`` for the tensors in ``data``.
        data: tensors with a common first dimension ``n``.
        seed: seeds the validation split, the batch order and nothing else.
        batch_size: rows per step; ``None`` picks :func:`default_batch_size`.
        learning_rate: Adam's initial learning rate.
        max_epochs: hard cap on epochs.
        validation_fraction: share of rows held out for early stopping, in (0, 1).
        patience: epochs without a better validation loss before stopping.
        min_delta: an epoch counts as better only when it lowers the best validation loss
            by more than this (in loss units, nats for flows); this stops the long tail of
            negligible gains at a tiny learning rate.
        lr_patience: epochs without improvement before the learning rate is multiplied
            by ``lr_factor``; ``None`` means ``max(2, patience // 3)``.
        lr_factor: learning-rate decay factor on plateaus.
        min_learning_rate: floor of the learning rate.
        clip_norm: gradient norm clipping threshold (``None`` turns it off).
        weight_decay: AdamW weight decay.
        device: where to train.
        num_threads: CPU threads torch may use while training (restored afterwards).
            ``None`` picks 1 for models under a million parameters: such small steps
            gain nothing from a second thread on a quiet machine and run many times
            slower when the cores are shared (thread oversubscription); larger models
            keep torch's setting.
        progress: show a tqdm progress bar.
        description: label of the progress bar.

    Returns:
        A :class:`FitResult`; ``model`` holds the weights of the best validation epoch.
    """
    if not data:
        raise ValueError("fit needs at least one data tensor")
    n = int(data[0].shape[0])
    for t in data:
        if int(t.shape[0]) != n:
            raise ValueError(f"all data tensors need the same number of rows; got {[tuple(t.shape) for t in data]}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n_val = max(1, int(round(n * validation_fraction)))
    n_train = n - n_val
    if n_train < 1:
        raise ValueError(
            f"no training rows are left: n={n} rows with validation_fraction={validation_fraction} "
            f"puts {n_val} in validation; simulate more or lower validation_fraction"
        )
    if patience < 1 or max_epochs < 1:
        raise ValueError("patience and max_epochs must be >= 1")

    device = torch.device(device)
    if num_threads is None and device.type == "cpu":
        num_threads = 1 if sum(p.numel() for p in model.parameters()) < 1_000_000 else None
    with _torch_threads(num_threads):
        gen = make_generator(seed)
        perm = torch.randperm(n, generator=gen)
        data = [t.to(device) for t in data]
        train_idx, val_idx = perm[n_val:].to(device), perm[:n_val].to(device)
        train_data = [t[train_idx] for t in data]
        val_data = [t[val_idx] for t in data]
        del data
        bs = default_batch_size(n_train) if batch_size is None else int(batch_size)
        bs = max(1, min(bs, n_train))
        lr_patience = max(2, patience // 3) if lr_patience is None else lr_patience

        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        opt = _adamw(params, learning_rate, weight_decay)

        result = FitResult()
        best = math.inf
        best_state = copy.deepcopy(model.state_dict())
        since_best = 0
        since_lr = 0
        start = time.perf_counter()
        bar = tqdm(range(max_epochs), desc=description, disable=not progress, leave=False, dynamic_ncols=True)
        for epoch in bar:
            model.train()
            order = torch.randperm(n_train, generator=gen).to(device)
            total = torch.zeros((), device=device)
            for i in range(0, n_train, bs):
                idx = order[i : i + bs]
                loss = loss_fn(model, *(t[idx] for t in train_data))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm is not None:
                    nn.utils.clip_grad_norm_(params, clip_norm)
                opt.step()
                total += loss.detach() * len(idx)
            train_loss = float(total) / n_train
            val_loss = evaluate(model, loss_fn, val_data, batch_size=max(bs, 4096))
            lr = opt.param_groups[0]["lr"]
            result.train_loss.append(train_loss)
            result.val_loss.append(val_loss)
            result.learning_rate.append(lr)
            result.epochs = epoch + 1
            if not math.isfinite(train_loss):
                logger.warning(
                    "training loss became %s at epoch %d; keeping the best weights so far", train_loss, epoch
                )
                break
            improved = val_loss < best - min_delta
            if val_loss < best:
                # Any gain yields the best weights; only a gain above min_delta renews patience.
                best, result.best_epoch = val_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
            if improved:
                since_best = since_lr = 0
            else:
                since_best += 1
                since_lr += 1
            if since_lr >= lr_patience and lr > min_learning_rate:
                for group in opt.param_groups:
                    group["lr"] = max(min_learning_rate, group["lr"] * lr_factor)
                since_lr = 0
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{best:.4f}", refresh=False)
            if since_best >= patience:
                result.stopped_early = True
                break
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
        result.train_time = time.perf_counter() - start
        logger.info(
            "%s: %d epochs in %.1f s, best validation loss %.4f at epoch %d",
            description,
            result.epochs,
            result.train_time,
            best,
            result.best_epoch,
        )
        return result


def _adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where torch supports it.

    The flows trained here are small, so a step is dominated by per-operation overhead; the
    fused update replaces ~10 small operations per parameter tensor by one call and made a
    MAF step on 2 parameters ~25% faster on a CPU core. Falls back to the default
    implementation where fusing is unavailable (e.g. float64 on old torch versions).
    """
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Let torch use ``num_threads`` CPU threads inside the block (``None``: leave as is)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, data: Sequence[Tensor], *, batch_size: int = 4096) -> float:
    """Mean of ``loss_fn`` over ``data`` in evaluation mode (weighted by batch size)."""
    model.eval()
    n = int(data[0].shape[0])
    total = 0.0
    for i in range(0, n, batch_size):
        chunk = [t[i : i + batch_size] for t in data]
        total += float(loss_fn(model, *chunk)) * int(chunk[0].shape[0])
    return total / n
