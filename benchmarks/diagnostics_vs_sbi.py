"""sbikit's batched run_sbc / run_tarp against sbi's, on the same posterior and the same data.

Setup (two_moons, 2 parameters): one posterior is trained on 10^4 simulations; 1,000 test
pairs ``theta ~ prior``, ``x ~ simulator`` are drawn (seeded); each diagnostic draws 1,000
posterior samples per pair. Both toolkits are timed on the SAME posterior object:

* sbi's own NPE (MAF) trained on the data: sbi's ``run_sbc`` / ``run_tarp`` get it as
  usual, sbikit's diagnostics get it duck-typed (they call its ``sample_batched``, as sbi does);
* sbikit's NPE (MAF unless ``--flow`` says otherwise, as in the first run; ``--flow auto``
  for NPE's default) trained on the same data: sbi gets it through a thin adapter exposing
  ``sample_batched((n,), x=...) -> (n, m, d)``.

The end-to-end ratio (sbi's diagnostics on sbi's posterior over sbikit's on sbikit's) is
reported too.

Timed: the whole call (sampling included), wall clock, one torch thread. The rank
distributions are compared by a two-sample KS test per parameter (sbikit's ranks vs
sbi's; both count the samples below the truth), and the TARP curves by their ATC and the
largest gap between the two ECP curves.

``--size-power`` instead measures the size and power of
:func:`sbikit.testing.assert_calibrated` on exact Gaussian-linear posteriors and three
distorted ones over many seeds (the table in docs/calibration.md).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/diagnostics_vs_sbi.py --out benchmarks/results/diagnostics.jsonl
    OMP_NUM_THREADS=1 python benchmarks/diagnostics_vs_sbi.py --size-power --seeds 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit import diagnostics as dg  # noqa: E402
from sbikit.diagnostics._common import sample_batch  # noqa: E402

NUM_SIMULATIONS = 10_000
NUM_TESTS = 1_000
NUM_SAMPLES = 1_000


class SbiAdapter:
    """Lets sbi's diagnostics call an sbikit posterior: ``sample_batched`` -> ``(n, m, d)``."""

    def __init__(self, posterior: sbikit.FlowPosterior) -> None:
        self.posterior = posterior

    def sample_batched(self, sample_shape, x, show_progress_bars: bool = False, **_: object) -> torch.Tensor:
        n = int(torch.Size(sample_shape).numel())
        return self.posterior.sample(n, x=x, seed=int(torch.randint(0, 2**31, ()).item())).permute(1, 0, 2)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"


def train(kind: str, theta: torch.Tensor, x: torch.Tensor, flow: str = "maf"):
    sim = simulators.get("two_moons")
    t = time.perf_counter()
    if kind == "sbikit":
        post = sbikit.NPE(sim.prior, flow=flow).fit(theta, x, seed=0, progress=False)
    else:
        from sbi.inference import NPE as SbiNPE
        from sbi.utils import BoxUniform

        torch.manual_seed(0)
        # sbi writes TensorBoard logs under the working directory: keep them out of the repository.
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=tempfile.mkdtemp(prefix="sbi-logs-"))
        inference = SbiNPE(
            prior=BoxUniform(-torch.ones(2), torch.ones(2)),
            density_estimator="maf",
            show_progress_bars=False,
            summary_writer=writer,
        )
        inference.append_simulations(theta, x)
        post = inference.build_posterior(inference.train())
    return post, time.perf_counter() - t


