"""Tests of sbikit.emulators.edge_weighted_design: support, seeds, the edge share, errors.

The share of coordinates within 5% of the range of a bound is ``2 * 0.05 = 0.1`` for uniform
draws and ``2 * (2 / pi) * asin(sqrt(0.05)) = 0.287`` for arcsine draws. Tolerances are four
standard errors of the share over rows whose kind (arcsine with probability ``f``, else
prior) is drawn independently: per row the count of near-bound coordinates among ``d`` has
variance ``d (f pa (1 - pa) + (1 - f) pu (1 - pu)) + d^2 f (1 - f) (pa - pu)^2``, which bounds
the design's (it fixes the number of arcsine rows) from above.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbikit.emulators import edge_weighted_design
from sbikit.priors import BoxUniform, Gaussian, Independent

PRIOR = BoxUniform(torch.tensor([2.0, 1.5, 0.5, -0.3, -0.3]), torch.tensor([3.0, 5.0, 4.0, 0.3, 0.3]))
NEAR = 0.05
P_UNIFORM = 2 * NEAR
P_ARCSINE = 2 * (2 / math.pi) * math.asin(math.sqrt(NEAR))


def _unit(theta: torch.Tensor) -> np.ndarray:
    return ((theta - PRIOR.low) / (PRIOR.high - PRIOR.low)).double().numpy()


def _near_share(theta: torch.Tensor) -> float:
    u = _unit(theta)
    return float(((u < NEAR) | (u > 1 - NEAR)).mean())


def _expected_and_sd(fraction: float, rows: int, d: int = 5) -> tuple[float, float]:
    pa, pu = P_ARCSINE, P_UNIFORM
    mean = fraction * pa + (1 - fraction) * pu
    per_row = d * (fraction * pa * (1 - pa) + (1 - fraction) * pu * (1 - pu))
    per_row += d**2 * fraction * (1 - fraction) * (pa - pu) ** 2
    return mean, math.sqrt(per_row / rows) / d


def _within(theta: torch.Tensor, fraction: float) -> bool:
    """Whether the near-bound share of ``theta`` agrees with a design of this ``fraction``."""
    mean, sd = _expected_and_sd(fraction, len(theta), theta.shape[1])
    return abs(_near_share(theta) - mean) <= 4 * sd


def test_shape_support_and_seeds() -> None:
    a = edge_weighted_design(PRIOR, 1000, seed=3)
    assert a.shape == (1000, 5) and a.dtype == torch.float32
    assert bool(PRIOR.in_support(a).all())
    assert torch.equal(a, edge_weighted_design(PRIOR, 1000, seed=3))
    assert not torch.equal(a, edge_weighted_design(PRIOR, 1000, seed=4))
    assert edge_weighted_design(PRIOR, 0, seed=0).shape == (0, 5)
    # numpy scalars are numbers too
    assert torch.equal(a, edge_weighted_design(PRIOR, np.int64(1000), edge_fraction=np.float32(0.5), seed=3))


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_share_of_coordinates_near_the_bounds(fraction: float) -> None:
    theta = edge_weighted_design(PRIOR, 20_000, edge_fraction=fraction, seed=1)
    assert _within(theta, fraction)
    # nor does it agree with a design a quarter away (negative control)
    assert not _within(theta, fraction + 0.25 if fraction < 1 else 0.75)


def test_edge_rows_follow_the_arcsine_law_and_prior_rows_do_not() -> None:
    edge = _unit(edge_weighted_design(PRIOR, 4000, edge_fraction=1.0, seed=2)).ravel()
    assert stats.kstest(edge, stats.beta(0.5, 0.5).cdf).pvalue > 1e-3
    prior_rows = _unit(edge_weighted_design(PRIOR, 4000, edge_fraction=0.0, seed=2)).ravel()
    assert stats.kstest(prior_rows, stats.beta(0.5, 0.5).cdf).pvalue < 1e-6
    assert stats.kstest(prior_rows, stats.uniform.cdf).pvalue > 1e-3


def test_rows_are_shuffled_so_a_tail_split_holds_both_kinds() -> None:
    theta = edge_weighted_design(PRIOR, 20_000, edge_fraction=0.5, seed=5)
    assert _within(theta[:2000], 0.5) and _within(theta[-2000:], 0.5)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="edge_fraction"):
        edge_weighted_design(PRIOR, 10, edge_fraction=1.5)
    with pytest.raises(ValueError, match="edge_fraction"):
        edge_weighted_design(PRIOR, 10, edge_fraction=float("nan"))
    with pytest.raises(ValueError, match="num"):
        edge_weighted_design(PRIOR, -1)
    with pytest.raises(ValueError, match="num"):
        edge_weighted_design(PRIOR, 2.5)
    with pytest.raises(ValueError, match="unbounded"):
        edge_weighted_design(Gaussian(torch.zeros(2), torch.ones(2)), 10)


def test_independent_prior_of_bounded_parts() -> None:
    prior = Independent([BoxUniform(0.0, 1.0), BoxUniform(torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0]))])
    theta = edge_weighted_design(prior, 500, seed=0)
    assert theta.shape == (500, 3) and bool(prior.in_support(theta).all())
