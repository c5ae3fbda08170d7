"""Power of the misspecification check against observations from a shifted simulator.

Task ``sersic`` (32 x 32 galaxy, 5 parameters). Training set: ``theta = prior.sample(n, seed=0)``,
``x = Sersic().simulate(theta, seed=1)``. Two checks, both :class:`sbikit.density.TypicalityCheck`
(k-NN density of a summary, p-value from held-out training simulations):

* ``posterior``: the check an NPE posterior carries (``posterior.check_observation``), on
  the posterior's embedding: here a frozen :class:`sbikit.compressors.Regression` CNN trained
  on the same simulations (its summaries are the predicted ``theta``), with ``sbikit.NPE(prior,
  embedding=regression)`` library defaults on top;
* ``pca+residual``: a check fitted on ``[PCA coefficients (8), log RMS residual of the
  8-component reconstruction]`` of the training images (``TypicalityCheck.fit``), i.e.
  summaries that also describe what the parameters do not explain;
* ``ppc``: :func:`sbikit.diagnostics.posterior_predictive` with the nominal simulator
  (``--ppc-samples`` posterior draws and replicates per observation; the first
  ``--num-ppc`` test observations only, as each costs that many simulations).

Test observations, ``--num-test`` of each, with ``theta`` from the prior (seed 10): the
nominal simulator (the false-alarm rate, expected ``alpha``), ``noise x2``
(``noise_sigma=2``), and wider PSFs (``psf_sigma`` 1.5 and 2 instead of 1). The power is the
share of observations with ``p < alpha`` (``alpha`` = 0.05, the 5% false-alarm rate the
p-values are calibrated to), with its binomial standard error.

``--oracle N`` adds a likelihood-level reference for the PSF: for ``N`` galaxies simulated
with the nominal and with the widest PSF (same noise seed), the maximum of the *exact*
nominal log-likelihood (Nelder-Mead from the best of the true theta and 30 prior draws);
its power is the share of wide-PSF images whose ``-max log L`` exceeds the nominal images'
95% quantile. No check on a single image can do much better than this.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/misspecification.py --out benchmarks/results/misspecification.jsonl
    python benchmarks/misspecification.py --quick          # a smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
from sbikit.compressors import PCA, Regression  # noqa: E402
from sbikit.density import TypicalityCheck  # noqa: E402
from sbikit.diagnostics import posterior_predictive  # noqa: E402
from simulators.sersic import Sersic  # noqa: E402

logger = logging.getLogger("benchmarks.misspecification")

VARIANTS: dict[str, dict[str, float]] = {
    "nominal": {},
    "noise x2": {"noise_sigma": 2.0},
    "psf 1.5": {"psf_sigma": 1.5},
    "psf 2.0": {"psf_sigma": 2.0},
}


def pca_residual_summaries(pca: PCA, x: torch.Tensor) -> torch.Tensor:
    """``(n, k + 1)``: PCA coefficients and the log RMS residual of the reconstruction."""
    z = pca.encode(x)
    resid = (x - pca.decode(z)).flatten(1)
    return torch.cat([z, torch.log(resid.pow(2).mean(1).sqrt())[:, None]], dim=1)


def oracle_power(num: int, psf_sigma: float, seed: int = 77) -> dict[str, float]:
    """Max-likelihood goodness of fit under the nominal simulator: nominal vs wide-PSF images."""
    from scipy import optimize

    sim = Sersic()
    rng = np.random.default_rng(seed)
    theta = sim.prior.sample(num, seed=seed).double().numpy()
    lo, hi = sim.prior.low.double().numpy(), sim.prior.high.double().numpy()
    neg_max = {}
    for name, gen in (("nominal", Sersic()), ("wide", Sersic(psf_sigma=psf_sigma))):
        xs = np.asarray(gen.simulate(theta, seed=seed + 1))
        values = []
        for t, x in zip(theta, xs, strict=True):

            def nll(p: np.ndarray, x: np.ndarray = x) -> float:
                if np.any(p < lo) or np.any(p > hi):
                    return 1e10
                return -float(sim.log_likelihood(p[None], x[None])[0])

            starts = np.vstack([t, sim.prior.sample(30, seed=int(rng.integers(2**31))).double().numpy()])
            start_nll = -np.asarray(sim.log_likelihood(starts, np.repeat(x[None], len(starts), 0)))
            res = optimize.minimize(
                nll, starts[np.argmin(start_nll)], method="Nelder-Mead", options={"maxfev": 800, "fatol": 1e-3}
            )
            values.append(res.fun)
        neg_max[name] = np.asarray(values)
    threshold = np.quantile(neg_max["nominal"], 0.95)
    return {
        "oracle_power": float(np.mean(neg_max["wide"] > threshold)),
        "nominal_median": float(np.median(neg_max["nominal"])),
        "wide_median": float(np.median(neg_max["wide"])),
        "num": num,
        "psf_sigma": psf_sigma,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-simulations", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--num-ppc", type=int, default=200, help="test observations given a posterior predictive check")
    ap.add_argument("--ppc-samples", type=int, default=200)
    ap.add_argument("--max-epochs", type=int, default=40, help="cap for the Regression CNN")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 simulations, 100 tests, 2 epochs")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--oracle", type=int, default=0, help="galaxies for the max-likelihood PSF reference (0: skip)")
    ap.add_argument("--only-oracle", action="store_true", help="run only the oracle")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.quick:
        args.num_simulations, args.num_test, args.max_epochs, args.num_ppc = 1000, 100, 2, 20
    torch.set_num_threads(1)
    if args.oracle:
        rec = oracle_power(args.oracle, VARIANTS["psf 2.0"]["psf_sigma"])
        logger.info("oracle (exact nominal likelihood, max over theta): %s", rec)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps({"check": "oracle max-likelihood", "variant": "psf 2.0", **rec}) + "\n")
        if args.only_oracle:
            return

    sim = Sersic()
    theta = sim.prior.sample(args.num_simulations, seed=0)
    x = sim.simulate(theta, seed=1)
    t0 = time.process_time()
    reg = Regression().fit(x, theta, seed=0, max_epochs=args.max_epochs, patience=10, progress=False)
    t_reg = time.process_time() - t0
    t0 = time.process_time()
    post = sbikit.NPE(sim.prior, embedding=reg, device="cpu").fit(theta, x, seed=0, progress=False)
    t_npe = time.process_time() - t0
    t0 = time.process_time()
    pca = PCA(8).fit(x)
    pca_check = TypicalityCheck.fit(pca_residual_summaries(pca, x), seed=0)
    t_pca = time.process_time() - t0
    logger.info("Regression %.0f s, NPE %.0f s, PCA check %.1f s (CPU)", t_reg, t_npe, t_pca)

    theta_test = sim.prior.sample(args.num_test, seed=10)
    rows = []
    for i, (name, kwargs) in enumerate(VARIANTS.items()):
        x_test = Sersic(**kwargs).simulate(theta_test, seed=11 + i)
        t0 = time.process_time()
        p_ppc = torch.tensor(
            [
                posterior_predictive(post, sim, xo, num_samples=args.ppc_samples, seed=100 + j).pvalue
                for j, xo in enumerate(x_test[: args.num_ppc])
            ]
        )
        logger.info("%s: %d posterior predictive checks in %.0f s CPU", name, len(p_ppc), time.process_time() - t0)
        for check_name, p in (
            ("posterior", post.check_observation(x_test, alpha=args.alpha).p_value),
            ("pca+residual", pca_check.p_value(pca_residual_summaries(pca, x_test))),
            ("ppc", p_ppc),
        ):
            rate = float((p < args.alpha).double().mean())
            row = {
                "variant": name,
                "check": check_name,
                "rejection_rate": rate,
                "stderr": math.sqrt(rate * (1 - rate) / len(p)),
                "alpha": args.alpha,
                "num_test": len(p),
                "num_simulations": args.num_simulations,
                "regression_cpu_s": t_reg,
                "regression_epochs": reg.history.epochs if reg.history is not None else None,
                "npe_cpu_s": t_npe,
                "pca_check_cpu_s": t_pca,
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "quick": args.quick,
            }
            rows.append(row)
            logger.info("%-9s %-13s rejection %.3f +- %.3f", name, check_name, rate, row["stderr"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    lines = ["| observations | check | rejected at alpha (power; false-alarm rate for nominal) |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['check']} | {r['rejection_rate']:.3f} ± {r['stderr']:.3f} |" for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
