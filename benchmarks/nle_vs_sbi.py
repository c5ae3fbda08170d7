"""sbikit NLE (emcee) against sbi's NLE (its default MCMC), side by side on the same simulations.

One training set ``theta ~ prior``, ``x ~ simulator`` per task and budget (the same one
``benchmarks/npe_vs_sbi.py`` uses: ``training_data(task, n)``) is given to each method with
its defaults:

* ``sbikit``: ``sbikit.NLE(prior).fit(theta, x, seed=0)``, sampled with
  ``posterior.sample(10_000, x_o, seed=i)`` (emcee, stretch move, run length from the
  autocorrelation time: see ``sbikit.mcmc``);
* ``sbi``: ``sbi.inference.NLE(prior)`` (MAF) ``.train()``, ``build_posterior()`` with its
  default MCMC (vectorised slice sampling, 20 chains, 200 warm-up steps, init by resampling).

Measured per method: training wall time (``fit`` / ``train`` only), epochs, sampling wall
time for 10,000 samples per observation (and throughput), and C2ST of those samples
against the 10,000-sample references of ``benchmarks/references.py`` (the same
observations as the NPE benchmark; for slcp the reference is emcee on the exact
likelihood with the four-fold sign symmetry applied exactly) in the standard sbibm variant
(:func:`sbikit.diagnostics.c2st.c2st`).

Every process runs torch with one thread (the benchmark machine has two shared cores).

Usage::

    python benchmarks/nle_vs_sbi.py --tasks slcp --budgets 10000 --num-obs 3 \\
        --out benchmarks/results/nle_vs_sbi.jsonl
    python benchmarks/nle_vs_sbi.py --report benchmarks/results/nle_vs_sbi.jsonl

Records are appended to ``--out`` (JSON lines) as soon as each (task, budget, method) is done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from npe_vs_sbi import machine, sbi_prior, training_data  # noqa: E402
from references import TASKS, load_reference  # noqa: E402

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit.diagnostics.c2st import c2st  # noqa: E402

METHODS = ("sbikit", "sbi")
NUM_SAMPLES = 10_000


def run_sbikit(task: str, theta: torch.Tensor, x: torch.Tensor, seed: int):
    sim = simulators.get(task)
    t = time.perf_counter()
    posterior = sbikit.NLE(sim.prior, device="cpu").fit(theta, x, seed=seed, progress=False)
    train_time = time.perf_counter() - t
    diagnostics: list[dict] = []

    def sample(x_o: np.ndarray, i: int) -> np.ndarray:
        result = posterior.sample_mcmc(NUM_SAMPLES, x=torch.as_tensor(x_o), seed=seed + i)
        diagnostics.append(result.summary())
        return result.samples.numpy()

    return train_time, int(posterior.info["epochs"]), sample, diagnostics


def run_sbi(task: str, theta: torch.Tensor, x: torch.Tensor, seed: int):
    from sbi.inference import NLE as SbiNLE

    torch.manual_seed(seed)
    inference = SbiNLE(prior=sbi_prior(task), show_progress_bars=False)
    inference.append_simulations(theta, x)
    t = time.perf_counter()
    density_estimator = inference.train()
    train_time = time.perf_counter() - t
    posterior = inference.build_posterior(density_estimator)
    epochs = int(inference._summary["epochs_trained"][-1])  # sbi keeps it in a private dict

    def sample(x_o: np.ndarray, i: int) -> np.ndarray:
        torch.manual_seed(seed + i)
        np.random.seed(seed + i)
        x_t = torch.as_tensor(x_o, dtype=torch.float32)[None]
        s = posterior.sample((NUM_SAMPLES,), x=x_t, show_progress_bars=False)
        return s.numpy()

    return train_time, epochs, sample, []


def run_one(task: str, n: int, method: str, num_obs: int, seed: int) -> dict:
    theta, x = training_data(task, n)
    ref = load_reference(task)
    if method == "sbikit":
        train_time, epochs, sample, diagnostics = run_sbikit(task, theta, x, seed)
    elif method == "sbi":
        train_time, epochs, sample, diagnostics = run_sbi(task, theta, x, seed)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    scores, sample_times = [], []
    for i in range(num_obs):
        t = time.perf_counter()
        s = sample(ref["x_o"][i], i)
        sample_times.append(time.perf_counter() - t)
        scores.append(c2st(s, ref["samples"][i], seed=0))
        print(f"  {method} obs {i}: C2ST {scores[-1]:.3f}, sampling {sample_times[-1]:.1f} s", flush=True)
    return {
        "task": task,
        "num_simulations": n,
        "method": method,
        "train_time_s": train_time,
        "epochs": epochs,
        "sample_time_s": sample_times,
        "sample_time_mean_s": float(np.mean(sample_times)),
        "samples_per_s": num_obs * NUM_SAMPLES / sum(sample_times),
        "c2st": scores,
        "c2st_mean": float(np.mean(scores)),
        "c2st_std": float(np.std(scores)),
        "num_obs": num_obs,
        "mcmc": diagnostics,
        "machine": machine(),
    }


def report(paths: list[str]) -> str:
    """Markdown table from JSON-lines records (the last record of a key wins); ratios are sbikit / sbi."""
    rows: dict[tuple[str, int, str], dict] = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["task"], r["num_simulations"], r["method"])] = r
    out = [
        "| task | sims | method | C2ST per observation | C2ST mean | train time (s) | epochs | train ÷ sbi "
        "| sampling time / obs (s) | sampling ÷ sbi |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(METHODS)}
    for key in sorted(rows, key=lambda k: (k[0], k[1], order.get(k[2], 99))):
        r = rows[key]
        base = rows.get((key[0], key[1], "sbi"))
        tr = f"{r['train_time_s'] / base['train_time_s']:.2f}" if base else "–"
        sr = f"{r['sample_time_mean_s'] / base['sample_time_mean_s']:.2f}" if base else "–"
        per_obs = ", ".join(f"{c:.3f}" for c in r["c2st"])
        out.append(
            f"| {r['task']} | {r['num_simulations']} | {r['method']} | {per_obs} | {r['c2st_mean']:.3f} "
            f"| {r['train_time_s']:.1f} | {r['epochs']} | {tr} | {r['sample_time_mean_s']:.1f} | {sr} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description="sbikit NLE vs sbi NLE (C2ST, training and sampling time)")
    p.add_argument("--tasks", nargs="+", default=["slcp"], choices=list(TASKS))
    p.add_argument("--budgets", nargs="+", type=int, default=[10_000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--num-obs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "nle_vs_sbi.jsonl"))
    p.add_argument("--report", nargs="*", help="print a markdown table of these JSON-lines files and exit")
    args = p.parse_args()
    if args.report is not None:
        print(report(args.report or [args.out]))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for n in args.budgets:
            for method in args.methods:
                print(f"{task} n={n} {method}", flush=True)
                record = run_one(task, n, method, args.num_obs, args.seed)
                with out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(
                    f"  -> C2ST {record['c2st_mean']:.3f}, train {record['train_time_s']:.1f} s, "
                    f"sampling {record['sample_time_mean_s']:.1f} s / obs",
                    flush=True,
                )


if __name__ == "__main__":
    main()
