"""sbikit NPE against sbi's NPE (MAF and NSF), side by side on the same simulations.

For every task and simulation budget, one training set ``theta ~ prior``, ``x ~ simulator``
is drawn (seeded) and given to each method with its defaults:

* ``sbikit``: ``sbikit.NPE(prior).fit(theta, x, seed=0)`` (all defaults);
* ``sbikit-maf`` / ``sbikit-nsf``: the same with ``flow="maf"`` / ``flow="nsf"``;
* ``sbi-maf``: ``sbi.inference.NPE(prior, density_estimator="maf").train()``;
* ``sbi-nsf``: the same with ``density_estimator="nsf"``.

Measured per method: training wall time (``fit`` / ``train`` only), epochs, sampling
throughput (10,000 posterior samples per observation, samples/s over all observations;
sbi's rejection of samples outside the prior is part of its ``sample``), and C2ST of those
10,000 samples against 10,000 reference samples (``benchmarks/references.py``) in the
standard sbibm variant: an MLP with two hidden layers of ``10 d`` units, inputs z-scored
on the reference, 5-fold cross-validated accuracy (:func:`sbikit.diagnostics.c2st.c2st`).

Every process runs torch with one thread (the benchmark machine has two shared cores;
with two threads per process training is many times slower there).

Usage::

    python benchmarks/npe_vs_sbi.py --tasks two_moons slcp --budgets 1000 10000 \\
        --methods sbikit sbi-maf sbi-nsf --out benchmarks/results/run.jsonl
    python benchmarks/npe_vs_sbi.py --report benchmarks/results/*.jsonl   # markdown table

Records are appended to ``--out`` (JSON lines) as soon as each (task, budget, method) is
done, so an interrupted run keeps what it finished.

The machine's speed drifts (by up to 2x between runs on the shared benchmark machine, and
within a run between one method's training and the next), so one timing per method gives a
ratio that moves with the load. ``--time-repeats R`` trains every method of a (task, budget)
``R - 1`` more times, for timing only, in alternating order (reversed at every other
repeat), after the scored runs; training is deterministic given the seed, so each repeat is
the same computation. Each repeat is a ``"kind": "timing"`` record, and the report gives the
per-repeat ratios and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from references import TASKS, load_reference  # noqa: E402

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit.diagnostics.c2st import c2st  # noqa: E402

METHODS = ("sbikit", "sbikit-maf", "sbikit-nsf", "sbi-maf", "sbi-nsf")
NUM_SAMPLES = 10_000


def training_data(task: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared training set of a task and budget (seeded by the budget)."""
    sim = simulators.get(task)
    theta = sim.prior.sample(n, seed=n)
    x = sim.simulate(theta, seed=n + 1)
    theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return theta, x


def sbi_prior(task: str):
    """The task's prior as a torch distribution sbi accepts."""
    sim = simulators.get(task)
    p = sim.prior
    if torch.isfinite(p.low).all():
        from sbi.utils import BoxUniform

        return BoxUniform(p.low.float(), p.high.float())
    return torch.distributions.MultivariateNormal(p.mean.float(), p.cov.float())


def run_sbikit(task: str, theta: torch.Tensor, x: torch.Tensor, seed: int, **npe_kwargs):
    sim = simulators.get(task)
    t, c = time.perf_counter(), time.process_time()
    posterior = sbikit.NPE(sim.prior, device="cpu", **npe_kwargs).fit(theta, x, seed=seed, progress=False)
    train_time = (time.perf_counter() - t, time.process_time() - c)

    def sample(x_o: np.ndarray, i: int) -> np.ndarray:
        return posterior.sample(NUM_SAMPLES, x=torch.as_tensor(x_o), seed=seed + i).numpy()

    sample.config = {**posterior.flow.config.to_dict(), "best_epoch": posterior.info["best_epoch"]}
    return train_time, int(posterior.info["epochs"]), sample


def run_sbi(task: str, theta: torch.Tensor, x: torch.Tensor, seed: int, estimator: str):
    from sbi.inference import NPE as SbiNPE

    torch.manual_seed(seed)
    inference = SbiNPE(prior=sbi_prior(task), density_estimator=estimator, show_progress_bars=False)
    inference.append_simulations(theta, x)
    t, c = time.perf_counter(), time.process_time()
    density_estimator = inference.train()
    train_time = (time.perf_counter() - t, time.process_time() - c)
    posterior = inference.build_posterior(density_estimator)
    epochs = int(inference._summary["epochs_trained"][-1])  # sbi keeps it in a private dict

    def sample(x_o: np.ndarray, i: int) -> np.ndarray:
        torch.manual_seed(seed + i)
        s = posterior.sample((NUM_SAMPLES,), x=torch.as_tensor(x_o)[None], show_progress_bars=False)
        return s.numpy()

    return train_time, epochs, sample


