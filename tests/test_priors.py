"""Tests for sbikit.priors: sampling, densities against scipy, support, bijections, conversion, configs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from sbikit import priors as P
from sbikit.priors import BoxUniform, Gaussian, Independent, LogNormal, as_prior, prior_from_config

D = torch.distributions


def _box() -> BoxUniform:
    return BoxUniform([-1.0, 0.0, 2.0], [1.0, 5.0, 2.5])


def _gauss() -> Gaussian:
    return Gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])


def _lognormal() -> LogNormal:
    return LogNormal([0.0, 1.0], [0.5, 0.2])


def _independent() -> Independent:
    return Independent([BoxUniform([0.0], [1.0]), Gaussian([0.0], [2.0]), LogNormal(0.0, 1.0)])


FACTORIES = {"box": _box, "gauss": _gauss, "lognormal": _lognormal, "independent": _independent}


def _scipy_marginals(name: str) -> list:
    """Frozen scipy 1-d distributions of each coordinate (all four test priors but the
    Gaussian are products of their marginals; the Gaussian is handled separately)."""
    if name == "box":
        return [stats.uniform(-1, 2), stats.uniform(0, 5), stats.uniform(2, 0.5)]
    if name == "gauss":
        return [stats.norm(0.5, 1.0), stats.norm(-1.0, math.sqrt(0.5))]
    if name == "lognormal":
        return [stats.lognorm(s=0.5, scale=1.0), stats.lognorm(s=0.2, scale=math.e)]
    return [stats.uniform(0, 1), stats.norm(0, math.sqrt(2.0)), stats.lognorm(s=1.0, scale=1.0)]


def _scipy_logpdf(name: str, theta: np.ndarray) -> np.ndarray:
    if name == "gauss":
        return stats.multivariate_normal([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]]).logpdf(theta)
    return sum(m.logpdf(theta[:, i]) for i, m in enumerate(_scipy_marginals(name)))


# -- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_sample_shape_dtype_and_seeding(name: str) -> None:
    p = FACTORIES[name]()
    s = p.sample(17, seed=3)
    assert s.shape == (17, p.dim) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.equal(s, p.sample(17, seed=3))
    assert not torch.equal(s, p.sample(17, seed=4))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(s, p.sample(17, generator=gen))
    assert p.sample(0, seed=0).shape == (0, p.dim)
    with pytest.raises(ValueError, match="non-negative"):
        p.sample(-1)


@pytest.mark.parametrize("name", FACTORIES)
def test_samples_follow_the_distribution(name: str) -> None:
    p = FACTORIES[name]()
    s = p.sample(20_000, seed=1).double().numpy()
    assert bool(p.in_support(torch.from_numpy(s)).all())
    assert np.isfinite(p.log_prob(torch.from_numpy(s)).numpy()).all()
    # Kolmogorov-Smirnov per coordinate; under H0 the p-value is uniform, so a threshold of
    # 1e-4 fails a correct sampler once in 10^4 seeds, while at n = 20000 a location off by
    # 0.05 sd or a scale off by 10 % gives p-values far below it (negative control below).
    for i, marginal in enumerate(_scipy_marginals(name)):
        assert stats.kstest(s[:, i], marginal.cdf).pvalue > 1e-4, f"coordinate {i}"


@pytest.mark.parametrize(("mean", "sd"), [(0.05, 1.0), (0.0, 1.1)])
def test_sample_ks_negative_control(mean: float, sd: float) -> None:
    # The same KS check must reject a sampler shifted by 0.05 sd or with a 10 % larger scale.
    s = Gaussian([mean], [sd**2]).sample(20_000, seed=1).double().numpy()[:, 0]
    assert stats.kstest(s, stats.norm(0, 1).cdf).pvalue < 1e-4


def test_gaussian_sample_covariance() -> None:
    p = _gauss()
    n = 50_000
    s = p.sample(n, seed=2).double().numpy()
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n); allow 5 SE.
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(np.cov(s.T) - cov) < 5 * se)


def test_box_sample_never_hits_the_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.rand returns exactly 0.0 about once in 2^24 draws, which would put theta on the
    # bound, outside the open support. Force that case.
    real_rand = torch.rand

    def zeros_rand(*size: int, **kwargs: object) -> torch.Tensor:
        return torch.zeros_like(real_rand(*size, **kwargs))

    monkeypatch.setattr(torch, "rand", zeros_rand)
    p = BoxUniform([0.1, -2.0], [0.6, -0.4])
    s = p.sample(5, seed=0)
    assert bool(p.in_support(s).all())
    assert torch.isfinite(p.log_prob(s)).all()


# -- densities -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_log_prob_matches_scipy(name: str) -> None:
    p = FACTORIES[name]()
    theta = p.sample(500, seed=5).double()
    lp = p.log_prob(theta)
    assert lp.shape == (500,)
    np.testing.assert_allclose(lp.numpy(), _scipy_logpdf(name, theta.numpy()), rtol=1e-6, atol=1e-8)
    # Batch dimensions are kept: (..., d) -> (...).
    assert p.log_prob(theta.reshape(5, 100, p.dim)).shape == (5, 100)


def test_log_prob_outside_support_is_minus_inf() -> None:
    box = _box()
    lp = box.log_prob(torch.tensor([[0.0, 1.0, 2.2], [1.5, 1.0, 2.2], [0.0, -1.0, 2.2], [-1.0, 1.0, 2.2]]))
    assert lp[0].item() == pytest.approx(-math.log(2 * 5 * 0.5), rel=1e-6)
    assert torch.isneginf(lp[1:]).all()  # outside, outside, on the (open) boundary
    ln = _lognormal()
    assert torch.isneginf(ln.log_prob(torch.tensor([[-1.0, 1.0], [1.0, 0.0]]))).all()
    assert torch.isneginf(_independent().log_prob(torch.tensor([0.5, 0.0, -1.0]))).item()
    assert torch.isfinite(_gauss().log_prob(torch.tensor([100.0, -100.0])))


@pytest.mark.parametrize("name", FACTORIES)
def test_wrong_theta_dimension_raises(name: str) -> None:
    p = FACTORIES[name]()
    with pytest.raises(ValueError, match=rf"shape \(\.\.\., {p.dim}\)"):
        p.log_prob(torch.zeros(4, p.dim + 1))


# -- support and bijection ----------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_bijection_round_trip(name: str) -> None:
    p = FACTORIES[name]()
    theta = p.sample(1000, seed=6).double()
    u = p.to_unconstrained(theta)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(p.from_unconstrained(u), theta, atol=1e-5, rtol=0)
    u = 3 * torch.randn(1000, p.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(p.to_unconstrained(p.from_unconstrained(u)), u, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FACTORIES)
def test_from_unconstrained_lands_inside_support(name: str) -> None:
    p = FACTORIES[name]()
    u = torch.tensor([-200.0, -30.0, 0.0, 30.0, 80.0])[:, None].expand(5, p.dim)  # float32 extremes
    assert bool(p.in_support(p.from_unconstrained(u)).all())


@pytest.mark.parametrize("name", FACTORIES)
def test_log_abs_det_jacobian_matches_autograd(name: str) -> None:
    p = FACTORIES[name]()
    u = 2 * torch.randn(20, p.dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ladj = p.log_abs_det_jacobian(u)
    assert ladj.shape == (20,)
    for i in range(u.shape[0]):
        jac = torch.autograd.functional.jacobian(p.from_unconstrained, u[i])
        expected = torch.linalg.slogdet(jac).logabsdet
        assert ladj[i].item() == pytest.approx(expected.item(), abs=1e-6)


def test_change_of_variables_density_integrates_to_one() -> None:
    # The pushed-back density p(f(u)) |det J(u)| on R must integrate to 1 (1-d box, fine grid).
    p = BoxUniform([2.0], [5.0])
    u = torch.linspace(-40, 40, 200_001, dtype=torch.float64)[:, None]
    dens = torch.exp(p.log_prob(p.from_unconstrained(u)) + p.log_abs_det_jacobian(u))
    assert torch.trapezoid(dens, u[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_check_support_names_the_bounds() -> None:
    p = BoxUniform([0.0, 0.0], [1.0, 2.0])
    p.check_support(torch.tensor([[0.5, 1.5]]))  # inside: no error
    with pytest.raises(ValueError) as err:
        p.check_support(torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.0, 3.0]]), name="theta_o")
    msg = str(err.value)
    assert "2 row(s)" in msg and "row 1" in msg and "theta_o" in msg
    assert "low=[0.0, 0.0]" in msg and "high=[1.0, 2.0]" in msg


# -- conversion from other libraries ---------------------------------------------------------


def _check_same_density(prior: P.Prior, dist: D.Distribution, theta: torch.Tensor) -> None:
    expected = dist.log_prob(theta)
    if expected.ndim == theta.ndim:  # elementwise distribution (no Independent wrapper)
        expected = expected.sum(-1)
    torch.testing.assert_close(prior.log_prob(theta), expected, rtol=1e-5, atol=1e-5)


def test_as_prior_uniform() -> None:
    low, high = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 2.0])
    for dist in (D.Uniform(low, high), D.Independent(D.Uniform(low, high), 1)):
        p = as_prior(dist)
        assert isinstance(p, BoxUniform)
        assert torch.equal(p.low, low) and torch.equal(p.high, high)
        _check_same_density(p, dist, p.sample(100, seed=0))


def test_as_prior_sbi_box_uniform() -> None:
    from sbi.utils import BoxUniform as SbiBoxUniform

    dist = SbiBoxUniform(torch.tensor([0.0, -3.0, 1.0]), torch.tensor([2.0, 3.0, 1.5]))
    p = as_prior(dist)
    assert isinstance(p, BoxUniform) and p.dim == 3
    torch.testing.assert_close(p.high, torch.tensor([2.0, 3.0, 1.5]))
    _check_same_density(p, dist, p.sample(100, seed=0))


def test_as_prior_gaussians() -> None:
    loc = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    mvn = D.MultivariateNormal(loc, covariance_matrix=cov)
    p = as_prior(mvn)
    assert isinstance(p, Gaussian)
    torch.testing.assert_close(p.cov, cov)
    _check_same_density(p, mvn, mvn.sample((100,)))

    scale = torch.tensor([0.5, 3.0])
    ind = D.Independent(D.Normal(loc, scale), 1)
    p = as_prior(ind)
    assert isinstance(p, Gaussian)
    torch.testing.assert_close(p.cov, torch.diag(scale**2))
    _check_same_density(p, ind, ind.sample((100,)))

    ln = D.Independent(D.LogNormal(loc, scale), 1)
    p = as_prior(ln)
    assert isinstance(p, LogNormal)
    _check_same_density(p, ln, ln.sample((100,)))


def test_as_prior_fallback_wraps_other_distributions() -> None:
    dist = D.Independent(D.Gamma(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5])), 1)
    p = as_prior(dist)
    assert isinstance(p, P.TorchPrior) and p.dim == 2
    assert torch.equal(p.low, torch.zeros(2)) and torch.isinf(p.high).all()
    state = torch.get_rng_state()
    s = p.sample(50, seed=1)
    assert torch.equal(torch.get_rng_state(), state), "sampling must not advance the global RNG"
    assert torch.equal(s, p.sample(50, seed=1)) and s.shape == (50, 2)
    _check_same_density(p, dist, s)
    assert torch.isneginf(p.log_prob(torch.tensor([-1.0, 1.0])))
    u = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(p.to_unconstrained(p.from_unconstrained(u)), u)
    with pytest.raises(ValueError, match="cannot be saved"):
        p.to_config()


def test_as_prior_passthrough_and_type_error() -> None:
    p = _box()
    assert as_prior(p) is p
    with pytest.raises(TypeError, match="cannot use str as a prior"):
        as_prior("uniform")


# -- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_config_round_trip(name: str) -> None:
    p = FACTORIES[name]()
    cfg = json.loads(json.dumps(p.to_config()))  # must be JSON-able
    q = prior_from_config(cfg)
    assert type(q) is type(p) and q.dim == p.dim
    assert q.to_config() == cfg
    torch.testing.assert_close(q.sample(100, seed=9), p.sample(100, seed=9), rtol=1e-6, atol=1e-6)
    theta = p.sample(100, seed=10).double()
    torch.testing.assert_close(q.log_prob(theta), p.log_prob(theta), rtol=1e-6, atol=1e-6)
    assert repr(q) == repr(p)


def test_config_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown prior type"):
        prior_from_config({"type": "Cauchy"})


# -- argument validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BoxUniform([0.0, 1.0], [0.0, 2.0]), "low < high"),
        (lambda: BoxUniform([1.0], [0.0]), "low < high"),
        (lambda: BoxUniform([0.0, 0.0], [1.0]), "same shape"),
        (lambda: BoxUniform([0.0, float("nan")], [1.0, 1.0]), "finite"),
        (lambda: BoxUniform([[0.0]], [[1.0]]), "1-d"),
        (lambda: Gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
        (lambda: Gaussian([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
        (lambda: Gaussian([0.0, 0.0], [1.0, 2.0, 3.0]), r"shape \(2,\)"),
        (lambda: Gaussian([0.0, 0.0], np.ones((3, 3))), r"shape \(2, 2\)"),
        (lambda: LogNormal(0.0, -1.0), "positive"),
        (lambda: LogNormal([0.0, 0.0], 0.0), "positive"),
        (lambda: Independent([]), "at least one"),
    ],
)
def test_bad_arguments_raise_value_error(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
