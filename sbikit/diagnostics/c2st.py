"""Classifier two-sample test (C2ST).

The standard SBI-benchmark variant: an MLP with two hidden layers of ``10 * d`` ReLU units
is trained to tell samples of ``a`` from samples of ``b``; inputs are z-scored with the
mean and standard deviation of ``b`` (the reference); the score is the mean accuracy over
``k``-fold stratified cross-validation. 0.5 means indistinguishable, 1.0 fully separable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neural_network import MLPClassifier

__all__ = ["c2st", "default_classifier"]


def _as_2d(a: Any, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf")
    return arr


def default_classifier(dim: int, seed: int = 0, max_iter: int = 10000) -> MLPClassifier:
    """The benchmark's MLP: two hidden layers of ``10 * dim`` ReLU units, Adam."""
    return MLPClassifier(
        hidden_layer_sizes=(10 * dim, 10 * dim),
        activation="relu",
        solver="adam",
        max_iter=max_iter,
        random_state=seed,
    )


def c2st(
    a: Any,
    b: Any,
    *,
    seed: int = 0,
    folds: int = 5,
    max_iter: int = 10000,
    classifier: Any | None = None,
) -> float:
    """Cross-validated accuracy of a classifier separating ``a`` from ``b``.

    Args:
        a: samples ``(n_a, d)`` (numpy or torch), e.g. from an estimated posterior.
        b: samples ``(n_b, d)``, the reference; its statistics z-score both sets.
        seed: seeds the folds and the classifier.
        folds: number of cross-validation folds.
        max_iter: cap on the classifier's epochs (it stops sooner when its training loss stalls).
        classifier: any scikit-learn classifier to use instead of :func:`default_classifier`
            (e.g. an ``MLPClassifier(early_stopping=True)``, much faster in 10 dimensions).

    Returns:
        Mean held-out accuracy in [0, 1]; about 0.5 when ``a`` and ``b`` share a distribution.
    """
    xa, xb = _as_2d(a, "a"), _as_2d(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a and b need the same number of columns, got {xa.shape[1]} and {xb.shape[1]}")
    mean, std = xb.mean(0), xb.std(0)
    std = np.where(std > 0, std, 1.0)
    data = (np.concatenate([xa, xb]) - mean) / std
    labels = np.concatenate([np.zeros(len(xa)), np.ones(len(xb))])
    d = data.shape[1]
    clf = default_classifier(d, seed, max_iter) if classifier is None else classifier
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(clf, data, labels, cv=cv, scoring="accuracy")
    return float(np.mean(scores))