def train_method(task: str, n: int, method: str, seed: int):
    """Train ``method`` on the shared training set: ``((wall s, CPU s), epochs, sample)``."""
    theta, x = training_data(task, n)
    if method == "sbikit":
        return run_sbikit(task, theta, x, seed)
    if method in ("sbikit-maf", "sbikit-nsf"):
        return run_sbikit(task, theta, x, seed, flow=method[7:])
    if method.startswith("sbi-"):
        return run_sbi(task, theta, x, seed, method[4:])
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(task: str, n: int, method: str, num_obs: int, seed: int) -> dict:
    ref = load_reference(task)
    train_time, epochs, sample = train_method(task, n, method, seed)
    scores, sample_time, sample_cpu = [], 0.0, 0.0
    for i in range(num_obs):
        t, c = time.perf_counter(), time.process_time()
        s = sample(ref["x_o"][i], i)
        sample_time += time.perf_counter() - t
        sample_cpu += time.process_time() - c
        scores.append(c2st(s, ref["samples"][i], seed=0))
    return {
        "task": task,
        "num_simulations": n,
        "method": method,
        "seed": seed,
        "train_time_s": train_time[0],
        "train_cpu_s": train_time[1],
        "epochs": epochs,
        "samples_per_s": num_obs * NUM_SAMPLES / sample_time,
        "samples_per_cpu_s": num_obs * NUM_SAMPLES / sample_cpu,
        "c2st": scores,
        "c2st_mean": float(np.mean(scores)),
        "c2st_std": float(np.std(scores)),
        "num_obs": num_obs,
        "warmed_up": True,  # warm_up() ran before the first timed run; older records lack the field
        "config": getattr(sample, "config", None),
        "machine": machine(),
    }


def timing_repeat(task: str, n: int, methods: list[str], seed: int, repeat: int) -> dict:
    """One timing repeat of every method: reversed order at odd ``repeat``, to cancel a drift."""
    order = list(methods)[::-1] if repeat % 2 else list(methods)
    wall, cpu, epochs = {}, {}, {}
    for method in order:
        (wall[method], cpu[method]), epochs[method], _ = train_method(task, n, method, seed)
    return {
        "kind": "timing",
        "task": task,
        "num_simulations": n,
        "seed": seed,
        "repeat": repeat,
        "order": order,
        "train_time_s": wall,
        "train_cpu_s": cpu,
        "epochs": epochs,
        "machine": machine(),
    }


def cpu_info() -> dict:
    """This CPU's model name, family and model (``/proc/cpuinfo``) and what picks sbikit's products.

    The relative speed of sbikit (oneDNN or MKL products, ``sbikit.linear``) and sbi depends on
    the CPU, and the hosts of this machine kind differ (AVX2 and AVX-512 AMD CPUs).
    """
    from sbikit.linear import _proc_cpuinfo, cpu_description

    fields = {"model name": "cpu_model", "cpu family": "cpu_family", "model": "cpu_model_number"}
    found = _proc_cpuinfo()
    info = {name: found[key] for key, name in fields.items() if key in found}
    return {**info, **cpu_description()}


def machine() -> dict:
    import nflows
    import sbi

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sbi": sbi.__version__,
        "nflows": getattr(nflows, "__version__", "?"),
        "sbikit": getattr(sbikit, "__version__", "?"),
        **cpu_info(),
    }


