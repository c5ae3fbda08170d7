"""Replay early stopping with a shorter patience on recorded validation curves.

Usage::

    python benchmarks/replay_patience.py [--patience 8 10 12 15] [--files benchmarks/results/tuning*.jsonl]

Patience only decides *when* :func:`sbikit.train.fit` stops; every epoch before the stop is
the same computation whatever its value. So a run recorded with patience 20 (its
``val_loss`` list, one entry per epoch) tells exactly where a smaller patience would have
stopped and which epoch's weights it would have returned. This script applies
:func:`sbikit.train.fit`'s rule (an epoch is the best when its validation loss is lower than
every earlier one; only a gain above ``min_delta`` resets the patience counter) to every
recorded cosine-schedule run that is consistent with patience 20, and reports per task the
share of epochs each patience would run and the runs whose returned epoch would change.
Prints a Markdown table and one line per run that would change.
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

RECORDED_PATIENCE = 20
MIN_DELTA = 1e-3


@dataclass(frozen=True)
class Stop:
    """Where early stopping ends a run.

    Attributes:
        epochs: epochs run.
        best_epoch: the returned epoch (0-based).
        best_val: its validation loss.
    """

    epochs: int
    best_epoch: int
    best_val: float


def _counters(val_loss: Sequence[float], min_delta: float) -> Iterator[tuple[int, int, float]]:
    """Per epoch, :func:`sbikit.train.fit`'s patience counter, best epoch and best loss."""
    best, best_epoch, since = float("inf"), -1, 0
    for epoch, value in enumerate(val_loss):
        gain = value < best - min_delta
        if value < best:
            best, best_epoch = value, epoch
        since = 0 if gain else since + 1
        yield since, best_epoch, best


def replay(val_loss: Sequence[float], patience: int, min_delta: float = MIN_DELTA) -> Stop:
    """Apply the early-stopping rule of :func:`sbikit.train.fit` to a validation curve.

    Args:
        val_loss: validation loss per epoch, as recorded.
        patience: epochs without a gain above ``min_delta`` before stopping.
        min_delta: the gain that resets the counter.

    Returns:
        The stop; ``epochs == len(val_loss)`` when the rule never fires.
    """
    stop = Stop(0, -1, float("inf"))
    for epoch, (since, best_epoch, best) in enumerate(_counters(val_loss, min_delta)):
        stop = Stop(epoch + 1, best_epoch, best)
        if since >= patience:
            break
    return stop


def longest_broken_stall(val_loss: Sequence[float], min_delta: float = MIN_DELTA) -> int:
    """Longest run of epochs without a gain above ``min_delta`` that a later best ended."""
    counters = list(_counters(val_loss, min_delta))
    if not counters:
        return 0
    last_best = counters[-1][1]
    return max(since for since, _, _ in counters[: last_best + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patience", type=int, nargs="+", default=[8, 10, 12, 15])
    parser.add_argument("--files", nargs="+", default=sorted(glob.glob("benchmarks/results/tuning*.jsonl")))
    args = parser.parse_args()

    runs = []
    for path in args.files:
        with open(path) as fh:
            for line in fh:
                record = json.loads(line)
                cfg = record.get("cfg") or {}
                val = record.get("val_loss")
                if not isinstance(val, list) or cfg.get("schedule") != "cosine" or record.get("regularized_from"):
                    continue
                if replay(val, RECORDED_PATIENCE).epochs != len(val):
                    continue  # not a patience-20 run (stopped before the rule would fire)
                runs.append((path.rsplit("/", 1)[-1], record))

    print(f"{len(runs)} recorded cosine runs consistent with patience {RECORDED_PATIENCE}\n")
    print("| task | runs | longest broken stall | " + " | ".join(f"patience {p}" for p in args.patience) + " |")
    print("|---|---|---|" + "---|" * len(args.patience))
    by_task: dict[str, list[dict]] = defaultdict(list)
    for _, record in runs:
        by_task[record["task"]].append(record)
    changed = []
    for task, records in by_task.items():
        fulls = [replay(r["val_loss"], RECORDED_PATIENCE) for r in records]
        cells = []
        for p in args.patience:
            fractions, moved = [], 0
            for record, full in zip(records, fulls, strict=True):
                short = replay(record["val_loss"], p)
                fractions.append(short.epochs / full.epochs)
                if short.best_epoch != full.best_epoch:
                    moved += 1
                    changed.append((p, task, record["name"], short, full))
            cells.append(f"{sum(fractions) / len(fractions):.3f} of the epochs, {moved} changed")
        stall = max(longest_broken_stall(r["val_loss"]) for r in records)
        print(f"| {task} | {len(records)} | {stall} | " + " | ".join(cells) + " |")
    print()
    for p, task, name, short, full in changed:
        print(
            f"patience {p}: {task} {name}: stops at {short.epochs} (best epoch {short.best_epoch}, "
            f"{short.best_val:.4f}) instead of {full.epochs} (best epoch {full.best_epoch}, {full.best_val:.4f})"
        )


if __name__ == "__main__":
    main()
