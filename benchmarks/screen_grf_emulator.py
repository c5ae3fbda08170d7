"""Screen of ``ConditionalVAE(decoder="spectral")`` on ``grf``: power spectrum at prior draws and the box's corners.

Training set: 5,000 ``grf`` 32 x 32 fields, parameters from the prior (seed 0) or, with
``--edge-fraction f``, from ``edge_weighted_design(prior, 5000, edge_fraction=f, seed=0)``;
simulated with seed 1 (``--data-seed``); fit seed 0 (``--fit-seed``). Checks
(``FidelityReport.power_within(0.05, 2)``, 1,000 outputs per parameter, fidelity seed 31):
the emulator benchmark's 8 prior draws (seed 2), the 4 corners of the box (1% of each range
inside) and 40 fresh prior draws (seed 30). Prints one JSON line per check set (the per-bin
ratios of the first two), then the emulator's exact power error on a 5 x 5 grid of the box
(:func:`exact_power_errors`) and the ELBO's gap to the emulator's exact log-likelihood at the
8 draws (:func:`elbo_gap`) and the exact ``KL(grf || emulator)`` over ``k != 0`` at 5,000
prior draws (:func:`exact_kl`), and saves the emulator (``--save``); ``--load`` evaluates a
saved one instead of fitting.

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
    parser.add_argument("--fit-seed", type=int, default=0, help="seed of the weights and batches")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay of the fit")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the library's)")
    parser.add_argument("--load", type=Path, default=None, help="evaluate this saved emulator instead of fitting one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    sim = simulators.get("grf", size=32)
    fit_cpu = 0.0
    if args.load is not None:  # evaluate a saved emulator (the fit arguments then only label the lines)
        emu = ConditionalVAE.load(args.load)
    else:
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
            seed=args.fit_seed,
            device="cpu",
            progress=False,
            max_epochs=args.max_epochs,
            schedule=args.schedule,
            patience=args.patience,
            weight_decay=args.weight_decay,
            learning_rate=args.learning_rate,
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
            **{k: v for k, v in vars(args).items() if k not in ("save", "load")},
            "epochs": emu.history.epochs if emu.history is not None else None,
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
    print(json.dumps({"set": "exact_grid5", **exact_power_errors(emu, sim)}), flush=True)
    print(json.dumps({"set": "elbo_gap", **elbo_gap(emu, sim, sets["bench8"])}), flush=True)
    print(json.dumps({"set": "exact_kl", **exact_kl(emu, sim)}), flush=True)


@torch.no_grad()
def exact_kl(emu: ConditionalVAE, sim: simulators.Simulator, num_theta: int = 5000) -> dict[str, float]:
    """``KL(grf || emulator)`` per field over the Fourier modes ``k != 0``, exactly, at prior draws.

    Both are Gaussians diagonal in Fourier space (the emulator's level enters only ``k = 0``), so per field
    ``KL = 1/2 sum_k (r - 1 - log r)`` with ``r = P(k) / a^2(k)``: the spectrum's error weighted
    as the likelihood weighs it (by number of modes). The ``k = 0`` mode is left out: ``grf``'s
    fields have exactly zero mean, so there the KL is infinite for any emulator with a
    positive variance and says nothing about ``P(k)``.

    Returns:
        ``kl_nats_per_field``: the mean over ``num_theta`` prior draws (seed 50); ``kl_max``: the largest.
    """
    theta = sim.prior.sample(num_theta, seed=50)
    kls = []
    k = torch.as_tensor(sim._k)
    for start in range(0, num_theta, 500):
        th = theta[start : start + 500]
        truth = torch.as_tensor(sim.power_spectrum(th.double().numpy()))[:, k > 0]
        r = truth / emu.power_spectrum(th).double()[:, k > 0]
        kls.append(0.5 * (r - 1 - torch.log(r)).sum(1))
    kl = torch.cat(kls)
    return {"kl_nats_per_field": round(float(kl.mean()), 4), "kl_max": round(float(kl.max()), 4)}


@torch.no_grad()
def elbo_gap(
    emu: ConditionalVAE, sim: simulators.Simulator, theta: torch.Tensor, fields: int = 200
) -> dict[str, list[float]]:
    """How far the ELBO falls below the emulator's exact log-likelihood, per field, at each ``theta``.

    ``fields`` fresh ``grf`` fields per parameter (seed 41); the ELBO is averaged over 20
    reparameterisation draws per field. A gap near 0 means the encoder is the exact posterior
    and training maximised the likelihood itself.

    Returns:
        ``gap_nats``: mean gap per parameter; ``gap_se``: its standard error over the fields.
    """
    gaps, ses = [], []
    for row in theta:
        th = row[None].expand(fields, -1)
        x = sim.simulate(th.double().numpy(), seed=41)
        exact = emu.log_likelihood(th, x)
        elbo = torch.stack([emu.elbo(th, x, seed=s) for s in range(20)]).mean(0)
        gap = (exact - elbo).double()
        gaps.append(float(gap.mean()))
        ses.append(float(gap.std() / np.sqrt(fields)))
    return {"gap_nats": np.round(gaps, 3).tolist(), "gap_se": np.round(ses, 3).tolist()}


@torch.no_grad()
def exact_power_errors(emu: ConditionalVAE, sim: simulators.Simulator, points: int = 5) -> dict[str, float]:
    """The emulator's own power spectrum against ``grf``'s, without Monte Carlo error.

    ``decoder="spectral"`` has power ``x_scale^2 (t^2 + n^2)`` in each Fourier mode
    (:meth:`ConditionalVAE.power_spectrum`); compared
    with ``A k^-B`` mode by mode (``k != 0``) on a ``points x points`` grid of the box from 1%
    to 99% of each range (corners included).

    Returns:
        ``max_abs_deviation`` over all modes and grid points, the same over the modes with
        ``|k| < 0.3`` (the two lowest wave numbers, the lowest k-bin) and over the others.
    """
    unit = torch.linspace(0.01, 0.99, points)
    grid = torch.stack(torch.meshgrid(unit, unit, indexing="ij"), dim=-1).reshape(-1, 2)
    theta = sim.prior.low + (sim.prior.high - sim.prior.low) * grid
    power = emu.power_spectrum(theta).double()
    truth = torch.as_tensor(sim.power_spectrum(theta.double().numpy()))
    k = torch.as_tensor(sim._k)
    dev = (power / truth.clamp_min(1e-300) - 1).abs()[:, k > 0]
    low = k[k > 0] < 0.3
    return {
        "max_abs_deviation": float(dev.max()),
        "max_abs_deviation_lowest_bin": float(dev[:, low].max()),
        "max_abs_deviation_other_bins": float(dev[:, ~low].max()),
    }


if __name__ == "__main__":
    main()
