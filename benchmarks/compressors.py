"""How much information each image compressor keeps, measured against the exact posterior.

Task ``grf`` (32 x 32 Gaussian random field, theta = (A, B), prior U[0.1, 1.25]^2): one
training set ``theta = prior.sample(n, seed=n)``, ``x = simulate(theta, seed=n + 1)``. For each
compressor the summaries of the training images are computed and ``sbikit.NPE(prior)`` (library
defaults) is trained on ``(theta, summaries)``; the jointly trained CNN is the default
``ConvEncoder`` (what ``sbikit.NPE(prior, embedding="cnn")`` builds) with NPE's CNN defaults.
Contrastive pairs are two simulations with the same theta (``x_pair = simulate(theta, seed=n + 2)``)
with rotations/flips on top.

For ``--num-observations`` observations simulated at (A, B) = (1, 0.5) (seed 777), the
posterior samples are compared with emcee samples of the exact likelihood
(:func:`sbikit.mcmc.reference_posterior`, cached in ``benchmarks/references/grf_compressors.npz``):
C2ST (standard sbibm MLP, 5-fold) and the volume ratio ``sqrt(det Sigma_exact / det Sigma_NPE)``
of the sample covariances (1 = no information lost, < 1 = broader than exact).

Task ``sersic`` (32 x 32 galaxy, 5 parameters): ``NPE(prior, embedding="cnn")`` on the images;
C2ST against emcee for 5 observations drawn from the prior (seeds 301/302).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/compressors.py --task grf --num-simulations 20000 \\
        --out benchmarks/results/compressors.jsonl
    python benchmarks/compressors.py --report benchmarks/results/compressors.jsonl

Records are appended as each compressor finishes, so an interrupted run keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import logging
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

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit.compressors import PCA, VAE, AutoEncoder, Contrastive, Regression  # noqa: E402
from sbikit.diagnostics.c2st import c2st  # noqa: E402
from sbikit.mcmc import reference_posterior  # noqa: E402

logger = logging.getLogger("benchmarks.compressors")

COMPRESSORS = ("joint_cnn", "regression", "contrastive", "vae", "autoencoder", "pca")
THETA_TRUE = {"grf": [1.0, 0.5]}
OBS_SEED = {"grf": 777, "sersic": 302}
REFERENCES = ROOT / "references"


def observations(task: str, num: int) -> tuple[np.ndarray, np.ndarray]:
    """True parameters ``(num, d)`` and observations ``(num, *x_shape)``."""
    sim = simulators.get(task)
    if task in THETA_TRUE:
        theta = np.tile(np.asarray(THETA_TRUE[task], dtype=np.float64), (num, 1))
    else:
        theta = sim.prior.sample(num, seed=301).double().numpy()
    return theta, np.asarray(sim.simulate(theta, seed=OBS_SEED[task]))


def references(task: str, num_obs: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(theta_true, x_obs, reference samples (num_obs, num_samples, d))``, cached as .npz."""
    path = REFERENCES / f"{task}_compressors.npz"
    theta, x = observations(task, num_obs)
    if path.exists():
        data = np.load(path)
        if data["samples"].shape[:2] == (num_obs, num_samples) and np.allclose(data["x"], x):
            return theta, x, data["samples"]
    sim = simulators.get(task)
    samples = []
    for i in range(num_obs):
        t0 = time.perf_counter()
        res = reference_posterior(sim, x[i], num_samples=num_samples, seed=1000 + i)
        samples.append(res.samples.double().numpy())
        logger.info(
            "reference %d/%d: %.1f s, tau %s, converged %s",
            i + 1,
            num_obs,
            time.perf_counter() - t0,
            np.round(res.tau, 1).tolist(),
            res.converged,
        )
    out = np.stack(samples)
    REFERENCES.mkdir(exist_ok=True)
    np.savez_compressed(path, theta=theta, x=x, samples=out.astype(np.float32))
    return theta, x, out


def volume_ratio(exact: np.ndarray, approx: np.ndarray) -> float:
    """``sqrt(det Sigma_exact / det Sigma_approx)`` from sample covariances."""
    return float(np.sqrt(np.linalg.det(np.cov(exact.T)) / np.linalg.det(np.cov(approx.T))))


