"""How well each anomaly score separates normal sersic galaxies from injected anomalies (AUROC).

Data: ``simulators.Sersic(size)`` (32 x 32 by default, noise 1 count, galaxies of 100-1000
counts). Training set: ``--num-train`` normal images (theta seed 1, noise seed 2);
calibration set (threshold at ``--fpr``): ``--num-calibration`` fresh normal images (seeds
3/4); test: ``--num-test`` fresh normal images (seeds 5/6) and, for every kind of
:data:`simulators.anomalies.ANOMALY_KINDS`, ``--num-test`` other fresh normal images
(seeds 10 + 2i / 11 + 2i) with one anomaly injected (seed 30 + i, ``--strength``).

Scores (all fitted on the normal training images only):

* ``pca``: :class:`sbikit.density.PCAReconstructionScore` (``--pca-components``);
* ``pca_smooth``: the same with the residual smoothed by the PSF (``smoothing=1`` pixel);
* ``pca_combined``: :class:`sbikit.density.CombinedScore` of ``pca`` and ``pca_smooth`` (the
  larger of the two, each standardised by its median and MAD on the training images);
* ``flow_pca``: :class:`sbikit.density.FlowDensity` on 8 whitened PCA coefficients;
* ``flow_regression``: ``FlowDensity`` on the 5 summaries of a
  :class:`sbikit.compressors.Regression` CNN trained to predict theta;
* ``flow_autoencoder``: ``FlowDensity`` on the 8 summaries of an
  :class:`sbikit.compressors.AutoEncoder`;
* ``wgan``: :class:`sbikit.density.WGANAnomalyScore` of an unconditional
  :class:`sbikit.emulators.ConditionalWGAN` (``fit(None, x)``); the record also holds the
  AUROC of ``G`` alone, ``C`` alone and of ``lam`` in {0, 0.1, 0.5, 0.9, 1};
* ``wgan_pca``: the same with the WGAN's ``generator="pca"`` (64 principal components of the
  training images; the reconstruction ``G(z*)`` then lies in their span).

Per score and kind the record holds the AUROC and the detection rate (true-positive rate)
at the threshold calibrated for ``--fpr``, and the false-positive rate realised on the
normal test images. Records are appended to ``--out`` (JSON lines) as each score finishes.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/anomalies.py --out benchmarks/results/anomalies.jsonl
    python benchmarks/anomalies.py --report benchmarks/results/anomalies.jsonl
    python benchmarks/anomalies.py --quick          # smoke run in seconds (16 x 16, tiny budgets)
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
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from sbikit.compressors import PCA, AutoEncoder, Regression  # noqa: E402
from sbikit.density import (  # noqa: E402
    AnomalyDetector,
    CombinedScore,
    FlowDensity,
    PCAReconstructionScore,
    WGANAnomalyScore,
    auroc,
    threshold_at_fpr,
)
from simulators.anomalies import ANOMALY_KINDS, inject  # noqa: E402
from simulators.sersic import Sersic  # noqa: E402

logger = logging.getLogger("benchmarks.anomalies")

SCORES = ("pca", "pca_smooth", "pca_combined", "flow_pca", "flow_regression", "flow_autoencoder", "wgan", "wgan_pca")
LAMS = (0.0, 0.1, 0.5, 0.9, 1.0)
QUICK = {
    "size": 16,
    "num_train": 300,
    "num_calibration": 200,
    "num_test": 100,
    "channels": [4, 8],
    "max_epochs": 2,
    "wgan_epochs": 1,
    "wgan_latent": 4,
    "wgan_hidden": 16,
    "wgan_steps": 5,
    "encoder_epochs": 2,
}


def make_data(args: argparse.Namespace) -> dict[str, Any]:
    """Normal training, calibration and test images, and injected test anomalies per kind."""
    sim = Sersic(args.size, psf_sigma=args.psf_sigma)

    def normal(n: int, s_theta: int, s_noise: int) -> tuple[torch.Tensor, np.ndarray]:
        theta = sim.prior.sample(n, seed=s_theta)
        return theta, np.asarray(sim.simulate(theta.double().numpy(), seed=s_noise))

    theta_train, x_train = normal(args.num_train, 1, 2)
    _, x_cal = normal(args.num_calibration, 3, 4)
    _, x_test = normal(args.num_test, 5, 6)
    anomalies = {}
    for i, kind in enumerate(args.kinds):
        _, base = normal(args.num_test, 10 + 2 * i, 11 + 2 * i)
        anomalies[kind] = inject(base, kind, seed=30 + i, strength=args.strength, psf_sigma=args.psf_sigma)
    return {"theta_train": theta_train, "x_train": x_train, "x_cal": x_cal, "x_test": x_test, "anomalies": anomalies}


def fit_score(name: str, data: dict[str, Any], args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Fit one score on the normal training images -> (an AnomalyScore on images, settings)."""
    x, theta = data["x_train"], data["theta_train"]
    train = {"seed": 0, "progress": False, "device": args.device}
    channels = tuple(args.channels)
    if name == "pca_combined":
        parts = [
            PCAReconstructionScore(args.pca_components, smoothing=sm).fit(x, device=args.device)
            for sm in (0.0, args.psf_sigma)
        ]
        return CombinedScore(parts, x_reference=x), {
            "num_components": args.pca_components,
            "smoothing": [0.0, args.psf_sigma],
        }
    if name in ("pca", "pca_smooth"):
        smoothing = args.psf_sigma if name == "pca_smooth" else 0.0
        score = PCAReconstructionScore(args.pca_components, smoothing=smoothing).fit(x, device=args.device)
        return score, {"num_components": args.pca_components, "smoothing": smoothing}
    if name in ("flow_pca", "flow_regression", "flow_autoencoder"):
        if name == "flow_pca":
            comp: Any = PCA(8).fit(x, device=args.device)
        elif name == "flow_regression":
            comp = Regression(channels=channels).fit(x, theta, max_epochs=args.max_epochs, patience=10, **train)
        else:
            comp = AutoEncoder(8, channels=channels).fit(x, max_epochs=args.max_epochs, patience=10, **train)
        summaries = comp.encode(x)
        density = FlowDensity().fit(summaries, **train)
        info = {
            "compressor": type(comp).__name__,
            "num_summaries": int(comp.num_summaries),
            "compressor_epochs": None if comp.history is None else comp.history.epochs,
            "flow_epochs": density.history.epochs if density.history else None,
        }
        return AnomalyDetector(lambda v: density.score(comp.encode(v))), info
    if name in ("wgan", "wgan_pca"):
        from sbikit.emulators import ConditionalWGAN

        generator = "pca" if name == "wgan_pca" else "mlp"
        wgan = ConditionalWGAN(
            args.wgan_latent, hidden_features=args.wgan_hidden, channels=channels, generator=generator
        )
        wgan.fit(None, x, max_epochs=args.wgan_epochs, **train)
        score = WGANAnomalyScore(
            wgan, lam=args.lam, num_steps=args.wgan_steps, channels=channels, hidden_features=args.wgan_hidden
        )
        score.fit(x, max_epochs=args.encoder_epochs, **train)
        info = {
            "generator": generator,
            "latent_dim": args.wgan_latent,
            "hidden_features": args.wgan_hidden,
            "wgan_epochs": args.wgan_epochs,
            "encoder_epochs": score.history.epochs if score.history else None,
            "num_steps": args.wgan_steps,
            "lam": args.lam,
            "component_scales": list(score.component_scales or ()),
        }
        return score, info
    raise ValueError(f"unknown score {name!r}")


