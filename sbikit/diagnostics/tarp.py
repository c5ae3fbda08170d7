"""Tests of Accuracy with Random Points (TARP, Lemos et al. 2023), batched.

For each test pair ``(theta_i, x_i)`` with ``N`` posterior samples ``s_ij`` and a random
reference point ``r_i``, all in parameter space normalised to the unit box of the test
parameters' range, TARP records the fraction of samples closer to the reference than the
truth: ``f_i = #{j: |s_ij - r_i| < |theta_i - r_i|} / N`` (ties broken at random, plus a
``U(0, 1) / (N + 1)`` jitter). For a calibrated posterior ``f_i ~ U(0, 1)`` for any
reference distribution that does not depend on ``theta_i``; the expected coverage
probability curve is ``ECP(a) = mean_i [f_i < a]``, which lies on the diagonal.

``check_tarp`` reports the ATC (sbi's definition: the signed area between ``ECP`` and the
diagonal for ``a > 1/2``; positive: too wide, negative: too narrow) and the p-value of a
KS test of the ``f_i`` against ``U(0, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from scipy import stats
from torch import Tensor

from sbikit.diagnostics._common import check_pairs, jittered_ranks, normalised, sample_batch
from sbikit.diagnostics.sbc import Finding
from sbikit.priors import make_generator

__all__ = ["run_tarp", "check_tarp", "TARPResult", "TARPCheck"]


@dataclass
class TARPResult:
    """Output of :func:`run_tarp`.

    Attributes:
        alpha: ``(B + 1,)`` credibility grid from 0 to 1.
        ecp: ``(B + 1,)`` expected coverage probability at each ``alpha``.
        fractions: ``(m,)`` the ``f_i``, ``U(0, 1)`` when calibrated.
        references: ``(m, d)`` reference points, in parameter units.
        num_posterior_samples: ``N``.
    """

    alpha: Tensor
    ecp: Tensor
    fractions: Tensor
    references: Tensor
    num_posterior_samples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha.tolist(),
            "ecp": self.ecp.tolist(),
            "num_posterior_samples": self.num_posterior_samples,
        }


@dataclass
class TARPCheck:
    """Result of :func:`check_tarp`.

    Attributes:
        atc: signed area between the ECP curve and the diagonal for ``alpha > 1/2``.
        ks_pvalue: KS test of the fractions against ``U(0, 1)``.
        threshold: per-test threshold.
        findings: failed tests.
    """

    atc: float
    ks_pvalue: float
    threshold: float
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atc": self.atc,
            "ks_pvalue": self.ks_pvalue,
            "findings": [str(f) for f in self.findings],
        }


def run_tarp(
    posterior: Any,
    theta: Any,
    x: Any,
    *,
    num_posterior_samples: int = 1000,
    references: Any | None = None,
    num_bins: int | None = None,
    z_score: bool = True,
    seed: int | None = 0,
    samples: Tensor | None = None,
) -> TARPResult:
    """Expected-coverage curve by TARP.

    Args:
        posterior: any object with ``sample(n, x=...)`` (see :mod:`sbikit.diagnostics`).
        theta: ``(m, d)`` parameters drawn from the prior.
        x: ``(m, *x_shape)`` data simulated from them.
        num_posterior_samples: ``N``, samples per observation.
        references: optional ``(m, d)`` reference points; default uniform over the box
            spanned by ``theta`` (as sbi does), seeded.
        num_bins: bins of the ``alpha`` grid; default ``m // 10`` (at least 1).
        z_score: rescale every parameter to the unit box of ``theta``'s range before taking
            distances (otherwise Euclidean in raw units).
        seed: seeds sampling, references and tie-breaking.
        samples: optional ``(m, N, d)`` samples already drawn for ``x``.

    Returns:
        A :class:`TARPResult`.
    """
    th, xt = check_pairs(theta, x)
    if samples is None:
        samples = sample_batch(posterior, int(num_posterior_samples), xt, seed=seed)
    m, n, d = samples.shape
    gen = make_generator(None if seed is None else int(seed) + 3)
    lo, hi = th.min(0).values, th.max(0).values
    if references is None:
        ref = lo + (hi - lo) * torch.rand(m, d, generator=gen)
    else:
        ref = torch.as_tensor(references, dtype=torch.float32).reshape(m, d)
    scale = (hi - lo).clamp_min(1e-10) if z_score else torch.ones(d)
    s = (samples - lo) / scale
    t = (th - lo) / scale
    r = (ref - lo) / scale
    sample_dist = ((s - r[:, None, :]) ** 2).sum(-1)  # (m, N)
    true_dist = ((t - r) ** 2).sum(-1, keepdim=True)  # (m, 1)
    less = (sample_dist < true_dist).sum(1)
    equal = (sample_dist == true_dist).sum(1)
    f = normalised(jittered_ranks(less, equal, n, gen), n, gen).float()
    bins = int(num_bins) if num_bins else max(1, m // 10)
    alpha = torch.linspace(0, 1, bins + 1)
    ecp = (f[None, :] < alpha[:, None]).float().mean(1)
    return TARPResult(alpha, ecp, f, ref, n)


def check_tarp(result: TARPResult, *, alpha: float = 0.01, num_checks: int = 1) -> TARPCheck:
    """ATC and KS test of a :func:`run_tarp` result, with the direction of a failure.

    Args:
        result: from :func:`run_tarp`.
        alpha: family-wise false-alarm rate; the KS test uses ``alpha / num_checks``.
        num_checks: tests sharing ``alpha``.

    Returns:
        A :class:`TARPCheck` (``.atc``, ``.ks_pvalue``, ``.passed``).
    """
    a, ecp = result.alpha, result.ecp
    mid = len(a) // 2
    dalpha = float(a[1] - a[0]) if len(a) > 1 else 1.0
    atc = float(((ecp[mid:] - a[mid:]) * dalpha).sum())
    f = result.fractions.double().numpy()
    ks = float(stats.kstest(f, "uniform").pvalue)
    threshold = alpha / num_checks
    findings = []
    if ks < threshold:
        if atc > 0:
            direction = "under-confident (ECP above the diagonal: posterior too wide)"
        elif atc < 0:
            direction = "over-confident or biased (ECP below the diagonal: posterior too narrow or shifted)"
        else:
            direction = "miscalibrated"
        findings.append(Finding("joint", "TARP KS", "ATC", atc, 0.0, ks, direction))
    return TARPCheck(atc, ks, threshold, findings)
