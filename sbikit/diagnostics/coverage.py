"""Expected coverage of highest-density regions and of central intervals, batched.

For each test pair ``(theta_i, x_i)`` and ``N`` posterior samples ``s_ij ~ q(. | x_i)``:

* **HPD** (joint, Deistler et al. 2022 / sbi's "expected coverage"): the level at which
  ``theta_i`` enters the highest-density region is estimated by
  ``r_i = #{j: log q(s_ij | x_i) > log q(theta_i | x_i)} / N`` (ties broken at random);
  ``theta_i`` lies inside the ``a``-HPD region iff ``r_i < a``. One batched ``log_prob``
  call covers every sample of every pair (``x`` repeated per row, the paired form).
* **central intervals** (per parameter): ``theta_i`` lies inside the central ``a``
  interval of the ``j``-th marginal iff its normalised rank ``u`` satisfies
  ``|2 u - 1| < a`` (the sample-quantile interval ``[q_(1-a)/2, q_(1+a)/2]``).

Under a calibrated posterior both ``r_i`` and ``u`` are ``U(0, 1)`` (after the random
tie-breaking and the ``U(0, 1)`` jitter), so the empirical coverage at level ``a`` is a
``Binomial(m, a) / m`` variable: the band of :func:`coverage_band`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbikit.diagnostics._common import check_pairs, jittered_ranks, log_prob_paired, normalised, sample_batch
from sbikit.diagnostics.sbc import Finding, ranks_from_samples
from sbikit.priors import make_generator

__all__ = ["run_coverage", "check_coverage", "CoverageResult", "CoverageCheck", "coverage_band"]


@dataclass
class CoverageResult:
    """Output of :func:`run_coverage`.

    Attributes:
        levels: ``(L,)`` credibility levels.
        hpd: ``(L,)`` fraction of pairs whose truth lies in the HPD region of each level.
        central: ``(L, d)`` the same for central per-parameter intervals.
        hpd_u: ``(m,)`` level at which each truth enters the HPD region, ``U(0, 1)`` if calibrated.
        central_u: ``(m, d)`` normalised marginal ranks, ``U(0, 1)`` if calibrated.
        num_posterior_samples: ``N``.
    """

    levels: Tensor
    hpd: Tensor
    central: Tensor
    hpd_u: Tensor
    central_u: Tensor
    num_posterior_samples: int

    @property
    def num_tests(self) -> int:
        return len(self.hpd_u)

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels.tolist(),
            "hpd": self.hpd.tolist(),
            "central": self.central.T.tolist(),
            "num_tests": self.num_tests,
            "num_posterior_samples": self.num_posterior_samples,
        }


@dataclass
class CoverageCheck:
    """Result of :func:`check_coverage`.

    Attributes:
        ks_pvalue: KS test of the HPD levels ``hpd_u`` against ``U(0, 1)``.
        direction_pvalue: exact binomial test of ``#{hpd_u > 1/2}`` against ``Binomial(m, 1/2)``.
        outside_50: fraction of truths outside the 50% HPD region (0.5 when calibrated).
        max_deviation: largest ``|coverage - level|`` over the levels, HPD.
        threshold: per-test threshold (Bonferroni).
        findings: failed tests.
    """

    ks_pvalue: float
    direction_pvalue: float
    outside_50: float
    max_deviation: float
    threshold: float
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "ks_pvalue": self.ks_pvalue,
            "direction_pvalue": self.direction_pvalue,
            "outside_50": self.outside_50,
            "max_deviation": self.max_deviation,
            "findings": [str(f) for f in self.findings],
        }


def coverage_band(levels: Any, num_tests: int, *, confidence: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise binomial band of the empirical coverage of a calibrated posterior.

    Args:
        levels: ``(L,)`` credibility levels.
        num_tests: ``m``, the number of test pairs.
        confidence: probability mass inside the band at each level.

    Returns:
        ``lower`` and ``upper``, arrays ``(L,)`` of coverage fractions.
    """
    a = np.asarray(levels, dtype=float)
    q = (1 - confidence) / 2
    lo = stats.binom.ppf(q, num_tests, a) / num_tests
    hi = stats.binom.ppf(1 - q, num_tests, a) / num_tests
    return lo, hi


