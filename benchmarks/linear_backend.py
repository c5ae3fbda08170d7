"""oneDNN against MKL for the flows' dense layers (``sbikit.linear``), on this machine.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/linear_backend.py [--reps 5] [--out FILE]

Measurements in CPU seconds of one thread, alternating the two variants of each so that a
change in the machine's speed during the run falls on both:

* the three products of a dense layer's training step (forward ``x W^T``, ``grad W`` and
  ``grad^T x``) at the shapes of NPE's default NSF conditioner (512 rows, 128 units) and of
  narrower ones;
* a full training step (forward, backward, clipping, fused AdamW) of NPE's default flow on the
  benchmark's two_moons set (10^4 simulations, batches of 512), with
  :func:`sbikit.linear.set_onednn_linear` on and off;
* the same step with the conditioners' ReLUs fused into oneDNN's products (the default) and
  applied as separate operations, alternating;
* with ``--fit-reps N`` (default 0), ``N`` pairs of whole default ``NPE.fit`` runs on that set
  (seed 0), one with each backend.

Prints one JSON line per measurement (and appends them to ``--out``).
"""

# ruff: noqa: E402  (OMP_NUM_THREADS must be set before numpy and torch are imported)
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from npe_vs_sbi import machine, training_data

import sbikit
import simulators
from sbikit import linear as lin
from sbikit.flows import ConditionalMADE
from sbikit.inference.npe import npe_loss


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """CPU microseconds per call of ``fn`` over ``n`` calls (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def products(rows: int, width: int, reps: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(*s, generator=gen) for s in ((rows, width), (width, width), (rows, width)))
    op = torch.ops.mkldnn._linear_pointwise
    cases = {
        "forward": (lambda: x @ w.t(), lambda: op(x, w, None, "none", [], "")),
        "grad_input": (lambda: g @ w, lambda: op(g, w.t(), None, "none", [], "")),
        "grad_weight": (lambda: g.t() @ x, lambda: op(g.t(), x.t(), None, "none", [], "")),
    }
    out: dict = {"kind": "products", "rows": rows, "width": width}
    for name, (mkl, dnn) in cases.items():
        pairs = [(cpu_us(mkl, 300), cpu_us(dnn, 300)) for _ in range(reps)]
        out[name] = {
            "mkl_us": statistics.median(p[0] for p in pairs),
            "onednn_us": statistics.median(p[1] for p in pairs),
        }
        out[name]["ratio"] = out[name]["onednn_us"] / out[name]["mkl_us"]
    return out


def default_step(
    theta: torch.Tensor, x: torch.Tensor
) -> tuple[torch.nn.Module, Callable[[], None], Callable[[], float]]:
    """NPE's default two_moons flow (one epoch trained), one training step on 512 rows, and its loss."""
    sim = simulators.get("two_moons")
    flow = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, progress=False, max_epochs=1).flow
    u = sim.prior.to_unconstrained(theta)[:512].float()
    xb = x[:512]
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        npe_loss(flow, u, xb).backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        opt.step()

    def loss() -> float:
        with torch.no_grad():
            return float(npe_loss(flow, u, xb))

    return flow, step, loss


def training_step(theta: torch.Tensor, x: torch.Tensor, reps: int) -> dict:
    flow, step, _ = default_step(theta, x)
    times: dict[str, list[float]] = {"mkl": [], "onednn": []}
    for _ in range(reps):
        for name, enabled in (("mkl", False), ("onednn", True)):
            lin.set_onednn_linear(enabled)
            times[name].append(cpu_us(step, 60) / 1e3)
    lin.set_onednn_linear(True)
    mkl, dnn = statistics.median(times["mkl"]), statistics.median(times["onednn"])
    return {
        "kind": "training_step",
        "task": "two_moons",
        "rows": 512,
        "parameters": sum(p.numel() for p in flow.parameters()),
        "mkl_ms": mkl,
        "onednn_ms": dnn,
        "ratio": dnn / mkl,
        "mkl_ms_all": times["mkl"],
        "onednn_ms_all": times["onednn"],
    }


def _set_relu_fusion(flow: torch.nn.Module, fused: bool) -> None:
    """Fuse the conditioners' ReLUs into the products (the default) or apply them as separate operations."""
    for module in flow.modules():
        if isinstance(module, ConditionalMADE):
            module.fuse_activation = fused


def relu_fusion_step(theta: torch.Tensor, x: torch.Tensor, reps: int) -> dict:
    """The default training step with the ReLUs fused into oneDNN's products, against separate ReLUs."""
    flow, step, loss = default_step(theta, x)
    losses = {}
    for fused in (False, True):
        _set_relu_fusion(flow, fused)
        losses[fused] = loss()
    times: dict[str, list[float]] = {"separate": [], "fused": []}
    for _ in range(reps):
        for name in times:
            _set_relu_fusion(flow, name == "fused")
            times[name].append(cpu_us(step, 60) / 1e3)
    _set_relu_fusion(flow, True)
    sep, fused = statistics.median(times["separate"]), statistics.median(times["fused"])
    return {
        "kind": "relu_fusion_step",
        "task": "two_moons",
        "rows": 512,
        "separate_ms": sep,
        "fused_ms": fused,
        "ratio": fused / sep,
        "loss_separate": losses[False],
        "loss_fused": losses[True],
        "separate_ms_all": times["separate"],
        "fused_ms_all": times["fused"],
    }


def whole_fits(theta: torch.Tensor, x: torch.Tensor, reps: int) -> dict:
    sim = simulators.get("two_moons")
    runs: dict[str, list[dict]] = {"mkl": [], "onednn": []}
    for _ in range(reps):
        for name, enabled in (("mkl", False), ("onednn", True)):
            lin.set_onednn_linear(enabled)
            start = time.process_time()
            post = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, progress=False)
            runs[name].append({"cpu_s": time.process_time() - start, "epochs": int(post.info["epochs"])})
    lin.set_onednn_linear(True)
    mkl = statistics.median(r["cpu_s"] for r in runs["mkl"])
    dnn = statistics.median(r["cpu_s"] for r in runs["onednn"])
    return {"kind": "npe_fit", "task": "two_moons", "mkl_s": mkl, "onednn_s": dnn, "ratio": dnn / mkl, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fit-reps", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    where = machine()  # with the CPU model, family and instruction set: the backends' relative speed depends on them
    theta, x = training_data("two_moons", 10_000)
    rows = [products(512, width, args.reps) for width in (128, 96, 64)] + [
        training_step(theta, x, args.reps),
        relu_fusion_step(theta, x, args.reps),
    ]
    if args.fit_reps > 0:
        rows.append(whole_fits(theta, x, args.fit_reps))
    for row in rows:
        line = json.dumps({**row, "machine": where})
        sys.stdout.write(line + "\n")
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
