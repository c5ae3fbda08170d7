"""How much of the prior an emulator's power spectrum covers: P(k) agreement at many prior draws.

``benchmarks/emulators.py`` checks the power-spectrum ratio at 8 parameters drawn from the
prior; this script fits the same CVAE (5,000 sersic simulations, seeds 0/1, fit seed 0, the
parameters drawn from the prior, or with ``--edge-fraction f`` from
``edge_weighted_design(prior, 5000, edge_fraction=f, concentration=c, seed=0)``, ``c`` from
``--edge-concentration`` (0.5, the arcsine law, unless given); ``--amplitude-head`` for
``amplitude_head=True``,
256 hidden units, latent 8, ``decoder="pca"`` with 64 components) and checks every k-bin
(``FidelityReport.power_within(0.05, 2)``) at ``--num-theta`` fresh prior draws (seed 30),
``--num-samples`` outputs each, reporting the share of draws where every bin agrees, and
which parameters the failing draws have. ``--classifier logistic`` replaces fidelity's
standard C2ST classifier by a logistic regression (about 20 s less per draw on one core) for
long sweeps: the power spectra come from the same seeded draws, so the P(k) figures are the
same either way. ``--task grf --decoder spectral`` sweeps the Gaussian random field with the
stationary-filter decoder instead (``--hidden-features`` sets the width of either);
``--vertices`` adds the check at every vertex of the prior box, 1% of each range inside.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/emulator_prior_sweep.py --out benchmarks/results/emulator_prior_sweep.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
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
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-theta", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--edge-fraction", type=float, default=0.0, help="training design (0: prior draws)")
    parser.add_argument("--edge-concentration", type=float, default=0.5, help="Beta(c, c) shape of the edge rows")
    parser.add_argument("--amplitude-head", action="store_true", help="ConditionalVAE(amplitude_head=True)")
    parser.add_argument(
        "--classifier",
        choices=("standard", "logistic"),
        default="standard",
        help="fidelity's C2ST classifier; 'logistic' is ~10x faster, the P(k) figures do not depend on it",
    )
    parser.add_argument("--task", choices=("sersic", "grf"), default="sersic")
    parser.add_argument("--decoder", choices=("pca", "spectral"), default="pca", help="the CVAE's decoder")
    parser.add_argument("--hidden-features", type=int, default=256)
    parser.add_argument("--vertices", action="store_true", help="also check every vertex of the prior box")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    sim = simulators.get(args.task)
    if args.edge_fraction > 0:
        theta = edge_weighted_design(
            sim.prior, args.num_train, edge_fraction=args.edge_fraction, concentration=args.edge_concentration, seed=0
        )
    else:
        theta = sim.prior.sample(args.num_train, seed=0)
    x = sim.simulate(theta.double().numpy(), seed=1)
    start = time.process_time()
    emu = ConditionalVAE(
        8,
        hidden_features=args.hidden_features,
        decoder=args.decoder,
        num_components=64,
        amplitude_head=args.amplitude_head,
        prior=sim.prior,
    )
    emu.fit(theta, x, seed=0, device="cpu", progress=False)
    fit_cpu = time.process_time() - start
    theta_test = sim.prior.sample(args.num_theta, seed=30)
    classifier = LogisticRegression(max_iter=1000) if args.classifier == "logistic" else None
    report = fidelity(emu, sim, theta_test, num_samples=args.num_samples, seed=31, classifier=classifier)
    ok = report.power_within(0.05, 2.0)  # (m, bins)
    dev = np.abs(report.power_ratio - 1.0)
    every = ok.all(1)
    lo, hi = sim.prior.low.numpy(), sim.prior.high.numpy()
    position = (theta_test.numpy() - lo) / (hi - lo)  # where in the box, 0..1 per parameter
    result = {
        "num_theta": args.num_theta,
        "edge_fraction": args.edge_fraction,
        "edge_concentration": args.edge_concentration,
        "amplitude_head": args.amplitude_head,
        "num_samples": args.num_samples,
        "classifier": args.classifier,
        "fit_cpu_s": fit_cpu,
        "epochs": emu.history.epochs,
        "theta_all_bins_within": int(every.sum()),
        "bins_within": int(ok.sum()),
        "bins": int(ok.size),
        "max_dev_per_theta": dev.max(1).tolist(),
        "failing_theta_box_position": position[~every].round(3).tolist(),
        "theta_names": list(sim.theta_names),
    }
    if args.vertices:
        d = len(lo)
        corners = np.array([[(i >> j) & 1 for j in range(d)] for i in range(2**d)], dtype=float)
        theta_v = torch.as_tensor(lo + (hi - lo) * (0.01 + 0.98 * corners), dtype=torch.float32)
        rep_v = fidelity(emu, sim, theta_v, num_samples=args.num_samples, seed=32, classifier=classifier)
        ok_v = rep_v.power_within(0.05, 2.0)
        result.update(
            {
                "vertices": theta_v.tolist(),
                "vertex_bins_within": int(ok_v.sum()),
                "vertex_bins": int(ok_v.size),
                "vertices_all_bins_within": int(ok_v.all(1).sum()),
                "vertex_max_dev": np.abs(rep_v.power_ratio - 1.0).max(1).tolist(),
            }
        )
    result.update({"task": args.task, "decoder": args.decoder, "hidden_features": args.hidden_features})
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
