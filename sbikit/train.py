"""The one training loop every trainable model in sbikit uses.

:func:`fit` minimises ``loss_fn(model, *batch)`` over mini-batches, holds out a validation
split, stops early when the validation loss has not improved for ``patience`` epochs,
halves the learning rate on plateaus, and restores the weights of the best validation
epoch. In-memory tensors are moved to the device once and batches are taken by indexing,
which keeps the per-step overhead small. Data that do not fit in memory (a simulation
store) come as a :class:`StreamingData` and are read in shuffled buffers of blocks. With
``checkpoint=`` every epoch is saved atomically and ``resume=True`` continues a killed run.
Any model trained with :func:`fit` (estimators, compressors, emulators) gets both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbikit.priors import make_generator

__all__ = [
    "FitResult",
    "OverfitRule",
    "fit",
    "default_batch_size",
    "cosine_learning_rate",
    "StreamingData",
    "running_moments",
    "evaluate",
    "SCHEDULES",
]

logger = logging.getLogger(__name__)

LossFn = Callable[..., Tensor]
#: Learning-rate schedules of :func:`fit`.
SCHEDULES: tuple[str, ...] = ("plateau", "cosine")


def cosine_learning_rate(
    progress: float,
    total_epochs: int,
    learning_rate: float,
    *,
    min_learning_rate: float = 0.0,
    warmup_epochs: float = 0.0,
) -> float:
    """Learning rate after ``progress`` epochs of a warm-up + half-cosine schedule.

    Linear from 0 (floored at 1e-3 of the peak, so that the first step moves) up to
    ``learning_rate`` during the first ``warmup_epochs``, then
    ``min + (lr - min) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 over the
    remaining epochs; ``min_learning_rate`` from ``total_epochs`` on.

    Args:
        progress: epochs done, fractional within an epoch (``epoch + step / steps_per_epoch``).
        total_epochs: length of the schedule.
        learning_rate: the peak rate.
        min_learning_rate: the rate at the end.
        warmup_epochs: length of the warm-up.

    Returns:
        The learning rate.
    """
    if progress < warmup_epochs:
        return learning_rate * max(progress, 1e-3 * warmup_epochs) / warmup_epochs
    t = min(1.0, (progress - warmup_epochs) / max(total_epochs - warmup_epochs, 1e-12))
    return min_learning_rate + (learning_rate - min_learning_rate) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class OverfitRule:
    """Regularise a run once it overfits: restore the best weights and switch weight decay on.

    The rule fires once, after an epoch in which the validation loss has not improved (by
    ``min_delta``) for ``patience`` epochs while the training loss is below its value at the
    best epoch (the network still fits the training rows better, the held-out ones not).
    Training then continues from the best weights with AdamW weight decay
    ``weight_decay``; with ``restart_epochs`` the learning rate follows a new half cosine of
    that many epochs, peaking at ``restart_factor`` times the rate the schedule had reached,
    and training ends with it. Runs that never stall (validation loss still falling) never
    fire it and are unchanged.

    Attributes:
        patience: epochs without a better validation loss that fire the rule.
        weight_decay: AdamW weight decay from then on.
        restart_epochs: length of the restarted cosine; ``None`` continues the schedule.
        restart_factor: peak of the restarted cosine relative to the rate at the trigger.
    """

    patience: int = 3
    weight_decay: float = 1.0
    restart_epochs: int | None = None
    restart_factor: float = 1.0


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
        regularized_from: first epoch (0-based) trained under an :class:`OverfitRule`'s
            weight decay, ``None`` when the rule never fired (or none was given).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = -1
    epochs: int = 0
    train_time: float = 0.0
    stopped_early: bool = False
    regularized_from: int | None = None

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
            "regularized_from": self.regularized_from,
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
    data: Sequence[Tensor] | StreamingData,
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
    schedule: str = "plateau",
    warmup_epochs: float = 0.0,
    clip_norm: float | None = 5.0,
    weight_decay: float = 0.0,
    on_overfit: OverfitRule | None = None,
    ema_decay: float | None = None,
    device: torch.device | str = "cpu",
    num_threads: int | None = None,
    progress: bool = True,
    description: str = "training",
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` in place by minimising ``loss_fn(model, *batch)``.

    Args:
        model: the module to train; it is moved to ``device``.
        loss_fn: returns the mean loss (a scalar tensor) of a batch; called as
            ``loss_fn(model, t1[idx], t2[idx], ...)`` for the tensors in ``data``.
        data: tensors with a common first dimension ``n``, moved to ``device`` once; or a
            :class:`StreamingData` for data that stay on disk (read in shuffled buffers of
            blocks, copied to the device per buffer through pinned memory on CUDA).
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
        schedule: ``"plateau"``: multiply the rate by ``lr_factor`` after ``lr_patience``
            epochs without a gain; ``"cosine"``: raise it linearly from 0 over
            ``warmup_epochs``, then lower it along a half cosine to ``min_learning_rate`` at
            ``max_epochs``, updated every step (``max_epochs`` is then the training budget;
            early stopping still applies and the best validation weights are restored).
        warmup_epochs: length of the linear warm-up (``"cosine"`` only; fractions allowed).
        clip_norm: gradient norm clipping threshold (``None`` turns it off).
        weight_decay: AdamW weight decay.
        on_overfit: an :class:`OverfitRule`: once the validation loss stalls while the
            training loss still falls, continue from the best weights with weight decay.
        ema_decay: keep an exponential moving average of the weights (Polyak averaging,
            updated after every step with this decay per step) and use it in place of the
            weights for validation, early stopping and the returned model (``val_loss`` is
            then the average's); ``None``: off.
        device: where to train.
        num_threads: CPU threads torch may use while training (restored afterwards).
            ``None`` picks 1 for models under a million parameters: such small steps
            gain nothing from a second thread on a quiet machine and run many times
            slower when the cores are shared (thread oversubscription); larger models
            keep torch's setting.
        progress: show a tqdm progress bar.
        description: label of the progress bar.
        checkpoint: file written (atomically) after every epoch with everything needed to
            continue: weights, optimiser, random generator states, epoch, best weights,
            patience counters and the history so far.
        resume: continue from ``checkpoint`` when it exists (from scratch when it does not
            yet); with the same data and settings the result equals that of an
            uninterrupted run. ``max_epochs`` may be raised to train a finished run on (with
            the plateau schedule; a cosine schedule is fixed by ``max_epochs``); a run that
            stopped early returns at once. Other changed settings raise.

    Returns:
        A :class:`FitResult`; ``model`` holds the weights of the best validation epoch.

    Raises:
        ValueError: on mismatched rows, bad fractions or counts, or a checkpoint of a
            different run (the message lists what differs).
    """
    streaming = isinstance(data, StreamingData)
    if not streaming and not data:
        raise ValueError("fit needs at least one data tensor")
    n = data.num_rows if streaming else int(data[0].shape[0])
    if not streaming:
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
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= warmup_epochs < max_epochs:
        raise ValueError(f"warmup_epochs must be in [0, max_epochs={max_epochs}), got {warmup_epochs}")

    device = torch.device(device)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    saved = _load_checkpoint(ckpt_path, resume)
    if saved is not None and seed is None:
        seed = int(saved["seed"])  # the split and batch order of the interrupted run
    elif ckpt_path is not None and seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)  # recorded for resuming
    if num_threads is None and device.type == "cpu":
        num_threads = 1 if sum(p.numel() for p in model.parameters()) < 1_000_000 else None
    with _torch_threads(num_threads):
        gen = make_generator(seed)
        bs = default_batch_size(n_train) if batch_size is None else int(batch_size)
        bs = max(1, min(bs, n_train))
        source: _InMemory | _Streamed
        if streaming:
            source = _Streamed(data, n_val, gen, device)
        else:
            source = _InMemory(data, n_val, gen, device, checksum=ckpt_path is not None)
        del data
        lr_patience = max(2, patience // 3) if lr_patience is None else lr_patience

        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        opt = _adamw(params, learning_rate, weight_decay)

        fingerprint = {
            "num_rows": n,
            "num_validation": n_val,
            "batch_size": bs,
            "seed": seed,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "patience": patience,
            "min_delta": min_delta,
            "lr_patience": lr_patience,
            "lr_factor": lr_factor,
            "min_learning_rate": min_learning_rate,
            "schedule": schedule,
            "warmup_epochs": warmup_epochs,
            "max_epochs": max_epochs if schedule == "cosine" else None,
            "clip_norm": clip_norm,
            "on_overfit": None if on_overfit is None else list(dataclasses.astuple(on_overfit)),
            "ema_decay": ema_decay,
            "data": source.describe(),
            "parameters": [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()],
        }
        result = FitResult()
        best = math.inf
        best_state = copy.deepcopy(model.state_dict())
        since_best = 0
        since_lr = 0
        start_epoch = 0
        finished = False
        previous_time = 0.0
        ema = copy.deepcopy(model) if ema_decay is not None else None
        if saved is not None:
            _check_fingerprint(saved["fingerprint"], fingerprint, ckpt_path)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            if device.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
            best, best_state = float(saved["best"]), saved["best_state"]
            since_best, since_lr = int(saved["since_best"]), int(saved["since_lr"])
            start_epoch, finished = int(saved["epoch"]), bool(saved["finished"])
            result = FitResult(**saved["result"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            previous_time = result.train_time
            logger.info("%s: resuming from %s after epoch %d", description, ckpt_path, start_epoch)
        start = time.perf_counter()
        bar = tqdm(
            total=max_epochs,
            initial=min(start_epoch, max_epochs),
            desc=description,
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        steps_per_epoch = max(1, math.ceil(n_train / bs))  # positions the cosine schedule within an epoch
        # Validation batches: up to 4096 rows, but at most 2**21 input elements (8 MiB of float32;
        # 512 rows of 64 x 64 images), so that network activations do not outgrow streamed data.
        val_bs = max(bs, min(4096, _VALIDATION_ELEMENTS // max(1, source.row_elements())))

        def rate_at(progress: float) -> float:
            """The cosine schedule's rate after ``progress`` epochs (restarted once the rule fired)."""
            base = cosine_learning_rate(
                progress, max_epochs, learning_rate, min_learning_rate=min_learning_rate, warmup_epochs=warmup_epochs
            )
            start_r = result.regularized_from
            if on_overfit is None or on_overfit.restart_epochs is None or start_r is None or progress < start_r:
                return base
            peak = on_overfit.restart_factor * cosine_learning_rate(
                start_r, max_epochs, learning_rate, min_learning_rate=min_learning_rate, warmup_epochs=warmup_epochs
            )
            return cosine_learning_rate(
                progress - start_r, on_overfit.restart_epochs, peak, min_learning_rate=min_learning_rate
            )

        def stop_epoch() -> int:
            if on_overfit is None or on_overfit.restart_epochs is None or result.regularized_from is None:
                return max_epochs
            return min(max_epochs, result.regularized_from + on_overfit.restart_epochs)

        ema_params = [p for p in ema.parameters() if p.requires_grad] if ema is not None else []
        for epoch in range(start_epoch, max_epochs if not finished else start_epoch):
            if epoch >= stop_epoch():
                break
            model.train()
            total = torch.zeros((), device=device)
            count = 0
            for step, batch in enumerate(source.train_batches(bs, gen)):
                if schedule == "cosine":
                    rate = rate_at(epoch + min(step / steps_per_epoch, 1.0))
                    for group in opt.param_groups:
                        group["lr"] = rate
                loss = loss_fn(model, *batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm is not None:
                    nn.utils.clip_grad_norm_(params, clip_norm)
                opt.step()
                if ema_decay is not None:
                    with torch.no_grad():  # one fused call, as torch.optim.swa_utils does
                        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay)
                m = int(batch[0].shape[0])
                total += loss.detach() * m
                count += m
            train_loss = float(total) / max(count, 1)
            if ema is not None:  # buffers (e.g. batch-norm statistics) are the model's own, not averaged
                with torch.no_grad():
                    for e_buf, m_buf in zip(ema.buffers(), model.buffers(), strict=True):
                        e_buf.copy_(m_buf)
            # With ema_decay, the moving average is what is validated, kept and returned.
            val_loss = source.val_loss(model if ema is None else ema, loss_fn, batch_size=val_bs)
            lr = opt.param_groups[0]["lr"]
            result.train_loss.append(train_loss)
            result.val_loss.append(val_loss)
            result.learning_rate.append(lr)
            result.epochs = epoch + 1
            bar.update(1)
            if not math.isfinite(train_loss):
                logger.warning(
                    "training loss became %s at epoch %d; keeping the best weights so far", train_loss, epoch
                )
                finished = True
            else:
                improved = val_loss < best - min_delta
                if val_loss < best:
                    # Any gain yields the best weights; only a gain above min_delta renews patience.
                    best, result.best_epoch = val_loss, epoch
                    best_state = copy.deepcopy((model if ema is None else ema).state_dict())
                if improved:
                    since_best = since_lr = 0
                else:
                    since_best += 1
                    since_lr += 1
                if (
                    on_overfit is not None
                    and result.regularized_from is None
                    and since_best >= on_overfit.patience
                    and train_loss < result.train_loss[result.best_epoch]
                ):
                    # Overfitting: back to the best weights, on with weight decay (and a fresh patience).
                    model.load_state_dict(best_state)
                    if ema is not None:
                        ema.load_state_dict(best_state)
                    for group in opt.param_groups:
                        group["weight_decay"] = on_overfit.weight_decay
                    result.regularized_from = epoch + 1
                    since_best = since_lr = 0
                    logger.info(
                        "%s: validation loss stalled for %d epochs while the training loss fell; weight decay %g "
                        "from epoch %d on, from the weights of epoch %d",
                        description,
                        on_overfit.patience,
                        on_overfit.weight_decay,
                        epoch + 1,
                        result.best_epoch,
                    )
                if schedule == "plateau" and since_lr >= lr_patience and lr > min_learning_rate:
                    for group in opt.param_groups:
                        group["lr"] = max(min_learning_rate, group["lr"] * lr_factor)
                    since_lr = 0
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{best:.4f}", refresh=False)
                if since_best >= patience:
                    result.stopped_early = True
                    finished = True
            if ckpt_path is not None:
                result.train_time = previous_time + time.perf_counter() - start
                _save_checkpoint(
                    ckpt_path,
                    {
                        "format": _CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "seed": seed,
                        "epoch": epoch + 1,
                        "finished": finished,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generator": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                        "best": best,
                        "best_state": best_state,
                        "since_best": since_best,
                        "since_lr": since_lr,
                        "ema": ema.state_dict() if ema is not None else None,
                        "result": _result_fields(result),
                    },
                )
            if finished:
                break
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
        result.train_time = previous_time + time.perf_counter() - start
        logger.info(
            "%s: %d epochs in %.1f s, best validation loss %.4f at epoch %d",
            description,
            result.epochs,
            result.train_time,
            best,
            result.best_epoch,
        )
        return result


#: Input elements per validation batch of :func:`fit` (rows of all tensors together).
_VALIDATION_ELEMENTS = 2**21


# -- data sources ---------------------------------------------------------------------------------
class _InMemory:
    """Tensors held on the device; batches are taken by indexing a permutation."""

    def __init__(
        self, data: Sequence[Tensor], n_val: int, gen: torch.Generator, device: torch.device, *, checksum: bool
    ) -> None:
        n = int(data[0].shape[0])
        self.shapes = [tuple(t.shape) for t in data]
        # With a checkpoint, a checksum of the data, so that resuming with other data is caught.
        self.sums = [_checksum(t) for t in data] if checksum else None
        perm = torch.randperm(n, generator=gen)
        data = [t.to(device) for t in data]
        train_idx, val_idx = perm[n_val:].to(device), perm[:n_val].to(device)
        self.train = [t[train_idx] for t in data]
        self.val = [t[val_idx] for t in data]
        self.n_train = n - n_val
        self.device = device

    def describe(self) -> dict[str, object]:
        return {"kind": "memory", "shapes": [list(s) for s in self.shapes], "sums": self.sums}

    def row_elements(self) -> int:
        """Entries of one row, all tensors together."""
        return sum(math.prod(s[1:]) for s in self.shapes)

    def train_batches(self, bs: int, gen: torch.Generator) -> Iterator[list[Tensor]]:
        order = torch.randperm(self.n_train, generator=gen).to(self.device)
        for i in range(0, self.n_train, bs):
            idx = order[i : i + bs]
            yield [t[idx] for t in self.train]

    def val_loss(self, model: nn.Module, loss_fn: LossFn, *, batch_size: int) -> float:
        return evaluate(model, loss_fn, self.val, batch_size=batch_size)


class StreamingData:
    """Rows of array-likes that stay on disk (zarr, h5py), read block by block during training.

    Pass it to :func:`fit` instead of tensors. Each epoch visits the blocks in a random
    order; ``buffer_blocks`` blocks at a time are read (in a background thread, while the
    previous buffer trains), their rows shuffled and cut into batches. Memory use is
    about ``buffer_blocks * block_rows`` rows, whatever the size of the data.

    Args:
        arrays: array-likes with a common first dimension ``n`` that return numpy arrays
            for row slices (``zarr.Array``, ``h5py.Dataset``, numpy memmaps).
        transform: maps the raw rows of a block (numpy, one array per entry of ``arrays``)
            to the tensors ``loss_fn`` takes; it may drop rows (e.g. non-finite ones) but
            must drop the same rows from every tensor. Default: float32 tensors.
        block_rows: rows per read; default the chunk length along rows of the first array
            that has chunks (or 4096).
        buffer_blocks: blocks shuffled together; more mixes batches better, costs memory.

    Attributes:
        num_rows: ``n``.
        num_blocks: ``ceil(n / block_rows)``.
    """

    def __init__(
        self,
        arrays: Sequence[Any],
        *,
        transform: Callable[[list[np.ndarray]], list[Tensor]] | None = None,
        block_rows: int | None = None,
        buffer_blocks: int = 16,
    ) -> None:
        if not arrays:
            raise ValueError("StreamingData needs at least one array")
        self.arrays = list(arrays)
        self.num_rows = int(self.arrays[0].shape[0])
        for a in self.arrays:
            if int(a.shape[0]) != self.num_rows:
                raise ValueError(
                    f"all arrays need the same number of rows; got {[tuple(a.shape) for a in self.arrays]}"
                )
        if block_rows is None:  # the chunk length of the first array on disk (numpy companions have none)
            chunked = [c for c in (getattr(a, "chunks", None) for a in self.arrays) if c]
            block_rows = int(chunked[0][0]) if chunked else 4096
        if block_rows < 1 or buffer_blocks < 1:
            raise ValueError("block_rows and buffer_blocks must be >= 1")
        self.block_rows = int(block_rows)
        self.buffer_blocks = int(buffer_blocks)
        self.num_blocks = math.ceil(self.num_rows / self.block_rows)
        self.transform = transform

    def block_slice(self, b: int) -> slice:
        return slice(b * self.block_rows, min(self.num_rows, (b + 1) * self.block_rows))

    def read(self, b: int, rows: np.ndarray | None = None) -> list[Tensor]:
        """Block ``b`` (only the rows where the boolean ``rows`` is true), transformed."""
        sl = self.block_slice(b)
        raw = [np.asarray(a[sl]) for a in self.arrays]
        if rows is not None:
            raw = [r[rows] for r in raw]
        if self.transform is not None:
            return self.transform(raw)
        return [torch.as_tensor(np.asarray(r, dtype=np.float32)) for r in raw]

    def iter_blocks(self) -> Iterator[list[Tensor]]:
        """All blocks in order, transformed (e.g. to compute standardisation statistics)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self.read, 0)
            for b in range(self.num_blocks):
                block = nxt.result()
                if b + 1 < self.num_blocks:
                    nxt = pool.submit(self.read, b + 1)
                yield block


class _Streamed:
    """Batches from a :class:`StreamingData`: shuffled buffers of blocks, copied to the device per buffer."""

    def __init__(self, data: StreamingData, n_val: int, gen: torch.Generator, device: torch.device) -> None:
        perm = torch.randperm(data.num_rows, generator=gen)
        is_val = torch.zeros(data.num_rows, dtype=torch.bool)
        is_val[perm[:n_val]] = True
        del perm
        self.is_val = is_val.numpy()
        self.data = data
        self.device = device
        self.pin = device.type == "cuda"

    def describe(self) -> dict[str, object]:
        shapes = [list(a.shape) for a in self.data.arrays]
        return {"kind": "stream", "shapes": shapes, "block_rows": self.data.block_rows}

    def row_elements(self) -> int:
        """Entries of one row, all arrays together."""
        return sum(math.prod(int(v) for v in a.shape[1:]) for a in self.data.arrays)

    def _load(self, blocks: list[int], validation: bool) -> list[Tensor]:
        parts = []
        for b in blocks:
            mask = self.is_val[self.data.block_slice(b)]
            parts.append(self.data.read(b, mask if validation else ~mask))
        return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _buffers(self, groups: list[list[int]], validation: bool) -> Iterator[list[Tensor]]:
        """Read the groups of blocks one ahead in a background thread."""
        if not groups:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._load, groups[0], validation)
            for k in range(len(groups)):
                buf = nxt.result()
                if k + 1 < len(groups):
                    nxt = pool.submit(self._load, groups[k + 1], validation)
                yield buf

    def _to_device(self, tensors: list[Tensor]) -> list[Tensor]:
        if self.pin:  # page-locked memory lets the copy overlap with computation
            return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        return [t.to(self.device) for t in tensors]

    def train_batches(self, bs: int, gen: torch.Generator) -> Iterator[list[Tensor]]:
        order = torch.randperm(self.data.num_blocks, generator=gen).tolist()
        k = self.data.buffer_blocks
        groups = [order[i : i + k] for i in range(0, len(order), k)]
        carry: list[Tensor] | None = None
        for g, buf in enumerate(self._buffers(groups, validation=False)):
            if carry is not None:
                buf = [torch.cat([c, t]) for c, t in zip(carry, buf, strict=True)]
            m = int(buf[0].shape[0])
            perm = torch.randperm(m, generator=gen)
            buf = [t[perm] for t in buf]
            # Full batches only, except at the end of the epoch; the rest joins the next buffer.
            full = m if g == len(groups) - 1 else (m // bs) * bs
            carry = [t[full:] for t in buf]
            dev = self._to_device([t[:full] for t in buf])
            for i in range(0, full, bs):
                yield [t[i : i + bs] for t in dev]

    @torch.no_grad()
    def val_loss(self, model: nn.Module, loss_fn: LossFn, *, batch_size: int) -> float:
        model.eval()
        k = self.data.buffer_blocks
        blocks = list(range(self.data.num_blocks))
        total, count = 0.0, 0
        for buf in self._buffers([blocks[i : i + k] for i in range(0, len(blocks), k)], validation=True):
            m = int(buf[0].shape[0])
            if m == 0:
                continue
            dev = self._to_device(buf)
            for i in range(0, m, batch_size):
                chunk = [t[i : i + batch_size] for t in dev]
                total += float(loss_fn(model, *chunk)) * int(chunk[0].shape[0])
                count += int(chunk[0].shape[0])
        if count == 0:
            raise ValueError("no finite validation rows: every validation row was dropped by the transform")
        return total / count


def mean_and_scatter(
    blocks: Iterable[Tensor], dim: int, *, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, int]:
    """Mean and scatter matrix ``sum (x - mean)(x - mean)^T`` of rows given block by block, in float64.

    Blocks are merged with Chan et al.'s update ``S = S_a + S_b + delta delta^T n_a n_b / n``,
    so the result matches the two-pass computation on all rows without holding them.

    Args:
        blocks: tensors ``(b, ...)`` whose rows flatten to ``dim`` entries (empty ones skipped).
        dim: ``D``, the entries of one row.
        device: where to accumulate.

    Returns:
        ``(mean (D,), scatter (D, D), count)``, float64 on ``device``.
    """
    count = 0
    mean = torch.zeros(dim, dtype=torch.float64, device=device)
    scatter = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for block in blocks:
        m = int(block.shape[0])
        if m == 0:
            continue
        flat = block.reshape(m, -1).to(device, torch.float64)
        block_mean = flat.mean(0)
        centred = flat - block_mean
        total = count + m
        delta = block_mean - mean
        scatter.add_(centred.T @ centred).addr_(delta, delta, alpha=count * m / total)
        mean.add_(delta, alpha=m / total)
        count = total
    return mean, scatter, count


def running_moments(
    data: StreamingData, *, global_entries: Sequence[bool] | None = None
) -> list[tuple[Tensor, Tensor, int]]:
    """Mean and standard deviation of every tensor of a :class:`StreamingData`, in one pass.

    Blocks are merged with Chan et al.'s parallel update in float64, so the result matches
    ``t.mean(0)`` and ``t.std(0)`` of the whole data to float64 rounding without holding it.

    Args:
        data: the source; its ``transform`` is applied (dropped rows are not counted).
        global_entries: per tensor, ``True`` to pool all its entries into one mean and
            standard deviation (as the flows do for image contexts) instead of one per
            feature (over rows). Default: per feature for all.

    Returns:
        For each tensor ``(mean, std, count)``: ``mean`` and ``std`` (ddof 1) of shape
        ``t.shape[1:]`` (``()`` when pooled), float64, and the number of rows.
    """
    pooled: list[bool] | None = None
    num_rows = 0
    counts: list[int] = []
    means: list[Tensor | None] = []
    m2s: list[Tensor | None] = []
    for block in data.iter_blocks():
        if pooled is None:
            pooled = list(global_entries) if global_entries is not None else [False] * len(block)
            counts, means, m2s = [0] * len(block), [None] * len(block), [None] * len(block)
        num_rows += int(block[0].shape[0])
        for k, t in enumerate(block):
            if int(t.shape[0]) == 0:
                continue
            v = t.double().reshape(-1) if pooled[k] else t.double()
            cnt = int(v.shape[0])
            mean = v.mean(0)
            m2 = ((v - mean) ** 2).sum(0)
            old_mean, old_m2 = means[k], m2s[k]
            if old_mean is None or old_m2 is None:
                counts[k], means[k], m2s[k] = cnt, mean, m2
            else:
                total = counts[k] + cnt
                delta = mean - old_mean
                means[k] = old_mean + delta * (cnt / total)
                m2s[k] = old_m2 + m2 + delta**2 * (counts[k] * cnt / total)
                counts[k] = total
    if pooled is None or any(m is None for m in means):
        raise ValueError("no rows to compute statistics from: every row was dropped")
    out = []
    for k in range(len(counts)):
        mean, m2 = means[k], m2s[k]
        assert mean is not None and m2 is not None
        out.append((mean, (m2 / max(counts[k] - 1, 1)).sqrt(), num_rows))
    return out


def _checksum(t: Tensor, rows: int = 65_536) -> float:
    """Sum of all entries in float64, a block of rows at a time (no full float64 copy)."""
    return float(sum(float(t[i : i + rows].double().sum()) for i in range(0, int(t.shape[0]), rows)))


# -- checkpoints ----------------------------------------------------------------------------------
_CHECKPOINT_FORMAT = 1


def _result_fields(result: FitResult) -> dict[str, object]:
    d = result.to_dict()
    d.pop("best_val_loss")
    return d


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path | None, resume: bool) -> dict[str, Any] | None:
    if path is None:
        if resume:
            raise ValueError("resume=True needs checkpoint=PATH, the file the interrupted run wrote")
        return None
    if not resume:
        if path.exists():
            logger.warning("checkpoint %s exists and resume=False: starting afresh and overwriting it", path)
        return None
    if not path.exists():
        logger.info("no checkpoint at %s yet: starting afresh", path)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an sbikit training checkpoint (format {_CHECKPOINT_FORMAT})")
    return state


# Fingerprint entries added after checkpoints were first written, with the value they had then
# (every earlier run used the plateau schedule), so that such checkpoints still resume.
_FINGERPRINT_DEFAULTS: dict[str, Any] = {
    "schedule": "plateau",
    "warmup_epochs": 0.0,
    "max_epochs": None,
    "on_overfit": None,
    "ema_decay": None,
}


def _check_fingerprint(old: dict[str, Any], new: dict[str, Any], path: Path | None) -> None:
    old = {**_FINGERPRINT_DEFAULTS, **old}
    diff = [f"{k}: checkpoint {old.get(k)!r}, now {new[k]!r}" for k in new if old.get(k) != new[k]]
    if diff:
        raise ValueError(
            f"checkpoint {path} belongs to a different training run, so it cannot be resumed ("
            + "; ".join(diff)
            + "); pass the same data and settings, or resume=False to start afresh"
        )


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


# -- inputs that live on disk ----------------------------------------------------------------------
def is_out_of_core(value: Any) -> bool:
    """Whether ``value`` is an array that stays on disk until indexed (zarr, h5py, dask), not numpy/torch."""
    if isinstance(value, (np.ndarray, Tensor)):
        return False
    return all(hasattr(value, a) for a in ("shape", "dtype", "__getitem__"))


def float32_nbytes(*arrays: Any) -> int:
    """Bytes the arrays take as float32 tensors in memory."""
    return sum(4 * math.prod(int(s) for s in a.shape) for a in arrays)


def stream_or_load(arrays: Sequence[Any], *, memory_limit_gb: float | None) -> tuple[list[Any], bool]:
    """Decide how arrays on disk are trained on: read into memory, or streamed.

    Args:
        arrays: numpy arrays, tensors, or arrays on disk (zarr, h5py) with common rows.
        memory_limit_gb: arrays on disk whose float32 size exceeds this are streamed;
            ``None`` always reads them into memory, ``0`` always streams.

    Returns:
        ``(arrays, streamed)``: the arrays (read into numpy when not streamed) and whether
        they are to be streamed. In-memory inputs are returned unchanged, never streamed.
    """
    if not any(is_out_of_core(a) for a in arrays):
        return list(arrays), False
    nbytes = float32_nbytes(*arrays)
    if memory_limit_gb is not None and nbytes > memory_limit_gb * 2**30:
        logger.info(
            "streaming %.2f GB of training data from disk (memory_limit_gb=%s)", nbytes / 2**30, memory_limit_gb
        )
        return list(arrays), True
    return [np.asarray(a[:]) if is_out_of_core(a) else a for a in arrays], False
