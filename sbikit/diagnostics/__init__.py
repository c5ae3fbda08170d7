"""Calibration and accuracy diagnostics, batched and duck-typed.

Every ``run_*`` function computes and every ``check_*`` function tests. They work with any
posterior object that has ``sample(n, x=...)`` and (for coverage) ``log_prob(theta, x=...)``:
sbikit posteriors (all observations in one call), sbi posteriors (through their
``sample_batched`` / ``log_prob_batched``), or anything sampling one observation at a time.

>>> from sbikit import diagnostics as dg
>>> ranks = dg.run_sbc(posterior, theta_test, x_test, num_posterior_samples=1000)
>>> dg.check_sbc(ranks, 1000).verdict
'calibrated'
>>> dg.check_tarp(dg.run_tarp(posterior, theta_test, x_test)).atc
"""

from sbikit.diagnostics.c2st import c2st
from sbikit.diagnostics.coverage import CoverageCheck, CoverageResult, check_coverage, coverage_band, run_coverage
from sbikit.diagnostics.ppc import PPCResult, posterior_predictive
from sbikit.diagnostics.report import calibration_report
from sbikit.diagnostics.sbc import Finding, SBCCheck, check_sbc, run_sbc
from sbikit.diagnostics.tarp import TARPCheck, TARPResult, check_tarp, run_tarp

__all__ = [
    "c2st",
    "run_sbc",
    "check_sbc",
    "run_coverage",
    "check_coverage",
    "coverage_band",
    "run_tarp",
    "check_tarp",
    "posterior_predictive",
    "calibration_report",
    "SBCCheck",
    "CoverageResult",
    "CoverageCheck",
    "TARPResult",
    "TARPCheck",
    "PPCResult",
    "Finding",
]
