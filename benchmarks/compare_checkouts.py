"""Whole default NPE fits of two checkouts of sbikit, alternating, on this machine.

Usage::

    git worktree add /tmp/base <commit>
    OMP_NUM_THREADS=1 python benchmarks/compare_checkouts.py /tmp/base . --pairs 8 [--out FILE]

Each fit runs in a fresh process that imports sbikit from the given checkout (the same
training set, ``NPE(prior).fit(theta, x, seed=0)`` on two_moons with 10^4 simulations, one
torch thread, torch's one-time import of ``torch._dynamo`` paid before the timing). The two
checkouts alternate, so that a drift of the machine's speed falls on both; the figure of the
change is the median of the per-pair CPU-time ratios. Prints one JSON line per fit and a
summary line (also appended to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ONE_FIT = r"""
import json, os, sys, time
root = sys.argv[1]
sys.path.insert(0, root)
sys.path.insert(0, os.path.join(root, "benchmarks"))
import torch
torch.set_num_threads(1)
# torch's one-time import of torch._dynamo, outside the timing; inline rather than
# npe_vs_sbi.warm_up, which older checkouts lack.
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]).zero_grad()
from npe_vs_sbi import training_data
import sbikit, simulators
assert os.path.realpath(sbikit.__file__).startswith(os.path.realpath(root)), sbikit.__file__
sim = simulators.get("two_moons")
theta, x = training_data("two_moons", 10_000)
start = time.process_time()
post = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, progress=False)
print(json.dumps({"cpu_s": time.process_time() - start, "epochs": int(post.info["epochs"]),
                  "best_val_loss": float(post.info["best_val_loss"])}))
"""


def commit_of(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "sbikit"], capture_output=True, text=True
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def one_fit(root: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ONE_FIT, str(root)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("head", type=Path)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = {"base": args.base.resolve(), "head": args.head.resolve()}
    commits = {name: commit_of(root) for name, root in names.items()}
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    lines = []
    for pair in range(args.pairs):
        for name, root in names.items():
            run = {"pair": pair, "which": name, "commit": commits[name], **one_fit(root)}
            runs[name].append(run)
            lines.append(json.dumps(run))
            print(lines[-1], flush=True)
    ratios = [h["cpu_s"] / b["cpu_s"] for b, h in zip(runs["base"], runs["head"], strict=True)]
    summary = {
        "kind": "compare_checkouts",
        "task": "two_moons",
        "commits": commits,
        "base_cpu_s": [r["cpu_s"] for r in runs["base"]],
        "head_cpu_s": [r["cpu_s"] for r in runs["head"]],
        "pair_ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "head_faster_in": sum(r < 1 for r in ratios),
    }
    lines.append(json.dumps(summary))
    print(lines[-1])
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
