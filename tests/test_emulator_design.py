"""Tests of sbikit.emulators.edge_weighted_design: support, seeds, the edge share, the law, errors.

The share of coordinates within 5% of the range of a bound is ``2 * 0.05 = 0.1`` for uniform
draws and ``2 F(0.05)`` for ``Beta(c, c)`` draws (``F`` its CDF: 0.287 for the arcsine law
``c = 1/2``, 0.582 for ``c = 0.2``). Tolerances are four standard errors of the share over
rows whose kind (edge with probability ``f``, else prior) is drawn independently: per row the
count of near-bound coordinates among ``d`` has variance ``d (f pa (1 - pa) + (1 - f) pu (1 -
pu)) + d^2 f (1 - f) (pa - pu)^2``, which bounds the design's (it fixes the number of edge
rows) from above.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbikit.emulators import edge_weighted_design
from sbikit.emulators.design import DEFAULT_CONCENTRATION, beta_quantile
from sbikit.priors import BoxUniform, Gaussian, Independent

PRIOR = BoxUniform(torch.tensor([2.0, 1.5, 0.5, -0.3, -0.3]), torch.tensor([3.0, 5.0, 4.0, 0.3, 0.3]))
NEAR = 0.05
P_UNIFORM = 2 * NEAR


def p_edge(concentration: float) -> float:
    """Probability that one ``Beta(c, c)`` coordinate lies within ``NEAR`` of a bound."""
    return 2 * float(stats.beta(concentration, concentration).cdf(NEAR))


def _unit(theta: torch.Tensor) -> np.ndarray:
    return ((theta - PRIOR.low) / (PRIOR.high - PRIOR.low)).double().numpy()


def _near_share(theta: torch.Tensor) -> float:
    u = _unit(theta)
    return float(((u < NEAR) | (u > 1 - NEAR)).mean())


def _expected_and_sd(fraction: float, rows: int, d: int, concentration: float) -> tuple[float, float]:
    pa, pu = p_edge(concentration), P_UNIFORM
    mean = fraction * pa + (1 - fraction) * pu
    per_row = d * (fraction * pa * (1 - pa) + (1 - fraction) * pu * (1 - pu))
    per_row += d**2 * fraction * (1 - fraction) * (pa - pu) ** 2
    return mean, math.sqrt(per_row / rows) / d


def _within(theta: torch.Tensor, fraction: float, concentration: float = DEFAULT_CONCENTRATION) -> bool:
    """Whether the near-bound share of ``theta`` agrees with a design of this ``fraction`` and shape."""
    mean, sd = _expected_and_sd(fraction, len(theta), theta.shape[1], concentration)
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


@pytest.mark.parametrize("concentration", [0.5, 0.2])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_share_of_coordinates_near_the_bounds(fraction: float, concentration: float) -> None:
    theta = edge_weighted_design(PRIOR, 20_000, edge_fraction=fraction, concentration=concentration, seed=1)
    assert _within(theta, fraction, concentration)
    # nor does it agree with a design a quarter away (negative control)
    assert not _within(theta, fraction + 0.25 if fraction < 1 else 0.75, concentration)


def test_the_concentration_changes_the_share() -> None:
    """Half the rows on Beta(0.2, 0.2) are not half the rows on the arcsine law, and vice versa."""
    theta = edge_weighted_design(PRIOR, 20_000, edge_fraction=0.5, concentration=0.2, seed=6)
    assert _within(theta, 0.5, 0.2) and not _within(theta, 0.5, 0.5)
    arcsine = edge_weighted_design(PRIOR, 20_000, edge_fraction=0.5, concentration=0.5, seed=6)
    assert _within(arcsine, 0.5, 0.5) and not _within(arcsine, 0.5, 0.2)


def _binned_pvalue(u: np.ndarray, concentration: float, bins: int = 10) -> float:
    """Chi-square p-value of ``u`` against ``Beta(c, c)`` in ``bins`` bins of equal probability.

    Binned rather than KS: a design is float32 parameters, so unit coordinates within ~1e-7 of
    a bound (3% of ``Beta(0.2, 0.2)`` draws lie within 1e-6) are rounded onto it; the bins'
    outermost edges (1e-5 of the range for ``c = 0.2``, ten bins) lie far above that rounding.
    """
    edges = stats.beta(concentration, concentration).ppf(np.linspace(0, 1, bins + 1))
    counts = np.histogram(np.clip(u, 0, 1), bins=edges)[0]
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.parametrize("concentration", [0.5, 0.2, 2.0])
def test_edge_rows_follow_their_beta_law_and_prior_rows_do_not(concentration: float) -> None:
    edge = _unit(edge_weighted_design(PRIOR, 4000, edge_fraction=1.0, concentration=concentration, seed=2)).ravel()
    assert _binned_pvalue(edge, concentration) > 1e-3
    other = 0.5 if concentration != 0.5 else 0.2
    assert _binned_pvalue(edge, other) < 1e-6  # another shape is told apart (negative control)
    prior_rows = _unit(edge_weighted_design(PRIOR, 4000, edge_fraction=0.0, concentration=concentration, seed=2))
    assert _binned_pvalue(prior_rows.ravel(), concentration) < 1e-6
    assert stats.kstest(prior_rows.ravel(), stats.uniform.cdf).pvalue > 1e-3
    # the quantile function itself, finer (20 bins; float32 resolves 6e-8 next to 1, where 3% of
    # Beta(0.2, 0.2) lies within 1e-6, so a KS test of float32 values would see the rounding)
    v = torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    assert _binned_pvalue(beta_quantile(v, concentration).double().numpy(), concentration, bins=20) > 1e-3


def test_concentration_one_is_uniform_and_one_half_is_the_closed_form_arcsine() -> None:
    v = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(beta_quantile(v, 1.0), v, atol=1e-6)
    # 0.5 keeps the sin^2 form that designs and stores used before the shape was a parameter
    assert torch.equal(beta_quantile(v, 0.5), torch.sin(0.5 * math.pi * v) ** 2)
    exact = torch.as_tensor(stats.beta(0.5, 0.5).ppf(v.double().numpy()), dtype=torch.float32)
    assert torch.allclose(beta_quantile(v, 0.5), exact, atol=1e-5)
    assert torch.allclose(beta_quantile(v, 0.2), torch.as_tensor(stats.beta(0.2, 0.2).ppf(v.double().numpy())).float())


def test_rows_are_shuffled_so_a_tail_split_holds_both_kinds() -> None:
    theta = edge_weighted_design(PRIOR, 20_000, edge_fraction=0.5, seed=5)
    assert _within(theta[:2000], 0.5) and _within(theta[-2000:], 0.5)
    # the default shape, which _within assumes, is the documented one
    assert DEFAULT_CONCENTRATION == 0.5


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
    for bad in (0, -0.5, float("nan"), float("inf"), "0.2", None):
        with pytest.raises(ValueError, match="concentration must be a finite number > 0"):
            edge_weighted_design(PRIOR, 10, concentration=bad)
    assert edge_weighted_design(PRIOR, 10, concentration=np.float32(0.3), seed=0).shape == (10, 5)


def test_independent_prior_of_bounded_parts() -> None:
    prior = Independent([BoxUniform(0.0, 1.0), BoxUniform(torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0]))])
    theta = edge_weighted_design(prior, 500, seed=0)
    assert theta.shape == (500, 3) and bool(prior.in_support(theta).all())