def run_coverage(
    posterior: Any,
    theta: Any,
    x: Any,
    *,
    num_posterior_samples: int = 1000,
    levels: Any | None = None,
    seed: int | None = 0,
    samples: Tensor | None = None,
) -> CoverageResult:
    """Expected coverage of HPD regions and central intervals over credibility levels.

    Args:
        posterior: any object with ``sample(n, x=...)`` and ``log_prob(theta, x=...)``
            (see :mod:`sbikit.diagnostics`).
        theta: ``(m, d)`` parameters drawn from the prior.
        x: ``(m, *x_shape)`` data simulated from them.
        num_posterior_samples: ``N``, samples per observation.
        levels: ``(L,)`` credibility levels in ``[0, 1]``; default 0, 0.02, ..., 1.
        seed: seeds sampling, tie-breaking and jitter.
        samples: optional ``(m, N, d)`` samples already drawn for ``x``.

    Returns:
        A :class:`CoverageResult`.
    """
    th, xt = check_pairs(theta, x)
    if samples is None:
        samples = sample_batch(posterior, int(num_posterior_samples), xt, seed=seed)
    m, n, d = samples.shape
    lp_samples = log_prob_paired(posterior, samples, xt)  # (m, N)
    lp_true = log_prob_paired(posterior, th[:, None, :], xt)  # (m, 1)
    gen = make_generator(None if seed is None else int(seed) + 2)
    above = (lp_samples > lp_true).sum(1)
    equal = (lp_samples == lp_true).sum(1)
    hpd_u = normalised(jittered_ranks(above, equal, n, gen), n, gen).float()
    central_u = normalised(ranks_from_samples(samples, th, seed=None if seed is None else int(seed) + 1), n, gen)
    lv = torch.linspace(0, 1, 51) if levels is None else torch.as_tensor(levels, dtype=torch.float32).reshape(-1)
    if bool((lv < 0).any()) or bool((lv > 1).any()):
        raise ValueError("levels must lie in [0, 1]")
    hpd = (hpd_u[None, :] < lv[:, None]).float().mean(1)
    width = (2 * central_u - 1).abs().float()  # (m, d)
    central = (width[None, :, :] < lv[:, None, None]).float().mean(1)
    return CoverageResult(lv, hpd, central, hpd_u, central_u.float(), n)


def check_coverage(result: CoverageResult, *, alpha: float = 0.01, num_checks: int = 2) -> CoverageCheck:
    """Test the HPD coverage of :func:`run_coverage` and name the direction of a failure.

    Args:
        result: from :func:`run_coverage`.
        alpha: family-wise false-alarm rate; each test uses ``alpha / num_checks``.
        num_checks: tests sharing ``alpha`` (2 here; callers running more pass their total).

    Returns:
        A :class:`CoverageCheck`.
    """
    u = result.hpd_u.double().numpy()
    m = len(u)
    threshold = alpha / num_checks
    ks = float(stats.kstest(u, "uniform").pvalue)
    outside = int((u > 0.5).sum())
    direction_p = float(stats.binomtest(outside, m, 0.5).pvalue)
    frac = outside / m
    dev = float((result.hpd - result.levels).abs().max())
    direction = (
        "over-confident (true parameters fall outside the HPD regions too often)"
        if frac > 0.5
        else "under-confident (HPD regions are too large)"
    )
    findings = []
    if direction_p < threshold:
        findings.append(
            Finding("joint", "HPD coverage", "fraction outside the 50% HPD region", frac, 0.5, direction_p, direction)
        )
    if ks < threshold and not direction_p < threshold:
        findings.append(
            Finding(
                "joint",
                "HPD coverage KS",
                "largest |coverage - level|",
                dev,
                0.0,
                ks,
                "miscalibrated joint coverage (" + direction + ", weak evidence for this direction)",
            )
        )
    return CoverageCheck(ks, direction_p, frac, dev, threshold, findings)
