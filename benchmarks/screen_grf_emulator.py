"""Screen of ``ConditionalVAE(decoder="spectral")`` on ``grf``: power spectrum at prior draws and the box's corners.

Training set: 5,000 ``grf`` 32 x 32 fields, parameters from the prior (seed 0) or, with
``--edge-fraction f``, from ``edge_weighted_design(prior, 5000, edge_fraction=f, seed=0)``;
simulated with seed 1 (``--data-seed``); fit seed 0. Checks (``FidelityReport.power_within(0.05, 2)``, 1,000
outputs per parameter, fidelity seed 31): the emulator benchmark's 8 prior draws (seed 2),
the 4 corners of the box (1% of each range inside) and 40 fresh prior draws (seed 30). Prints
one JSON line per check set (the per-bin ratios of the first two) and saves the emulator.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/screen_grf_emulator.py --edge-fraction 0.5 --schedule cosine \\
        --max-epochs 150 --patience 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import simulators  # noqa: E402
from sbikit.emulators import ConditionalVAE, edge_weighted_design, fidelity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-features", type=int, default=128)
    parser.add_argument("--edge-fraction", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("plateau", "cosine"), default="plateau")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--save", type=Path, default=None, help="write the fitted emulator here")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of the training simulations")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    sim = simulators.get("grf", size=32)
    if args.edge_fraction > 0:
        theta = edge_weighted_design(sim.prior, 5000, edge_fraction=args.edge_fraction, seed=0)
    else:
        theta = sim.prior.sample(5000, seed=0)
    x = sim.simulate(theta.double().numpy(), seed=args.data_seed)
    start = time.process_time()
    emu = ConditionalVAE(decoder="spectral", hidden_features=args.hidden_features, prior=sim.prior)
    emu.fit(
        theta,
        x,
        seed=0,
        device="cpu",
        progress=False,
        max_epochs=args.max_epochs,
        schedule=args.schedule,
        patience=args.patience,
    )
    fit_cpu = time.process_time() - start
    if args.save is not None:
        emu.save(args.save)
    lo, hi = sim.prior.low, sim.prior.high
    unit = torch.tensor([[a, b] for a in (0, 1) for b in (0, 1)], dtype=torch.float32)
    corners = lo + (hi - lo) * (0.01 + 0.98 * unit)
    sets = {"bench8": sim.prior.sample(8, seed=2), "corners": corners, "sweep40": sim.prior.sample(40, seed=30)}
    for name, th in sets.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = fidelity(emu, sim, th, num_samples=1000, seed=31, classifier=LogisticRegression(max_iter=1000))
        ok = rep.power_within(0.05, 2.0)
        record = {
            "set": name,
            **{k: v for k, v in vars(args).items() if k != "save"},
            "epochs": emu.history.epochs,
            "fit_cpu_s": round(fit_cpu, 1),
            "bins_within": int(ok.sum()),
            "bins": int(ok.size),
            "theta_all_bins_within": int(ok.all(1).sum()),
            "num_theta": len(th),
            "max_abs_deviation": float(np.abs(rep.power_ratio - 1).max()),
            "c2st_image_summary": np.round(rep.c2st, 3).tolist(),
        }
        if name != "sweep40":
            record["power_ratio"] = np.round(rep.power_ratio, 3).tolist()
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
