"""Side-by-side comparison of posterior samples against a reference (e.g. emcee).

:func:`compare` (exported as ``sbikit.compare``) reports

* ``c2st``: the classifier two-sample test in its standard MLP variant
  (:func:`sbikit.diagnostics.c2st.c2st`): 0.5 = indistinguishable, 1.0 = separable;
* ``mean_diff``: per parameter ``(mean - mean_ref) / sd_ref``, the bias in reference
  standard deviations;
* ``std_ratio``: per parameter ``sd / sd_ref`` (1 is right; > 1 over-, < 1 under-dispersed);
* ``wasserstein``: per parameter the 1-d Wasserstein-1 distance between the marginals
  (``scipy.stats.wasserstein_distance``), divided by ``sd_ref`` so that parameters of
  different scales compare.

>>> result = sbikit.compare(npe_samples, ref, labels=["Omega_m", "w"], name="NPE")
>>> print(result.to_markdown())
>>> print(comparison_table([result, sbikit.compare(nle_samples, ref, name="NLE")]))

Draw the samples together with :func:`sbikit.plots.corner_overlay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Comparison", "compare", "comparison_table"]


def _samples(a: Any, name: str) -> np.ndarray:
    a = getattr(a, "samples", a)  # an MCMCResult or anything carrying .samples
    arr = a.detach().cpu().double().numpy() if hasattr(a, "detach") else np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or len(arr) < 2:
        raise ValueError(f"{name} must have shape (n, d) with n >= 2, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf ({int((~np.isfinite(arr)).any(axis=1).sum())} rows)")
    return arr


@dataclass
class Comparison:
    """How one set of samples differs from a reference.

    Attributes:
        name: label of the compared method (e.g. ``"NPE"``).
        labels: ``d`` parameter names.
        c2st: C2ST accuracy (0.5 is a perfect match).
        mean_diff: ``(d,)`` ``(mean - mean_ref) / sd_ref``.
        std_ratio: ``(d,)`` ``sd / sd_ref``.
        wasserstein: ``(d,)`` 1-d Wasserstein-1 distances in units of ``sd_ref``.
        num_samples: rows of the compared samples.
        num_reference: rows of the reference.
    """

    name: str
    labels: list[str]
    c2st: float
    mean_diff: np.ndarray
    std_ratio: np.ndarray
    wasserstein: np.ndarray
    num_samples: int
    num_reference: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (per-parameter values keyed by label)."""
        return {
            "name": self.name,
            "c2st": float(self.c2st),
            "mean_diff": dict(zip(self.labels, map(float, self.mean_diff), strict=True)),
            "std_ratio": dict(zip(self.labels, map(float, self.std_ratio), strict=True)),
            "wasserstein": dict(zip(self.labels, map(float, self.wasserstein), strict=True)),
            "num_samples": self.num_samples,
            "num_reference": self.num_reference,
        }

    def to_markdown(self) -> str:
        """A per-parameter markdown table headed by the C2ST."""
        lines = [
            f"**{self.name}**: C2ST = {self.c2st:.3f} ({self.num_samples} vs {self.num_reference} reference samples)",
            "",
            "| parameter | mean diff (ref sd) | sd ratio | W1 (ref sd) |",
            "|---|---:|---:|---:|",
        ]
        for i, label in enumerate(self.labels):
            lines.append(
                f"| {label} | {self.mean_diff[i]:+.3f} | {self.std_ratio[i]:.3f} | {self.wasserstein[i]:.3f} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def compare(
    samples: Any,
    reference: Any,
    *,
    labels: Sequence[str] | None = None,
    name: str = "samples",
    seed: int = 0,
    classifier: Any | None = None,
    max_samples: int | None = None,
) -> Comparison:
    """Compare posterior samples with reference samples.

    Args:
        samples: ``(n, d)`` numpy or torch (or an object with ``.samples``).
        reference: ``(m, d)``, e.g. :func:`sbikit.mcmc.reference_posterior`'s result or its samples.
        labels: ``d`` parameter names; default ``theta_1 .. theta_d``.
        name: label of the compared samples in tables.
        seed: seeds the C2ST folds and classifier (and the subsampling).
        classifier: scikit-learn classifier for the C2ST; default the standard MLP.
        max_samples: use at most this many rows of each set (random, seeded) for the
            C2ST, which is the slow part; ``None`` uses all.

    Returns:
        A :class:`Comparison`.
    """
    from scipy.stats import wasserstein_distance

    from sbikit.diagnostics.c2st import c2st

    a, b = _samples(samples, "samples"), _samples(reference, "reference")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples and reference need the same number of parameters, got {a.shape[1]} and {b.shape[1]}")
    d = a.shape[1]
    labels = [f"theta_{i + 1}" for i in range(d)] if labels is None else [str(s) for s in labels]
    if len(labels) != d:
        raise ValueError(f"labels must have {d} entries (one per parameter), got {len(labels)}")
    sd_ref = b.std(0, ddof=1)
    sd_ref = np.where(sd_ref > 0, sd_ref, 1.0)
    mean_diff = (a.mean(0) - b.mean(0)) / sd_ref
    std_ratio = a.std(0, ddof=1) / sd_ref
    w1 = np.array([wasserstein_distance(a[:, i], b[:, i]) for i in range(d)]) / sd_ref
    ca, cb = a, b
    if max_samples is not None:
        rng = np.random.default_rng(seed)
        if len(ca) > max_samples:
            ca = ca[rng.choice(len(ca), max_samples, replace=False)]
        if len(cb) > max_samples:
            cb = cb[rng.choice(len(cb), max_samples, replace=False)]
    score = c2st(ca, cb, seed=seed, classifier=classifier)
    return Comparison(
        name=name,
        labels=labels,
        c2st=score,
        mean_diff=mean_diff,
        std_ratio=std_ratio,
        wasserstein=w1,
        num_samples=len(a),
        num_reference=len(b),
    )


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """One markdown row per method: C2ST and the worst parameter of each statistic.

    Columns: C2ST, ``max |mean diff|`` (ref sd), the sd ratio farthest from 1 (in log
    terms), and the mean W1 (ref sd) over parameters.
    """
    lines = [
        "| method | C2ST | max abs mean diff (ref sd) | worst sd ratio | mean W1 (ref sd) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        worst = c.std_ratio[int(np.argmax(np.abs(np.log(np.maximum(c.std_ratio, 1e-300)))))]
        lines.append(
            f"| {c.name} | {c.c2st:.3f} | {np.max(np.abs(c.mean_diff)):.3f} | {worst:.3f} | "
            f"{np.mean(c.wasserstein):.3f} |"
        )
    return "\n".join(lines)