def _time(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def compare(flow: str = "maf") -> dict:
    """Train both posteriors on the same data; time both toolkits on each posterior.

    Args:
        flow: sbikit NPE's flow (``"maf"``, as in the first run; ``"auto"``: NPE's default).
    """
    from sbi.diagnostics import run_sbc as sbi_run_sbc
    from sbi.diagnostics import run_tarp as sbi_run_tarp
    from sbi.diagnostics.tarp import check_tarp as sbi_check_tarp

    torch.set_num_threads(1)
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(NUM_SIMULATIONS, seed=0)
    x = torch.as_tensor(np.asarray(sim.simulate(theta, seed=1)), dtype=torch.float32)
    theta_t = sim.prior.sample(NUM_TESTS, seed=100)
    x_t = torch.as_tensor(np.asarray(sim.simulate(theta_t, seed=101)), dtype=torch.float32)
    record: dict = {
        "machine": machine(),
        "num_tests": NUM_TESTS,
        "num_posterior_samples": NUM_SAMPLES,
        "sbikit_flow": flow,
    }
    # Train both first, so the timings below are taken close together (the machine is shared).
    trained = {kind: train(kind, theta, x, flow) for kind in ("sbikit", "sbi")}
    for kind, (post, train_s) in trained.items():
        sbi_post = post if kind == "sbi" else SbiAdapter(post)
        # The posterior's own sampling cost (shared by both toolkits on the same posterior).
        _, t_sample = _time(sample_batch, post, NUM_SAMPLES, x_t, seed=0)
        ranks, t_sbc = _time(dg.run_sbc, post, theta_t, x_t, num_posterior_samples=NUM_SAMPLES, seed=0)
        tarp, t_tarp = _time(dg.run_tarp, post, theta_t, x_t, num_posterior_samples=NUM_SAMPLES, seed=0)
        torch.manual_seed(1)  # a different stream from sbikit's seed=0: the rank comparison is not trivial
        sbi_kw = {"num_posterior_samples": NUM_SAMPLES, "show_progress_bar": False}
        (sbi_ranks, _), t_sbi_sbc = _time(sbi_run_sbc, theta_t, x_t, sbi_post, **sbi_kw)
        (sbi_ecp, sbi_alpha), t_sbi_tarp = _time(sbi_run_tarp, theta_t, x_t, sbi_post, **sbi_kw)
        sbi_atc, _ = sbi_check_tarp(sbi_ecp, sbi_alpha)
        check = dg.check_tarp(tarp)
        ks = [float(stats.ks_2samp(ranks[:, j].numpy(), sbi_ranks[:, j].numpy()).pvalue) for j in range(2)]
        ours_on_grid = (tarp.fractions[None, :] < sbi_alpha[:, None]).float().mean(1)
        record[f"posterior={kind}"] = {
            "train_s": train_s,
            "sampling_only_s": t_sample,
            "sbikit_run_sbc_s": t_sbc,
            "sbikit_run_tarp_s": t_tarp,
            "sbi_run_sbc_s": t_sbi_sbc,
            "sbi_run_tarp_s": t_sbi_tarp,
            "rank_ks_pvalues": ks,
            "sbikit_mean_rank": (ranks.mean(0) / NUM_SAMPLES).tolist(),
            "sbi_mean_rank": (sbi_ranks.mean(0) / NUM_SAMPLES).tolist(),
            "sbikit_sbc_verdict": dg.check_sbc(ranks, NUM_SAMPLES).verdict,
            "sbikit_atc": check.atc,
            "sbi_atc": sbi_atc,
            "sbikit_tarp_ks_pvalue": check.ks_pvalue,
            "ecp_max_gap": float((ours_on_grid - sbi_ecp).abs().max()),
        }
        print(json.dumps({kind: record[f"posterior={kind}"]}), flush=True)
    a, b = record["posterior=sbikit"], record["posterior=sbi"]
    record["end_to_end_speedup_sbc"] = b["sbi_run_sbc_s"] / a["sbikit_run_sbc_s"]
    record["end_to_end_speedup_tarp"] = b["sbi_run_tarp_s"] / a["sbikit_run_tarp_s"]
    return record


def size_power(seeds: int, num_tests: int, num_samples: int) -> dict:
    """Rejection rate of assert_calibrated for the exact and three distorted posteriors."""
    from sbikit.diagnostics.report import run_calibration
    from sbikit.testing import GaussianPosterior

    torch.set_num_threads(1)
    out = {}
    for dim in (2, 10):
        sim = simulators.get("gaussian_linear", dim=dim)
        controls = {
            "exact": {},
            "std x1.5": {"scale": 1.5},
            "std x0.67": {"scale": 0.67},
            "mean +0.5 std": {"shift": 0.5},
        }
        for name, kw in controls.items():
            post = GaussianPosterior.from_simulator(sim, **kw)
            fails = {"any": 0, "sbc": 0, "coverage": 0, "tarp": 0}
            for seed in range(seeds):
                s = run_calibration(
                    post, sim, num_tests=num_tests, num_posterior_samples=num_samples, alpha=0.01, seed=1000 + seed
                )
                fails["any"] += not s.passed
                fails["sbc"] += not s.sbc.passed
                fails["coverage"] += not s.coverage_check.passed
                fails["tarp"] += not s.tarp_check.passed
            out[f"d={dim} {name}"] = {k: v / seeds for k, v in fails.items()}
            print(f"d={dim} {name}: {out[f'd={dim} {name}']}", flush=True)
    return {"seeds": seeds, "num_tests": num_tests, "num_posterior_samples": num_samples, "rates": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-power", action="store_true")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--num-tests", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="append the JSON record here")
    ap.add_argument("--flow", default="maf", help="sbikit NPE's flow: maf (the first run's) or auto (NPE's default)")
    args = ap.parse_args()
    rec = size_power(args.seeds, args.num_tests, args.num_samples) if args.size_power else compare(args.flow)
    print(json.dumps(rec, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
