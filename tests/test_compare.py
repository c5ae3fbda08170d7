"""Tests for sbikit.compare: statistics against known differences, with Monte Carlo tolerances.

For ``n`` samples against ``m`` reference samples of a unit normal, the standardised
mean difference has standard error ``sqrt(1/n + 1/m)`` and the sd ratio about
``sqrt(1/(2n) + 1/(2m))``; checks allow 5 of those.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sbikit
from sbikit.compare import Comparison, comparison_table

N = 2000


def _normal(shift: float, scale: float, seed: int) -> np.ndarray:
    return shift + scale * np.random.default_rng(seed).standard_normal((N, 2))


def test_same_distribution_looks_the_same():
    result = sbikit.compare(_normal(0, 1, 1), torch.as_tensor(_normal(0, 1, 2)), labels=["a", "b"])
    se_mean = math.sqrt(2 / N)
    se_ratio = math.sqrt(1 / N)
    assert np.all(np.abs(result.mean_diff) < 5 * se_mean)
    assert np.all(np.abs(result.std_ratio - 1) < 5 * se_ratio)
    # W1 between two samples of the same law is O(1/sqrt(N)) (~0.03 here).
    assert np.all(result.wasserstein < 0.1)
    # Accuracy of a useless classifier: 0.5 +- 0.5 / sqrt(2 N) ~ 0.008.
    assert result.c2st < 0.55


def test_known_differences_are_measured():
    ref = _normal(0, 1, 3)
    shifted = sbikit.compare(_normal(0.5, 1, 4), ref)
    se_mean = math.sqrt(2 / N)
    assert np.all(np.abs(shifted.mean_diff - 0.5) < 5 * se_mean)
    # W1 of a pure shift is the shift (sampling adds O(1/sqrt(N))).
    assert np.all(np.abs(shifted.wasserstein - 0.5) < 0.1)
    # Best possible accuracy for N(0, I) vs N(0.5 * 1, I) in 2-d is Phi(0.5 * sqrt(2) / 2) ~ 0.64.
    assert shifted.c2st > 0.58
    wide = sbikit.compare(_normal(0, 1.5, 5), ref)
    assert np.all(np.abs(wide.std_ratio - 1.5) < 5 * 1.5 * math.sqrt(1 / N))


def test_tables_and_dict():
    ref = _normal(0, 1, 6)

    class Result:  # anything with .samples, like sbikit.mcmc.MCMCResult
        samples = torch.as_tensor(ref)

    a = sbikit.compare(_normal(0, 1, 7), Result(), labels=["Omega_m", "w"], name="NPE", max_samples=500)
    assert isinstance(a, Comparison)
    text = a.to_markdown()
    assert "Omega_m" in text and "C2ST" in text and "NPE" in text
    table = comparison_table([a, sbikit.compare(_normal(1, 1, 8), ref, name="NLE", max_samples=500)])
    assert table.count("\n") == 3 and "| NLE |" in table
    d = a.to_dict()
    assert set(d["mean_diff"]) == {"Omega_m", "w"} and 0 <= d["c2st"] <= 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="same number of parameters"):
        sbikit.compare(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="labels must have 2"):
        sbikit.compare(_normal(0, 1, 1), _normal(0, 1, 2), labels=["a"])
    with pytest.raises(ValueError, match="NaN"):
        sbikit.compare(np.full((10, 2), np.nan), _normal(0, 1, 2))