def report(paths: list[str]) -> str:
    """Markdown table from JSON-lines records (the last record of a key wins)."""
    rows: dict[tuple[str, int, str], dict] = {}
    timings: dict[tuple[str, int], list[dict]] = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("kind") == "timing":
                    timings.setdefault((r["task"], r["num_simulations"]), []).append(r)
                else:
                    rows[(r["task"], r["num_simulations"], r["method"])] = r
    out = [
        "| task | sims | method | C2ST mean ± std | train wall (s) | train CPU (s) | epochs "
        "| train time ÷ sbi-maf | samples/s | samples/s ÷ sbi-maf |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(METHODS)}
    task_order = {t: i for i, t in enumerate(TASKS)}

    def cost(r: dict) -> tuple[float, str]:
        # CPU time when both records have it (fair on a shared machine), else wall time.
        return (r["train_cpu_s"], "cpu") if "train_cpu_s" in r else (r["train_time_s"], "wall")

    for key in sorted(rows, key=lambda k: (task_order.get(k[0], 99), k[1], order.get(k[2], 99))):
        r = rows[key]
        base = rows.get((key[0], key[1], "sbi-maf"))
        ratio = sratio = "–"
        if base:
            (a, ka), (b, kb) = cost(r), cost(base)
            if ka != kb:
                a, b, ka = r["train_time_s"], base["train_time_s"], "wall"
            ratio = f"{a / b:.2f} ({ka})"
            sratio = f"{r['samples_per_s'] / base['samples_per_s']:.1f}"
        cpu = f"{r['train_cpu_s']:.1f}" if "train_cpu_s" in r else "–"
        out.append(
            f"| {r['task']} | {r['num_simulations']} | {r['method']} | {r['c2st_mean']:.3f} ± {r['c2st_std']:.3f} "
            f"| {r['train_time_s']:.1f} | {cpu} | {r['epochs']} | {ratio} | {r['samples_per_s']:.0f} | {sratio} |"
        )
    if timings:
        out += ["", timing_table(rows, timings)]
    return "\n".join(out)


def timing_table(rows: dict[tuple[str, int, str], dict], timings: dict[tuple[str, int], list[dict]]) -> str:
    """Markdown table of training CPU time ÷ sbi-maf's per repeat (repeat 0: the scored runs)."""
    out = [
        "| task | sims | method | train CPU per repeat (s) | ÷ sbi-maf per repeat | median ratio |",
        "|---|---|---|---|---|---|",
    ]
    for (task, n), reps in sorted(timings.items()):
        reps = sorted(reps, key=lambda r: r["repeat"])
        methods = [m for m in METHODS if m != "sbi-maf" and all(m in r["train_cpu_s"] for r in reps)]
        for method in methods:
            pairs = []
            first, base = rows.get((task, n, method)), rows.get((task, n, "sbi-maf"))
            if first and base and "train_cpu_s" in first and "train_cpu_s" in base:
                pairs.append((first["train_cpu_s"], base["train_cpu_s"]))
            pairs += [
                (r["train_cpu_s"][method], r["train_cpu_s"]["sbi-maf"]) for r in reps if "sbi-maf" in r["train_cpu_s"]
            ]
            if not pairs:
                continue
            times = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in pairs)
            ratios = [a / b for a, b in pairs]
            out.append(
                f"| {task} | {n} | {method} | {times} | {', '.join(f'{q:.2f}' for q in ratios)} "
                f"| **{float(np.median(ratios)):.2f}** |"
            )
    return "\n".join(out)


def warm_up() -> None:
    """Pay the process's one-time costs of PyTorch before any timed run, for both methods.

    The first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (0.9-1.3 s on
    the 2-vCPU machine); whichever method trained first paid it inside its timing, which was
    sbikit, the first method of every run.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    torch.optim.Adam([param]).zero_grad()


def main() -> None:
    p = argparse.ArgumentParser(description="sbikit NPE vs sbi NPE (C2ST, training time, sampling throughput)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--num-obs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-repeats",
        type=int,
        default=1,
        help="train every method this many times in all (alternating order) and report the median time ratio",
    )
    p.add_argument("--out", default=str(ROOT / "results" / "npe_vs_sbi.jsonl"))
    p.add_argument("--report", nargs="*", help="print a markdown table of these JSON-lines files and exit")
    args = p.parse_args()
    if args.report is not None:
        print(report(args.report or [args.out]))
        return
    torch.set_num_threads(1)
    warm_up()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for n in args.budgets:
            for method in args.methods:
                r = run_one(task, n, method, args.num_obs, args.seed)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"{task} n={n} {method}: C2ST {r['c2st_mean']:.3f} ± {r['c2st_std']:.3f}, "
                    f"train {r['train_time_s']:.1f} s ({r['epochs']} epochs), {r['samples_per_s']:.0f} samples/s",
                    flush=True,
                )
            for repeat in range(1, args.time_repeats):
                r = timing_repeat(task, n, args.methods, args.seed, repeat)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"{task} n={n} timing repeat {repeat}: train CPU {r['train_cpu_s']}", flush=True)


if __name__ == "__main__":
    main()