def run_one(
    name: str,
    sim: simulators.Simulator,
    theta: torch.Tensor,
    x: torch.Tensor,
    x_pair: torch.Tensor | None,
    x_obs: np.ndarray,
    ref: np.ndarray,
    args: argparse.Namespace,
) -> dict:
    fit_kw = {"seed": 0, "progress": False, "device": args.device, "max_epochs": args.max_epochs}
    comp_kw = {"patience": args.patience}
    channels = tuple(args.channels)
    k = args.num_summaries
    t0, c0 = time.perf_counter(), time.process_time()
    comp = None
    if name == "pca":
        comp = PCA(k).fit(x, device=args.device)
    elif name == "autoencoder":
        comp = AutoEncoder(k, channels=channels).fit(x, **fit_kw, **comp_kw)
    elif name == "vae":
        comp = VAE(k, channels=channels).fit(x, **fit_kw, **comp_kw)
    elif name == "contrastive":
        comp = Contrastive(k, channels=channels).fit(x, x_pair=x_pair, **fit_kw, **comp_kw)
    elif name == "regression":
        comp = Regression(channels=channels).fit(x, theta, **fit_kw, **comp_kw)
    comp_wall, comp_cpu = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    if comp is None:  # joint CNN
        from sbikit.compressors import ConvEncoder

        emb = ConvEncoder(sim.x_shape, max(8, 4 * sim.dim), channels=channels)
        post = sbikit.NPE(sim.prior, embedding=emb, device=args.device).fit(
            theta, x, seed=0, progress=False, max_epochs=args.max_epochs, patience=args.patience
        )
        obs_input = torch.as_tensor(x_obs, dtype=torch.float32)
    else:
        s = comp.encode(x)
        post = sbikit.NPE(sim.prior, device=args.device).fit(theta, s, seed=0, progress=False)
        obs_input = comp.encode(x_obs)
    npe_wall, npe_cpu = time.perf_counter() - t1, time.process_time() - c1
    samples = post.sample(args.num_samples, x=obs_input, seed=0).double().numpy()  # (m, n, d)
    c2sts, vols = [], []
    for i in range(len(x_obs)):
        c2sts.append(c2st(samples[i], ref[i], seed=0))
        vols.append(volume_ratio(ref[i], samples[i]))
    rec = {
        "task": args.task,
        "compressor": name,
        "num_simulations": len(theta),
        "num_observations": len(x_obs),
        "num_summaries": None if comp is None else int(comp.num_summaries),
        "channels": list(channels),
        "c2st": c2sts,
        "volume_ratio": vols,
        "c2st_mean": float(np.mean(c2sts)),
        "volume_ratio_mean": float(np.mean(vols)),
        "compressor_wall_s": comp_wall,
        "compressor_cpu_s": comp_cpu,
        "compressor_epochs": None if comp is None or comp.history is None else comp.history.epochs,
        "npe_wall_s": npe_wall,
        "npe_cpu_s": npe_cpu,
        "npe_epochs": post.info.get("epochs"),
        "device": str(post.device),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}",
    }
    logger.info(
        "%s: C2ST %.3f, volume ratio %.3f, compressor %.0f s, NPE %.0f s",
        name,
        rec["c2st_mean"],
        rec["volume_ratio_mean"],
        comp_wall,
        npe_wall,
    )
    return rec


def report(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = [
        "| task | compressor | sims | obs | C2ST mean (min-max) | volume ratio mean (min-max) | "
        "compressor CPU s (epochs) | NPE CPU s (epochs) | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, v = np.asarray(r["c2st"]), np.asarray(r["volume_ratio"])
        ce = "" if r.get("compressor_epochs") is None else f" ({r['compressor_epochs']})"
        out.append(
            f"| {r['task']} | {r['compressor']} | {r['num_simulations']} | {r['num_observations']} | "
            f"{c.mean():.3f} ({c.min():.2f}-{c.max():.2f}) | {v.mean():.3f} ({v.min():.2f}-{v.max():.2f}) | "
            f"{r['compressor_cpu_s']:.0f}{ce} | {r['npe_cpu_s']:.0f} ({r['npe_epochs']}) | {r['device']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("grf", "sersic"), default="grf")
    parser.add_argument("--compressors", nargs="+", choices=COMPRESSORS, default=list(COMPRESSORS))
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--num-observations", type=int, default=None, help="default 20 (grf), 5 (sersic)")
    parser.add_argument("--num-samples", type=int, default=2000, help="posterior and reference samples for C2ST")
    parser.add_argument("--num-summaries", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "results" / "compressors.jsonl"))
    parser.add_argument("--report", nargs="*", help="print the markdown table of these result files and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report is not None:
        print(report(args.report or [args.out]))
        return 0
    torch.set_num_threads(1)
    num_obs = args.num_observations or (20 if args.task == "grf" else 5)
    if args.task == "sersic":
        args.compressors = ["joint_cnn"]
    sim = simulators.get(args.task)
    _, x_obs, ref = references(args.task, num_obs, args.num_samples)
    n = args.num_simulations
    theta = sim.prior.sample(n, seed=n)
    t0 = time.perf_counter()
    x = sim.simulate(theta, seed=n + 1)
    x_pair = sim.simulate(theta, seed=n + 2) if "contrastive" in args.compressors else None
    logger.info("simulated %d (+pairs) in %.1f s", n, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.compressors:
        rec = run_one(name, sim, theta, x, x_pair, x_obs, ref, args)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
