"""Simulation-based calibration (Talts et al. 2018), batched.

``run_sbc`` ranks each true parameter among posterior samples drawn for its own data, all
observations in one sampling call; ``check_sbc`` tests the ranks for uniformity and says
which way they deviate.

Under a calibrated posterior the rank of ``theta_true`` among ``N`` samples is uniform on
``0..N`` (ties broken at random). Adding ``U(0, 1)`` and dividing by ``N + 1`` makes the
normalised rank ``u`` exactly ``U(0, 1)``, so every test below has its nominal size:

* **KS**: Kolmogorov-Smirnov of ``u`` against ``U(0, 1)``;
* **chi-square**: counts of ``u`` in ``B`` equal bins against ``m / B`` each;
* **bias**: exact binomial test of the number of ``u < 1/2`` against ``Binomial(m, 1/2)``.
  Too many low ranks means the samples lie above the truth: the posterior is biased high;
* **dispersion**: exact binomial test of the number of ``u`` in the outer tails
  (``u < 0.1`` or ``u > 0.9``) against ``Binomial(m, 0.2)``. Too many (a U-shaped rank
  histogram) means the posterior is too narrow (over-confident); too few (a hump) means
  it is too wide (under-confident).

Each p-value is compared with ``alpha / (4 d)`` (Bonferroni over tests and parameters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbikit.diagnostics._common import check_pairs, jittered_ranks, normalised, sample_batch
from sbikit.priors import make_generator

__all__ = ["run_sbc", "check_sbc", "SBCCheck", "Finding", "TAIL", "ranks_from_samples"]

logger = logging.getLogger("sbikit.diagnostics")

#: Mass of each outer tail used by the dispersion test (``u < TAIL`` or ``u > 1 - TAIL``).
TAIL = 0.1


@dataclass(frozen=True)
class Finding:
    """One failed check: which parameter, which test, what was seen, which direction."""

    parameter: str
    test: str
    statistic: str
    observed: float
    expected: float
    pvalue: float
    direction: str

    def __str__(self) -> str:
        return (
            f"{self.parameter}: {self.test}: {self.statistic} {self.observed:.3g} "
            f"(expected {self.expected:.3g}, p={self.pvalue:.2g}) -> {self.direction}"
        )


@dataclass
class SBCCheck:
    """Result of :func:`check_sbc`; all arrays have one entry per parameter ``(d,)``.

    Attributes:
        names: parameter names.
        ks_pvalues, chi2_pvalues, bias_pvalues, dispersion_pvalues: per-test p-values.
        mean_rank: mean normalised rank (0.5 when calibrated).
        low_fraction: fraction of normalised ranks below 1/2 (0.5 when calibrated).
        tail_fraction: fraction in the outer tails (``2 * TAIL`` when calibrated).
        threshold: per-test threshold ``alpha / num_tests`` (Bonferroni).
        findings: failed tests, with their direction.
        passed: no test rejected.
    """

    names: list[str]
    ks_pvalues: np.ndarray
    chi2_pvalues: np.ndarray
    bias_pvalues: np.ndarray
    dispersion_pvalues: np.ndarray
    mean_rank: np.ndarray
    low_fraction: np.ndarray
    tail_fraction: np.ndarray
    threshold: float
    num_tests: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def verdict(self) -> str:
        """``"calibrated"`` or a one-line summary of the failed parameters and directions."""
        if self.passed:
            return "calibrated"
        return "; ".join(sorted({f"{f.parameter}: {f.direction}" for f in self.findings}))

    def pvalues(self) -> dict[str, np.ndarray]:
        """All p-values, by test name: arrays ``(d,)``."""
        return {
            "KS": self.ks_pvalues,
            "chi-square": self.chi2_pvalues,
            "bias": self.bias_pvalues,
            "dispersion": self.dispersion_pvalues,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "names": self.names,
            "passed": self.passed,
            "verdict": self.verdict,
            "threshold": self.threshold,
            "pvalues": {k: v.tolist() for k, v in self.pvalues().items()},
            "mean_rank": self.mean_rank.tolist(),
            "tail_fraction": self.tail_fraction.tolist(),
            "findings": [str(f) for f in self.findings],
        }


def ranks_from_samples(samples: Tensor, theta: Tensor, *, seed: int | None = 0) -> Tensor:
    """Rank of each true parameter among its posterior samples, per parameter.

    Args:
        samples: ``(m, N, d)`` posterior samples, ``N`` per observation.
        theta: ``(m, d)`` true parameters.
        seed: seeds the random tie-breaking.

    Returns:
        ``(m, d)`` float32 integer-valued ranks in ``0..N`` (number of samples below the truth).
    """
    less = (samples < theta[:, None, :]).sum(1)
    equal = (samples == theta[:, None, :]).sum(1)
    return jittered_ranks(less, equal, samples.shape[1], make_generator(seed))


def run_sbc(
    posterior: Any,
    theta: Any,
    x: Any,
    *,
    num_posterior_samples: int = 1000,
    seed: int | None = 0,
    samples: Tensor | None = None,
) -> Tensor:
    """Ranks of true parameters among posterior samples (simulation-based calibration).

    Args:
        posterior: any object with ``sample(n, x=...)`` (see :mod:`sbikit.diagnostics`);
            all ``m`` observations are sampled in one call when it allows.
        theta: ``(m, d)`` parameters drawn from the prior.
        x: ``(m, *x_shape)`` data simulated from them.
        num_posterior_samples: ``N``, samples per observation.
        seed: seeds the sampling and the tie-breaking.
        samples: optional ``(m, N, d)`` samples already drawn for ``x`` (then ``posterior``
            is not called), e.g. to share them with :func:`run_tarp`.

    Returns:
        ``(m, d)`` ranks in ``0..N``, float32.
    """
    th, xt = check_pairs(theta, x)
    if samples is None:
        samples = sample_batch(posterior, int(num_posterior_samples), xt, seed=seed)
    if samples.shape[0] != len(th) or samples.shape[2] != th.shape[1]:
        raise ValueError(f"samples must have shape ({len(th)}, N, {th.shape[1]}), got {tuple(samples.shape)}")
    return ranks_from_samples(samples, th, seed=None if seed is None else int(seed) + 1)


def _dispersion_direction(observed: float, expected: float) -> str:
    if observed > expected:
        return "over-confident (posterior too narrow: U-shaped rank histogram)"
    return "under-confident (posterior too wide: hump-shaped rank histogram)"


def _bias_direction(low_fraction: float, name: str) -> str:
    if low_fraction > 0.5:
        return f"biased high (posterior samples lie above the true {name})"
    return f"biased low (posterior samples lie below the true {name})"


def check_sbc(
    ranks: Any,
    num_posterior_samples: int,
    *,
    alpha: float = 0.01,
    num_bins: int | None = None,
    names: list[str] | None = None,
    num_checks: int | None = None,
    seed: int | None = 0,
) -> SBCCheck:
    """Test SBC ranks for uniformity, per parameter, and name the direction of a failure.

    Args:
        ranks: ``(m, d)`` ranks in ``0..N`` from :func:`run_sbc`.
        num_posterior_samples: ``N``, the samples each rank was taken among.
        alpha: family-wise false-alarm rate for a calibrated posterior.
        num_bins: chi-square bins; default ``m // 10`` clipped to ``2..20``.
        names: ``d`` parameter names for the findings.
        num_checks: total number of tests sharing ``alpha`` (Bonferroni); default ``4 d``
            (callers that run more checks pass their total).
        seed: seeds the ``U(0, 1)`` added to make ranks continuous.

    Returns:
        An :class:`SBCCheck`; ``.passed``, ``.verdict``, ``.findings``.
    """
    r = torch.as_tensor(ranks).detach().cpu().double()
    if r.ndim == 1:
        r = r[:, None]
    m, d = r.shape
    n = int(num_posterior_samples)
    if bool((r < 0).any()) or bool((r > n).any()):
        raise ValueError(f"ranks must lie in 0..{n} (num_posterior_samples={n}); check num_posterior_samples")
    u = normalised(r, n, make_generator(seed)).numpy()
    bins = int(num_bins) if num_bins else int(np.clip(m // 10, 2, 20))
    total = int(num_checks) if num_checks else 4 * d
    threshold = alpha / total
    names = names if names is not None and len(names) == d else [f"theta_{i + 1}" for i in range(d)]

    ks = np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(d)])
    chi2 = np.empty(d)
    bias = np.empty(d)
    disp = np.empty(d)
    low = (u < 0.5).mean(0)
    tails = ((u < TAIL) | (u > 1 - TAIL)).mean(0)
    for j in range(d):
        counts = np.histogram(u[:, j], bins=bins, range=(0.0, 1.0))[0]
        chi2[j] = stats.chisquare(counts).pvalue
        bias[j] = stats.binomtest(int((u[:, j] < 0.5).sum()), m, 0.5).pvalue
        disp[j] = stats.binomtest(int(((u[:, j] < TAIL) | (u[:, j] > 1 - TAIL)).sum()), m, 2 * TAIL).pvalue

    findings: list[Finding] = []
    for j, name in enumerate(names):
        if bias[j] < threshold:
            findings.append(
                Finding(
                    name, "SBC bias", "fraction of ranks < 1/2", low[j], 0.5, bias[j], _bias_direction(low[j], name)
                )
            )
        if disp[j] < threshold:
            findings.append(
                Finding(
                    name,
                    "SBC dispersion",
                    "fraction of ranks in the outer 20%",
                    tails[j],
                    2 * TAIL,
                    disp[j],
                    _dispersion_direction(tails[j], 2 * TAIL),
                )
            )
        if (ks[j] < threshold or chi2[j] < threshold) and not (bias[j] < threshold or disp[j] < threshold):
            # Non-uniform, but neither a shift nor a width problem: say which looks closer.
            z_bias = abs(low[j] - 0.5) / np.sqrt(0.25 / m)
            z_disp = abs(tails[j] - 2 * TAIL) / np.sqrt(2 * TAIL * (1 - 2 * TAIL) / m)
            hint = (
                _bias_direction(low[j], name) if z_bias > z_disp else _dispersion_direction(tails[j], 2 * TAIL)
            ) + " (weak evidence for this direction)"
            test = "SBC KS" if ks[j] <= chi2[j] else "SBC chi-square"
            p = min(ks[j], chi2[j])
            findings.append(Finding(name, test, "mean normalised rank", float(u[:, j].mean()), 0.5, p, hint))
    return SBCCheck(
        names=list(names),
        ks_pvalues=ks,
        chi2_pvalues=chi2,
        bias_pvalues=bias,
        dispersion_pvalues=disp,
        mean_rank=u.mean(0),
        low_fraction=low,
        tail_fraction=tails,
        threshold=threshold,
        num_tests=total,
        findings=findings,
    )