def evaluate(name: str, score: Any, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """AUROC and detection rate at the calibrated threshold for every kind."""
    t0 = time.process_time()
    threshold = threshold_at_fpr(score.score(data["x_cal"]), args.fpr)  # what score.calibrate(x_cal) sets
    comps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if isinstance(score, WGANAnomalyScore):
        g, c = (t.double().numpy() for t in score.components(data["x_test"]))
        comps["normal"] = (g, c)
        s_normal = score.combine(g, c).double().numpy()
    else:
        s_normal = score.score(data["x_test"]).double().numpy()
    out: dict[str, Any] = {"realised_fpr": float((s_normal > threshold).mean()), "auroc": {}, "tpr": {}}
    extra: dict[str, Any] = {}
    for kind, xa in data["anomalies"].items():
        if isinstance(score, WGANAnomalyScore):
            g, c = (t.double().numpy() for t in score.components(xa))
            comps[kind] = (g, c)
            s_anom = score.combine(g, c).double().numpy()
        else:
            s_anom = score.score(xa).double().numpy()
        out["auroc"][kind] = auroc(s_normal, s_anom)
        out["tpr"][kind] = float((s_anom > threshold).mean())
    if comps:
        g0, c0 = score.component_scales
        gn, cn = comps.pop("normal")
        extra["auroc_by_lam"] = {
            str(lam): {
                k: auroc(lam * gn / g0 + (1 - lam) * cn / c0, lam * g / g0 + (1 - lam) * c / c0)
                for k, (g, c) in comps.items()
            }
            for lam in LAMS
        }
    out["score_cpu_s"] = time.process_time() - t0
    return {**out, **extra}


def report(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    kinds = list(ANOMALY_KINDS)
    head = "| score | size | train | " + " | ".join(f"{k} AUROC (TPR)" for k in kinds)
    out = [head + " | FPR target / realised | fit CPU s | score CPU s |", "|---" * (len(kinds) + 6) + "|"]
    for r in rows:
        cells = [f"{r['auroc'][k]:.3f} ({r['tpr'][k]:.2f})" if k in r["auroc"] else "-" for k in kinds]
        out.append(
            f"| {r['score']} | {r['size']} | {r['num_train']} | "
            + " | ".join(cells)
            + f" | {r['fpr']:.2f} / {r['realised_fpr']:.3f} | {r['fit_cpu_s']:.0f} | {r['score_cpu_s']:.0f} |"
        )
    for size in sorted({r["size"] for r in rows}):
        same = [r for r in rows if r["size"] == size]
        best = []
        for k in kinds:
            have = [r for r in same if k in r["auroc"]]
            top = max(have, key=lambda r: r["auroc"][k]) if have else None
            best.append("-" if top is None else f"{top['auroc'][k]:.3f} ({top['score']})")
        out.append(f"| **best** | {size} | | " + " | ".join(best) + " | | | |")
    lam_rows = [r for r in rows if "auroc_by_lam" in r]
    if lam_rows:
        out += ["", "WGAN score AUROC by lambda (lambda = 1: residual G only; 0: critic features C only)", ""]
        out += ["| size | lambda | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
        for r in lam_rows:
            for lam, per in r["auroc_by_lam"].items():
                out.append(
                    f"| {r['size']} | {lam} | " + " | ".join(f"{per.get(k, float('nan')):.3f}" for k in kinds) + " |"
                )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", nargs="+", choices=SCORES, default=list(SCORES))
    parser.add_argument("--kinds", nargs="+", choices=ANOMALY_KINDS, default=list(ANOMALY_KINDS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-calibration", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--strength", type=float, default=1.0, help="multiplies the anomalies' amplitudes")
    parser.add_argument("--fpr", type=float, default=0.05, help="false-positive rate of the calibrated threshold")
    parser.add_argument("--pca-components", type=int, default=8)
    parser.add_argument("--psf-sigma", type=float, default=1.0, help="the Sersic PSF; pca_smooth smooths by it")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--max-epochs", type=int, default=100, help="compressors (early stopping, patience 10)")
    parser.add_argument("--wgan-epochs", type=int, default=100)
    parser.add_argument("--wgan-latent", type=int, default=32)
    parser.add_argument("--wgan-hidden", type=int, default=128)
    parser.add_argument("--wgan-steps", type=int, default=100, help="Adam steps on z per input")
    parser.add_argument("--encoder-epochs", type=int, default=50)
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 x 16 images and tiny budgets")
    parser.add_argument("--out", default=str(ROOT / "results" / "anomalies.jsonl"))
    parser.add_argument("--report", nargs="*", help="print the Markdown table of these result files and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report is not None:
        print(report(args.report or [args.out]))
        return 0
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        if args.out == str(ROOT / "results" / "anomalies.jsonl"):
            args.out = str(ROOT / "results" / "anomalies_quick.jsonl")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = make_data(args)
    logger.info(
        "simulated %d training, %d calibration and %d x %d test images in %.1f s",
        args.num_train,
        args.num_calibration,
        args.num_test,
        1 + len(args.kinds),
        time.perf_counter() - t0,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.scores:
        c0, w0 = time.process_time(), time.perf_counter()
        score, info = fit_score(name, data, args)
        fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - w0
        rec = {
            "score": name,
            "size": args.size,
            "num_train": args.num_train,
            "num_calibration": args.num_calibration,
            "num_test": args.num_test,
            "strength": args.strength,
            "fpr": args.fpr,
            "channels": list(args.channels),
            "settings": info,
            "fit_cpu_s": fit_cpu,
            "fit_wall_s": fit_wall,
            **evaluate(name, score, data, args),
            "quick": bool(args.quick),
            "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}",
        }
        logger.info("%s: AUROC %s (fit %.0f s CPU)", name, {k: round(v, 3) for k, v in rec["auroc"].items()}, fit_cpu)
        records.append(rec)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    tmp = out.with_suffix(".last.jsonl")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(report([str(tmp)]))
    tmp.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
