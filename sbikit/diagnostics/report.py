"""All calibration checks at once: SBC, HPD coverage and TARP on shared samples.

:func:`run_calibration` draws the posterior samples once (one batched call) and runs
:func:`~sbikit.diagnostics.run_sbc`, :func:`~sbikit.diagnostics.run_coverage` and
:func:`~sbikit.diagnostics.run_tarp` on them, with one Bonferroni correction over every
test (``4 d`` SBC tests, 2 coverage tests, 1 TARP test). :func:`calibration_report` also
writes the figures and a JSON summary (used by ``sbikit run`` when a config asks for
calibration).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.diagnostics._common import check_pairs, param_names, sample_batch
from sbikit.diagnostics.coverage import CoverageCheck, CoverageResult, check_coverage, run_coverage
from sbikit.diagnostics.sbc import Finding, SBCCheck, check_sbc, run_sbc
from sbikit.diagnostics.tarp import TARPCheck, TARPResult, check_tarp, run_tarp
from sbikit.utils import as_float_tensor

__all__ = ["run_calibration", "calibration_report", "CalibrationSummary", "make_test_pairs"]

logger = logging.getLogger("sbikit.diagnostics")

CHECKS = ("sbc", "coverage", "tarp")


@dataclass
class CalibrationSummary:
    """Everything :func:`run_calibration` computed.

    Attributes:
        ranks: ``(m, d)`` SBC ranks.
        sbc: the SBC check.
        coverage, coverage_check: HPD/central coverage and its check (``None`` when skipped).
        tarp, tarp_check: TARP curve and its check (``None`` when skipped).
        alpha: family-wise false-alarm rate.
        num_checks: number of tests sharing ``alpha``.
        num_tests: ``m`` test pairs; num_posterior_samples: ``N``.
    """

    ranks: Tensor
    sbc: SBCCheck
    coverage: CoverageResult | None
    coverage_check: CoverageCheck | None
    tarp: TARPResult | None
    tarp_check: TARPCheck | None
    alpha: float
    num_checks: int
    num_tests: int
    num_posterior_samples: int

    @property
    def findings(self) -> list[Finding]:
        out = list(self.sbc.findings)
        for check in (self.coverage_check, self.tarp_check):
            if check is not None:
                out.extend(check.findings)
        return out

    @property
    def passed(self) -> bool:
        return not self.findings

    def report(self) -> str:
        """A readable multi-line report: verdict, failed checks with directions, a table."""
        threshold = self.alpha / self.num_checks
        head = (
            f"{self.num_tests} test pairs x {self.num_posterior_samples} posterior samples; "
            f"alpha={self.alpha:g} family-wise, Bonferroni over {self.num_checks} tests: each at p < {threshold:.2g}"
        )
        lines = []
        if self.passed:
            lines.append(f"posterior is calibrated ({head})")
        else:
            lines.append(f"posterior is NOT calibrated: {len(self.findings)} failed test(s) ({head})")
            lines.extend(f"  - {f}" for f in self.findings)
        s = self.sbc
        width = max(9, *(len(n) for n in s.names))
        lines.append("per-parameter SBC (normalised ranks; calibrated: mean 0.5, outer-20% fraction 0.2):")
        lines.append(
            f"  {'parameter':<{width}}  {'mean':>6}  {'outer20':>7}  "
            f"{'p KS':>8}  {'p chi2':>8}  {'p bias':>8}  {'p disp':>8}"
        )
        for j, name in enumerate(s.names):
            lines.append(
                f"  {name:<{width}}  {s.mean_rank[j]:6.3f}  {s.tail_fraction[j]:7.3f}  {s.ks_pvalues[j]:8.2g}  "
                f"{s.chi2_pvalues[j]:8.2g}  {s.bias_pvalues[j]:8.2g}  {s.dispersion_pvalues[j]:8.2g}"
            )
        if self.coverage_check is not None:
            c = self.coverage_check
            lines.append(
                f"joint HPD coverage: outside the 50% region {c.outside_50:.3f} "
                f"(calibrated 0.5, p={c.direction_pvalue:.2g}), "
                f"max |coverage - level| {c.max_deviation:.3f} (KS p={c.ks_pvalue:.2g})"
            )
        if self.tarp_check is not None:
            t = self.tarp_check
            lines.append(f"TARP: ATC {t.atc:+.4f} (calibrated 0), KS p={t.ks_pvalue:.2g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "passed": self.passed,
            "alpha": self.alpha,
            "num_checks": self.num_checks,
            "num_tests": self.num_tests,
            "num_posterior_samples": self.num_posterior_samples,
            "findings": [str(f) for f in self.findings],
            "sbc": self.sbc.as_dict(),
            "coverage": None if self.coverage is None else {**self.coverage.as_dict(), **self.coverage_check.as_dict()},
            "tarp": None if self.tarp is None else {**self.tarp.as_dict(), **self.tarp_check.as_dict()},
        }


def make_test_pairs(simulator_or_pairs: Any, num_tests: int, *, seed: int | None = 0) -> tuple[Tensor, Tensor]:
    """Test pairs from a simulator (``theta ~ prior``, ``x ~ simulator``) or as given.

    Args:
        simulator_or_pairs: an object with ``.prior.sample(n, seed=)`` and
            ``.simulate(theta, seed=)``, or a tuple ``(theta (m, d), x (m, *x_shape))``.
        num_tests: ``m`` pairs to simulate (ignored for given pairs).
        seed: seeds the prior draws (``seed``) and the simulations (``seed + 1``).

    Returns:
        ``theta`` ``(m, d)`` and ``x`` ``(m, *x_shape)``, rows with non-finite ``x`` dropped.
    """
    if isinstance(simulator_or_pairs, (tuple, list)) and len(simulator_or_pairs) == 2:
        theta, x = simulator_or_pairs
        return check_pairs(theta, x)
    sim = simulator_or_pairs
    if not (hasattr(sim, "prior") and hasattr(sim, "simulate")):
        raise TypeError(
            "simulator_or_pairs must be a simulator (with .prior and .simulate) or a (theta, x) tuple, "
            f"got {type(sim).__name__}"
        )
    theta = as_float_tensor(sim.prior.sample(int(num_tests), seed=seed), "theta")
    x = as_float_tensor(sim.simulate(theta, seed=None if seed is None else int(seed) + 1), "x")
    ok = torch_finite_rows(x)
    if not bool(ok.all()):
        logger.warning("dropped %d of %d test simulations with NaN or inf", int((~ok).sum()), len(ok))
    return check_pairs(theta[ok], x[ok])


def torch_finite_rows(x: Tensor) -> Tensor:
    """``(m,)`` mask of rows of ``x`` ``(m, ...)`` that are finite everywhere."""
    return torch.isfinite(x.reshape(len(x), -1)).all(1)


def run_calibration(
    posterior: Any,
    simulator_or_pairs: Any,
    *,
    num_tests: int = 500,
    num_posterior_samples: int = 500,
    alpha: float = 0.01,
    checks: tuple[str, ...] = CHECKS,
    names: list[str] | None = None,
    seed: int | None = 0,
) -> CalibrationSummary:
    """Run SBC, coverage and TARP on shared posterior samples, Bonferroni over all tests.

    Args:
        posterior: any object with ``sample(n, x=...)`` and ``log_prob(theta, x=...)``.
        simulator_or_pairs: a simulator or ``(theta, x)`` test pairs (see :func:`test_pairs`).
        num_tests: ``m`` pairs to simulate when given a simulator.
        num_posterior_samples: ``N`` samples per pair.
        alpha: family-wise false-alarm rate for a calibrated posterior.
        checks: any of ``"sbc"`` (always run), ``"coverage"``, ``"tarp"``.
        names: parameter names (default: ``posterior.theta_names`` or the simulator's).
        seed: seeds test pairs, sampling and every random tie-break.

    Returns:
        A :class:`CalibrationSummary` (``.passed``, ``.findings``, ``.report()``).
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    theta, x = make_test_pairs(simulator_or_pairs, num_tests, seed=seed)
    m, d = theta.shape
    if names is None and not isinstance(simulator_or_pairs, (tuple, list)):
        names = getattr(posterior, "theta_names", None) or getattr(simulator_or_pairs, "theta_names", None)
    names = param_names(posterior, d, names)
    n = int(num_posterior_samples)
    s = None if seed is None else int(seed) + 10
    samples = sample_batch(posterior, n, x, seed=s)
    do_cov = "coverage" in checks and hasattr(posterior, "log_prob")
    do_tarp = "tarp" in checks
    total = 4 * d + (2 if do_cov else 0) + (1 if do_tarp else 0)
    ranks = run_sbc(posterior, theta, x, num_posterior_samples=n, seed=s, samples=samples)
    # The jitter's seed differs from every other stream used here (sampling s, ranks s + 1, ...).
    sbc = check_sbc(ranks, n, alpha=alpha, names=names, num_checks=total, seed=None if s is None else s + 4)
    cov = cov_check = tarp = tarp_check = None
    if do_cov:
        cov = run_coverage(posterior, theta, x, num_posterior_samples=n, seed=s, samples=samples)
        cov_check = check_coverage(cov, alpha=alpha * 2 / total)
    if do_tarp:
        tarp = run_tarp(posterior, theta, x, num_posterior_samples=n, seed=s, samples=samples)
        tarp_check = check_tarp(tarp, alpha=alpha / total)
    return CalibrationSummary(ranks, sbc, cov, cov_check, tarp, tarp_check, float(alpha), total, m, n)


def calibration_report(
    posterior: Any,
    simulator: Any,
    *,
    num_tests: int = 500,
    num_posterior_samples: int = 1000,
    seed: int | None = 0,
    out_dir: str | os.PathLike[str],
    alpha: float = 0.01,
) -> CalibrationSummary:
    """Run every calibration check and write figures and a JSON summary to ``out_dir``.

    Files written: ``sbc_ranks.png`` (rank histograms with a 99% binomial band),
    ``coverage.png`` (HPD and central coverage with a 99% band), ``tarp.png`` (the TARP
    curve), ``calibration.json`` (:meth:`CalibrationSummary.as_dict`) and
    ``calibration.txt`` (:meth:`CalibrationSummary.report`).

    Args:
        posterior: any supported posterior object.
        simulator: a simulator, or ``(theta, x)`` test pairs.
        num_tests: ``m`` test pairs to simulate.
        num_posterior_samples: ``N`` samples per pair.
        seed: seeds everything.
        out_dir: folder for the files (created).
        alpha: family-wise false-alarm rate.

    Returns:
        The :class:`CalibrationSummary`.
    """
    from sbikit import plots  # figures live in plots; imported here to keep diagnostics light

    summary = run_calibration(
        posterior, simulator, num_tests=num_tests, num_posterior_samples=num_posterior_samples, alpha=alpha, seed=seed
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots.rank_histogram(
        summary.ranks, summary.num_posterior_samples, labels=summary.sbc.names, path=out / "sbc_ranks.png"
    )
    if summary.coverage is not None:
        plots.coverage_plot(summary.coverage, labels=summary.sbc.names, path=out / "coverage.png")
    if summary.tarp is not None:
        plots.tarp_plot(summary.tarp, path=out / "tarp.png")
    _write_text(out / "calibration.json", json.dumps(_jsonable(summary.as_dict()), indent=2))
    _write_text(out / "calibration.txt", summary.report() + "\n")
    logger.info("calibration report written to %s: %s", out, "passed" if summary.passed else "FAILED")
    return summary


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
