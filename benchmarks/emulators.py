"""Emulators of an image simulator: fidelity at fixed parameters, and NPE trained on emulated outputs.

Task ``sersic`` (32 x 32 galaxy, 5 parameters; or ``grf``). Steps, all seeded:

1. Training set: ``theta = prior.sample(n_train, seed=0)``, ``x = simulate(theta, seed=1)``;
   with ``--edge-fraction f > 0`` the emulators' training parameters are instead
   ``edge_weighted_design(prior, n_train, edge_fraction=f, concentration=c, seed=0)`` (``c``:
   ``--edge-concentration``, 0.5 unless given, the law of the runs before it existed; a share ``f`` pushed
   toward the prior's bounds; :mod:`sbikit.emulators.design`), simulated with seed 1. The
   compressor of step 3 is always fitted on the prior-drawn set.
2. Each emulator (``cvae``: :class:`sbikit.emulators.ConditionalVAE`, ``wgan``:
   :class:`sbikit.emulators.ConditionalWGAN`) is fitted on it (seed 0, ``--fit-seed``). The CVAE has 256
   hidden units (``--hidden-features``), ``latent_dim`` 8 and, by default here, ``decoder="pca"`` with 64 components
   (``--cvae-decoder``, ``--num-components``; chosen by ``benchmarks/screen_emulators.py``);
   the first recorded run (2026-12-01) used ``--cvae-decoder mlp``, the library default.
   ``--cvae-amplitude-head`` builds it with ``amplitude_head=True``; on ``grf`` pass
   ``--cvae-decoder spectral`` (a stationary filter of a white latent field, whose size then
   replaces ``latent_dim``);
   ``--cvae-schedule cosine`` switches its learning-rate schedule (then pass a large
   ``--patience`` to use the whole ``--max-epochs`` budget) and ``--cvae-learning-rate`` its peak
   learning rate (default: the library's, 3e-3 for ``decoder="spectral"`` since 2026-12-06, 1e-3
   for the others; the ``grf`` runs before that used 1e-3).
3. A :class:`sbikit.compressors.Regression` CNN is fitted on the REAL training set (seed 0);
   its frozen summaries serve every comparison below.
4. Fidelity (:func:`sbikit.emulators.fidelity`) at ``--num-theta-test`` parameters drawn
   from the prior (seed 2), ``--num-samples`` outputs each: the ratio emulated / simulated of
   the azimuthally averaged power spectrum per ``k`` bin with its Monte Carlo error (target:
   every bin within [0.95, 1.05] up to 2 standard errors, i.e. ``power_within(0.05, 2)``),
   C2ST and MMD on the compressor's summaries, KS on the pixel values, speed.
5. NPE: ``theta = prior.sample(n_npe, seed=3)``; the real set ``x = simulate(theta, seed=4)``,
   the emulated set ``emulator.simulate(theta, seed=5)`` (timed against the simulator: the
   speed-up at scale). ``sbikit.NPE(prior)`` (library defaults, seed 0) is trained on the
   compressor's summaries of each. For ``--num-observations`` observations
   (``prior.sample(m, seed=6)``, ``simulate(seed=7)``) ``--num-posterior-samples`` samples of
   the real-data posterior and of the emulated-data posterior are compared by C2ST
   (target: <= 0.6). A second NPE on fresh real simulations (seed 8) gives the run-to-run
   spread of NPE itself, the floor for that C2ST.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/emulators.py --out benchmarks/results/emulators.jsonl
    python benchmarks/emulators.py --quick            # smoke run, seconds
    python benchmarks/emulators.py --report benchmarks/results/emulators.jsonl

Run time on a 2-core x86 CPU (one thread, shared): the CVAE part 34 min (compressor 2.5 min,
50,000 simulations 1 min, three NPEs on 50,000 rows 5.5 min each, CVAE fit 2 min, fidelity and
C2STs the rest; 43 min with ``decoder="pca"`` on a machine shared with two other jobs); the
WGAN adds about 25 min (100 epochs at ~9 s, its NPE and C2STs); the
``--quick`` smoke run takes ~30 s.

Records are appended as each stage finishes (one line per emulator and stage), so an
interrupted run keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit.compressors import Regression  # noqa: E402
from sbikit.diagnostics.c2st import c2st  # noqa: E402
from sbikit.emulators import ConditionalVAE, ConditionalWGAN, edge_weighted_design, fidelity  # noqa: E402

logger = logging.getLogger("benchmarks.emulators")

EMULATORS = ("cvae", "wgan")


def machine() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def build_emulator(name: str, prior: Any, args: argparse.Namespace) -> Any:
    common = {
        "num_components": args.num_components,
        "hidden_features": args.hidden_features,
        "channels": tuple(args.channels),
        "prior": prior,
    }
    if name == "cvae":
        return ConditionalVAE(
            args.latent_dim, decoder=args.cvae_decoder, amplitude_head=args.cvae_amplitude_head, **common
        )
    return ConditionalWGAN(args.latent_dim, generator=args.wgan_generator, **common)


def fit_emulator(emu: Any, name: str, theta: torch.Tensor, x: np.ndarray, args: argparse.Namespace) -> float:
    t0 = time.perf_counter()
    kw = {"seed": args.fit_seed, "device": args.device, "progress": args.progress, "max_epochs": args.max_epochs}
    if name == "cvae":
        emu.fit(
            theta, x, patience=args.patience, schedule=args.cvae_schedule, learning_rate=args.cvae_learning_rate, **kw
        )
    else:
        emu.fit(theta, x, learning_rate=args.wgan_learning_rate, **kw)
    return time.perf_counter() - t0


def posterior_c2st(post_a: Any, post_b: Any, s_obs: torch.Tensor, args: argparse.Namespace) -> list[float]:
    out = []
    for i in range(len(s_obs)):
        a = post_a.sample(args.num_posterior_samples, x=s_obs[i], seed=100 + i)
        b = post_b.sample(args.num_posterior_samples, x=s_obs[i], seed=200 + i)
        out.append(c2st(a, b, seed=0, classifier=args.classifier))
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sim = simulators.get(args.task, size=args.size)
    prior = sim.prior
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "task": args.task,
        "size": args.size,
        "num_train": args.num_train,
        "edge_fraction": args.edge_fraction,
        "edge_concentration": args.edge_concentration,
        "fit_seed": args.fit_seed,
        "cvae_learning_rate": args.cvae_learning_rate,
        "quick": args.quick,
        **machine(),
    }
    records: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        rec = {**base, **rec}
        records.append(rec)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        logger.info("record: %s", {k: v for k, v in rec.items() if not isinstance(v, list)})

    theta = prior.sample(args.num_train, seed=0)
    x = np.asarray(sim.simulate(theta.double().numpy(), seed=1))
    if args.edge_fraction > 0:
        theta_emu = edge_weighted_design(
            prior, args.num_train, edge_fraction=args.edge_fraction, concentration=args.edge_concentration, seed=0
        )
        x_emu = np.asarray(sim.simulate(theta_emu.double().numpy(), seed=1))
    else:
        theta_emu, x_emu = theta, x
    comp = Regression(channels=tuple(args.channels)).fit(
        x, theta, seed=0, device=args.device, progress=args.progress, max_epochs=args.max_epochs, patience=10
    )
    theta_test = prior.sample(args.num_theta_test, seed=2)

    theta_npe = prior.sample(args.num_npe, seed=3)
    t0 = time.perf_counter()
    x_npe = np.asarray(sim.simulate(theta_npe.double().numpy(), seed=4))
    sim_seconds = time.perf_counter() - t0
    theta_obs = prior.sample(args.num_observations, seed=6)
    s_obs = comp.encode(np.asarray(sim.simulate(theta_obs.double().numpy(), seed=7)))
    npe_kw = {"seed": 0, "progress": args.progress}
    if args.npe_max_epochs is not None:
        npe_kw["max_epochs"] = args.npe_max_epochs
    post_real = sbikit.NPE(prior, device=args.device).fit(theta_npe, comp.encode(x_npe), **npe_kw)
    del x_npe
    if args.npe_floor:
        x_again = np.asarray(sim.simulate(theta_npe.double().numpy(), seed=8))
        post_again = sbikit.NPE(prior, device=args.device).fit(theta_npe, comp.encode(x_again), **npe_kw)
        del x_again
        c = posterior_c2st(post_again, post_real, s_obs, args)
        emit({"stage": "npe", "emulator": "simulator (fresh noise)", "num_npe": args.num_npe, "c2st": c})

    for name in args.emulators:
        emu = build_emulator(name, prior, args)
        fit_seconds = fit_emulator(emu, name, theta_emu, x_emu, args)
        epochs = emu.history.epochs
        # records name the WGAN's generator when it is not the first runs' MLP (the report keys on it)
        label = f"wgan-{args.wgan_generator}" if name == "wgan" and args.wgan_generator != "mlp" else name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = fidelity(
                emu, sim, theta_test, num_samples=args.num_samples, summary=comp, seed=0, classifier=args.classifier
            )
        within = rep.power_within(0.05, 2.0)
        emit(
            {
                "stage": "fidelity",
                "emulator": label,
                "config": emu.get_config(),
                "epochs": epochs,
                "fit_seconds": fit_seconds,
                "theta_test": rep.theta.tolist(),
                "k": rep.k.tolist() if rep.k is not None else None,
                "power_ratio": rep.power_ratio.tolist() if rep.power_ratio is not None else None,
                "power_ratio_err": rep.power_ratio_err.tolist() if rep.power_ratio_err is not None else None,
                "bins_within": int(within.sum()),
                "bins_total": int(within.size),
                "max_abs_deviation": float(np.abs(rep.power_ratio - 1).max()),
                "c2st": rep.c2st.tolist(),
                "mmd": rep.mmd.tolist(),
                "ks": rep.ks_statistic.tolist(),
                "speedup_batch": rep.speedup,
                "num_samples": args.num_samples,
            }
        )
        t0 = time.perf_counter()
        x_emu = np.asarray(emu.simulate(theta_npe.double().numpy(), seed=5))
        emu_seconds = time.perf_counter() - t0
        post_emu = sbikit.NPE(prior, device=args.device).fit(theta_npe, comp.encode(x_emu), **npe_kw)
        del x_emu
        c = posterior_c2st(post_emu, post_real, s_obs, args)
        emit(
            {
                "stage": "npe",
                "emulator": label,
                "num_npe": args.num_npe,
                "c2st": c,
                "emulator_seconds": emu_seconds,
                "simulator_seconds": sim_seconds,
                "speedup_npe_set": sim_seconds / emu_seconds,
            }
        )
    return records


def load_records(paths: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


def report(recs: list[dict[str, Any]]) -> str:
    """Markdown table of the records: each fidelity row with the NPE record of the same emulator
    that follows it (the same run), and the last floor of each task."""
    lines = [
        "| task | emulator | fit seed | train sims | epochs | fit (s) | P(k) bins within 5% | max abs(ratio - 1) "
        "| C2ST fidelity (mean) | speed-up | NPE C2ST mean / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floors: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(recs):
        if r["stage"] == "npe" and r["emulator"] == "simulator (fresh noise)":
            floors[r["task"]] = r
        if r["stage"] != "fidelity":
            continue
        n = None  # the first NPE record of this emulator before its next fidelity row
        for q in recs[i + 1 :]:
            if q["task"] == r["task"] and q["emulator"] == r["emulator"]:
                n = q if q["stage"] == "npe" else None
                break
        npe_txt = f"{np.mean(n['c2st']):.3f} / {np.max(n['c2st']):.3f}" if n else "-"
        speed = n["speedup_npe_set"] if n else r["speedup_batch"]
        lines.append(
            f"| {r['task']} {r['size']}x{r['size']} | {r['emulator']} | {r.get('fit_seed', 0)} | {r['num_train']} "
            f"| {r['epochs']} | {r['fit_seconds']:.0f} | {r['bins_within']}/{r['bins_total']} "
            f"| {r['max_abs_deviation']:.3f} | {np.mean(r['c2st']):.3f} | {speed:.2g}x | {npe_txt} |"
        )
    for task, n in floors.items():
        lines.append(
            f"| {task} | NPE floor: fresh real simulations | - | - | - | - | - | - | - | - "
            f"| {np.mean(n['c2st']):.3f} / {np.max(n['c2st']):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("sersic", "grf"), default="sersic")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--emulators", nargs="+", choices=EMULATORS, default=list(EMULATORS))
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-npe", type=int, default=50_000)
    parser.add_argument("--num-observations", type=int, default=10)
    parser.add_argument("--num-posterior-samples", type=int, default=2000)
    parser.add_argument("--num-theta-test", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=1000, help="outputs per theta for fidelity")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--max-epochs", type=int, default=200, help="emulators and compressor")
    parser.add_argument("--patience", type=int, default=20, help="CVAE early stopping")
    parser.add_argument("--cvae-decoder", choices=("mlp", "pca", "conv", "spectral"), default="pca")
    parser.add_argument("--hidden-features", type=int, default=256, help="width of the emulators' networks")
    parser.add_argument("--num-components", type=int, default=64, help="basis size (CVAE decoder / WGAN generator pca)")
    parser.add_argument("--wgan-generator", choices=("mlp", "pca", "conv"), default="mlp")
    parser.add_argument("--cvae-schedule", choices=("plateau", "cosine"), default="plateau")
    parser.add_argument(
        "--cvae-learning-rate", type=float, default=None, help="the CVAE's peak learning rate (default: the library's)"
    )
    parser.add_argument("--cvae-amplitude-head", action="store_true", help="ConditionalVAE(amplitude_head=True)")
    parser.add_argument("--wgan-learning-rate", type=float, default=1e-3)
    parser.add_argument("--edge-fraction", type=float, default=0.0, help="emulators' training design (0: prior draws)")
    parser.add_argument(
        "--edge-concentration", type=float, default=0.5, help="Beta(c, c) shape of the design's edge rows"
    )
    parser.add_argument("--fit-seed", type=int, default=0, help="seed of the emulators' weights and batches")
    parser.add_argument("--npe-max-epochs", type=int, default=None)
    parser.add_argument("--npe-floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in seconds")
    parser.add_argument("--out", default=None, help="JSON lines file (default benchmarks/results/emulators.jsonl)")
    parser.add_argument("--report", nargs="*", help="print the markdown table of these result files and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report is not None:
        print(report(load_records(args.report or [str(ROOT / "results" / "emulators.jsonl")])))
        return 0
    if args.quick:
        args.size, args.num_train, args.num_npe, args.num_observations = 16, 300, 1000, 2
        args.num_theta_test, args.num_samples, args.num_posterior_samples = 2, 100, 200
        args.max_epochs, args.npe_max_epochs, args.channels = 2, 3, [4, 8]
    # the standard C2ST classifier (sbibm's MLP); quick runs take an early-stopping one (seconds)
    args.classifier = MLPClassifier(early_stopping=True, random_state=0) if args.quick else None
    if args.out is None:
        name = "emulators_quick.jsonl" if args.quick else "emulators.jsonl"
        args.out = str((Path("/tmp") if args.quick else ROOT / "results") / name)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    records = run(args)
    logger.info("finished in %.0f s", time.perf_counter() - t0)
    print(report(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
