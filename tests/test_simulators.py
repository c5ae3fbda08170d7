"""Tests for the example simulators: protocol, registry, exact likelihoods and exact posteriors.

Statistical checks use fixed seeds and tolerances derived from Monte Carlo error:
means are compared within 5 standard errors (a false failure about once in 1.7 million
runs for a Gaussian statistic), chi-square and KS checks use p-value thresholds of 1e-4,
and each statistical check has a negative control (a wrong model) that must fail it.
Quadrature checks (densities integrating to one, distance moduli against scipy) use the
quadrature error as their tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import simulators
from simulators import GaussianLinear, GaussianMixture, Simulator, Supernova, TwoMoons, registry
from simulators.supernova import SPEED_OF_LIGHT_KM_S

BUILTIN = ["gaussian_linear", "gaussian_mixture", "slcp", "supernova", "two_moons"]

# Smallest p-value a correct model may produce; under the null the p-value is uniform, so a
# correct simulator fails a single check with probability 1e-4.
P_MIN = 1e-4
# Number of standard errors allowed for Monte Carlo means.
N_SE = 5.0


@pytest.fixture(params=BUILTIN)
def sim(request: pytest.FixtureRequest) -> Simulator:
    return simulators.get(request.param)


def _theta(sim: Simulator, n: int, seed: int = 0) -> np.ndarray:
    return sim.prior.sample(n, seed=seed).double().numpy()


# -- registry --------------------------------------------------------------------------------


def test_available_lists_builtins_sorted() -> None:
    names = simulators.available()
    assert names == sorted(names)
    assert set(BUILTIN) <= set(names)


@pytest.mark.parametrize("name", BUILTIN)
def test_get_returns_fresh_instances(name: str) -> None:
    a, b = simulators.get(name), simulators.get(name)
    assert isinstance(a, Simulator) and a is not b and a.prior is not b.prior
    assert a.name == name
    assert len(a.theta_names) == a.dim == a.prior.dim
    assert name in repr(a)


def test_get_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError, match="available: gaussian_linear, gaussian_mixture"):
        simulators.get("three_moons")


def test_get_passes_constructor_kwargs() -> None:
    sim = simulators.get("gaussian_linear", dim=3)
    assert sim.dim == 3 and sim.x_shape == (3,)
    sn = simulators.get("supernova", num_sne=7, sigma_mu=0.2)
    assert sn.x_shape == (7,) and sn.sigma_mu == 0.2
    assert sn.simulate(np.array([0.3, -1.0]), seed=0).shape == (7,)
    with pytest.raises(TypeError):
        simulators.get("two_moons", dim=3)


def test_register_user_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @simulators.register("shifted_normal")
    class ShiftedNormal(Simulator):
        def __init__(self, scale: float = 1.0) -> None:
            from sbikit.priors import BoxUniform

            self.scale = scale
            self.prior = BoxUniform([0.0], [1.0])
            self.theta_names = ["loc"]
            self.x_shape = (3,)

        def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return theta + self.scale * rng.standard_normal((theta.shape[0], 3))

        def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
            return stats.norm(theta, self.scale).logpdf(x).sum(axis=1)

    assert "shifted_normal" in simulators.available()
    user = simulators.get("shifted_normal", scale=2.0)
    assert isinstance(user, ShiftedNormal) and user.name == "shifted_normal" and user.scale == 2.0
    x = user.simulate(torch.tensor([[0.5], [0.2]]), seed=0)
    assert x.shape == (2, 3) and user.log_likelihood(torch.tensor([0.5]), x).shape == (2,)

    with pytest.raises(ValueError, match="already registered"):

        @simulators.register("shifted_normal")
        class Other(ShiftedNormal):
            pass

    # A factory function works too.
    simulators.register("wide_normal")(lambda: ShiftedNormal(scale=10.0))
    assert simulators.get("wide_normal").scale == 10.0


def test_register_rejects_empty_name() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        simulators.register("")


# -- protocol, for every simulator -----------------------------------------------------------


def test_shapes_and_types(sim: Simulator) -> None:
    theta_t = sim.prior.sample(7, seed=0)
    theta_np = theta_t.double().numpy()
    x_np = sim.simulate(theta_np, seed=1)
    assert isinstance(x_np, np.ndarray) and x_np.dtype == np.float64 and x_np.shape == (7, *sim.x_shape)
    x_t = sim.simulate(theta_t, seed=1)
    assert isinstance(x_t, torch.Tensor) and x_t.dtype == torch.float32 and x_t.shape == (7, *sim.x_shape)
    np.testing.assert_allclose(x_t.numpy(), x_np, rtol=1e-5, atol=1e-5)  # same draws, float32 output
    one = sim.simulate(theta_np[0], seed=1)
    assert one.shape == sim.x_shape
    np.testing.assert_array_equal(one, sim.simulate(theta_np[:1], seed=1)[0])
    assert isinstance(sim.simulate(theta_np.tolist(), seed=1), np.ndarray)
    assert sim.simulate(theta_np[:0], seed=1).shape == (0, *sim.x_shape)

    ll_np = sim.log_likelihood(theta_np, x_np)
    assert isinstance(ll_np, np.ndarray) and ll_np.dtype == np.float64 and ll_np.shape == (7,)
    ll_t = sim.log_likelihood(theta_t, x_t)
    assert isinstance(ll_t, torch.Tensor) and ll_t.dtype == torch.float32 and ll_t.shape == (7,)
    ll_64 = sim.log_likelihood(theta_t.double(), x_np)
    assert isinstance(ll_64, torch.Tensor) and ll_64.dtype == torch.float64
    np.testing.assert_allclose(ll_64.numpy(), ll_np, rtol=1e-12)


def test_seeding(sim: Simulator) -> None:
    theta = _theta(sim, 50)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    x = sim.simulate(theta, seed=3)
    np.testing.assert_array_equal(x, sim.simulate(theta, seed=3))
    np.testing.assert_array_equal(x, sim.simulate(theta, rng=np.random.default_rng(3)))
    assert np.all(x != sim.simulate(theta, seed=4))
    # The global RNGs are neither used nor advanced.
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(
        torch.get_rng_state(), torch_state
    )
    # Unseeded calls draw fresh entropy.
    assert not np.array_equal(sim.simulate(theta), sim.simulate(theta))
    with pytest.raises(ValueError, match="not both"):
        sim.simulate(theta, seed=1, rng=np.random.default_rng(1))
    with pytest.raises(TypeError, match="seed="):
        sim.simulate(theta, rng=3)  # type: ignore[arg-type]


class CountingGenerator(np.random.Generator):
    """A numpy Generator that counts how often its public methods are looked up."""

    def __init__(self, seed: int) -> None:
        super().__init__(np.random.PCG64(seed))
        self.calls = 0

    def __getattribute__(self, name: str) -> object:
        if not name.startswith("_") and name != "calls":
            object.__setattr__(self, "calls", object.__getattribute__(self, "calls") + 1)
        return super().__getattribute__(name)


def test_simulate_is_vectorised(sim: Simulator) -> None:
    n = 10_000
    rng = CountingGenerator(0)
    theta = np.repeat(_theta(sim, 1), n, axis=0)
    x = sim.simulate(theta, rng=rng)
    assert x.shape == (n, *sim.x_shape) and np.isfinite(x).all()
    # A loop over rows would call the generator at least n times.
    assert rng.calls <= 10
    # Rows with equal theta get independent noise, not one broadcast draw.
    assert len(np.unique(x.reshape(n, -1)[:, 0])) == n


def test_log_likelihood_finite_on_own_simulations(sim: Simulator) -> None:
    theta = _theta(sim, 2000)
    x = sim.simulate(theta, seed=1)
    assert np.isfinite(sim.log_likelihood(theta, x)).all()


def test_log_likelihood_broadcasting(sim: Simulator) -> None:
    theta = _theta(sim, 5)
    x = sim.simulate(theta, seed=2)
    rep = [0] * 5
    np.testing.assert_array_equal(sim.log_likelihood(theta[0], x), sim.log_likelihood(theta[rep], x))
    np.testing.assert_array_equal(sim.log_likelihood(theta, x[0]), sim.log_likelihood(theta, x[rep]))
    both = sim.log_likelihood(theta[0], x[0])
    assert np.shape(both) == () and both == sim.log_likelihood(theta[:1], x[:1])[0]
    lt = sim.log_likelihood(torch.from_numpy(theta[0]).float(), torch.from_numpy(x).float())
    assert isinstance(lt, torch.Tensor) and lt.shape == (5,)
    assert isinstance(sim.log_likelihood(theta[0], torch.from_numpy(x)), np.ndarray)  # kind follows theta


def test_bad_shapes_raise(sim: Simulator) -> None:
    d, name = sim.dim, sim.name
    with pytest.raises(
        ValueError, match=rf"theta must have shape \(n, {d}\) .*for {name}, got \(5, {d + 1}\)"
    ):
        sim.simulate(np.zeros((5, d + 1)))
    with pytest.raises(ValueError, match="theta must have shape"):
        sim.simulate(np.zeros((2, 5, d)))
    with pytest.raises(ValueError, match="theta must have shape"):
        sim.log_likelihood(np.zeros(d + 1), np.zeros(sim.x_shape))
    theta = _theta(sim, 5)
    x = sim.simulate(theta, seed=0)
    bad_x = np.zeros((5, *[s + 1 for s in sim.x_shape]))
    with pytest.raises(ValueError, match=rf"x must have shape \(n, .*for {name}, got \(5, "):
        sim.log_likelihood(theta, bad_x)
    with pytest.raises(ValueError, match="theta has 5 rows but x has 4"):
        sim.log_likelihood(theta, x[:4])


def test_log_posterior_unnormalized(sim: Simulator) -> None:
    theta = _theta(sim, 20)
    x = sim.simulate(theta, seed=0)
    lp = sim.prior.log_prob(torch.from_numpy(theta)).numpy()
    np.testing.assert_allclose(sim.log_posterior_unnormalized(theta, x), sim.log_likelihood(theta, x) + lp)
    single = sim.log_posterior_unnormalized(theta[0], x[0])
    assert np.shape(single) == () and single == pytest.approx(sim.log_likelihood(theta[0], x[0]) + lp[0])
    t = sim.log_posterior_unnormalized(torch.from_numpy(theta), x)
    assert isinstance(t, torch.Tensor) and t.shape == (20,)


def test_log_likelihood_never_nan(sim: Simulator) -> None:
    theta = _theta(sim, 3)
    x = sim.simulate(theta, seed=0)
    theta[0, 0] = np.nan
    x[1] = np.nan
    ll = sim.log_likelihood(theta, x)
    assert not np.isnan(ll).any()
    assert ll[0] == -np.inf and ll[1] == -np.inf and np.isfinite(ll[2])


# -- likelihoods against scipy ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"dim": 3, "prior_var": 0.5, "noise_var": 0.2}])
def test_gaussian_linear_likelihood_matches_scipy(kwargs: dict) -> None:
    sim = GaussianLinear(**kwargs)
    theta = _theta(sim, 30)
    x = sim.simulate(theta, seed=1)
    cov = sim.noise_var * np.eye(sim.dim)
    expected = [stats.multivariate_normal(t, cov).logpdf(xi) for t, xi in zip(theta, x, strict=True)]
    np.testing.assert_allclose(sim.log_likelihood(theta, x), expected, rtol=1e-10)


def test_slcp_likelihood_matches_scipy() -> None:
    sim = simulators.get("slcp")
    theta = _theta(sim, 30)
    x = sim.simulate(theta, seed=1)
    expected = []
    for t, xi in zip(theta, x, strict=True):
        s1, s2, rho = t[2] ** 2, t[3] ** 2, np.tanh(t[4])
        cov = np.array([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
        expected.append(stats.multivariate_normal(t[:2], cov).logpdf(xi.reshape(4, 2)).sum())
    np.testing.assert_allclose(sim.log_likelihood(theta, x), expected, rtol=1e-9)
    # Singular covariance (theta_3 = 0) is impossible, not NaN.
    theta[0, 2] = 0.0
    assert sim.log_likelihood(theta[0], x[0]) == -np.inf


def test_gaussian_mixture_likelihood_matches_scipy() -> None:
    sim = GaussianMixture()
    theta = _theta(sim, 30)
    x = sim.simulate(theta, seed=1)
    expected = [
        np.log(
            0.5 * stats.multivariate_normal(t, np.eye(2)).pdf(xi)
            + 0.5 * stats.multivariate_normal(t, 0.01 * np.eye(2)).pdf(xi)
        )
        for t, xi in zip(theta, x, strict=True)
    ]
    np.testing.assert_allclose(sim.log_likelihood(theta, x), expected, rtol=1e-10)


def _mu_quad(sn: Supernova, om: float, w: float) -> np.ndarray:
    def inv_e(z: float) -> float:
        return 1.0 / math.sqrt(om * (1 + z) ** 3 + (1 - om) * (1 + z) ** (3 * (1 + w)))

    chi = np.array([integrate.quad(inv_e, 0.0, z, epsabs=0.0, epsrel=1e-12)[0] for z in sn.redshifts])
    d_l = (1 + sn.redshifts) * SPEED_OF_LIGHT_KM_S / sn.h0 * chi
    return 5 * np.log10(d_l) + 25


def test_supernova_distance_modulus_matches_quad() -> None:
    sn = Supernova()
    assert sn.redshifts[0] == 0.05 and sn.redshifts[-1] == 1.4 and sn.x_shape == (40,)
    # The prior corners, its centre and LambdaCDM.
    theta = np.array([[0.1, -2.0], [0.1, -0.4], [0.6, -2.0], [0.6, -0.4], [0.35, -1.2], [0.3, -1.0]])
    mu = sn.distance_modulus(theta)
    assert mu.shape == (6, 40)
    for row, (om, w) in zip(mu, theta, strict=True):
        np.testing.assert_allclose(row, _mu_quad(sn, om, w), rtol=1e-6)
    # LambdaCDM, Omega_m = 0.3, H0 = 70 at z = 1: d_L = 6607.7 Mpc, mu = 44.100.
    mu_1 = Supernova(redshifts=[1.0]).distance_modulus(np.array([0.3, -1.0]))
    assert mu_1.shape == (1,) and mu_1[0] == pytest.approx(44.100, abs=2e-3)
    mu_t = sn.distance_modulus(torch.tensor([0.3, -1.0]))
    assert isinstance(mu_t, torch.Tensor) and mu_t.shape == (40,)
    # H0 only shifts mu by 5 log10(70 / H0).
    np.testing.assert_allclose(
        Supernova(h0=65.0).distance_modulus(theta), mu + 5 * np.log10(70 / 65), rtol=1e-12
    )


def test_supernova_blocks_agree_with_single_rows() -> None:
    sn = Supernova()
    theta = _theta(sn, 3000)  # more rows than one integration block
    mu = sn.distance_modulus(theta)
    for i in (0, 1234, 2999):
        np.testing.assert_allclose(mu[i], sn.distance_modulus(theta[i]), rtol=1e-13)


def test_supernova_likelihood_matches_scipy() -> None:
    sn = Supernova(num_sne=10, sigma_mu=0.2, redshifts=np.linspace(0.1, 1.0, 10))
    assert sn.x_shape == (10,)
    theta = np.array([[0.3, -1.0], [0.5, -0.7]])
    x = sn.simulate(theta, seed=0)
    expected = [stats.norm(_mu_quad(sn, *t), 0.2).logpdf(xi).sum() for t, xi in zip(theta, x, strict=True)]
    np.testing.assert_allclose(sn.log_likelihood(theta, x), expected, rtol=1e-8)


@pytest.mark.parametrize(
    "kwargs", [{"redshifts": [0.1, -0.2]}, {"sigma_mu": 0.0}, {"h0": -1.0}, {"num_sne": 0}, {"num_nodes": 0}]
)
def test_supernova_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Supernova(**kwargs)


# -- likelihoods against sampling: importance-sampling identity ------------------------------


def _is_ratio(
    sim: Simulator, log_lik: Callable, theta1: np.ndarray, theta2: np.ndarray, n: int = 20_000, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard error of p(x | theta2) / p(x | theta1) for x ~ p(. | theta1).

    For the correct likelihood the expectation is exactly 1.
    """
    x = sim.simulate(np.repeat(theta1[None], n, axis=0), seed=seed)
    w = np.exp(log_lik(theta2, x) - log_lik(theta1, x))
    return float(w.mean()), float(w.std(ddof=1) / math.sqrt(n))


def _slcp_scaled_cov(sim: Simulator, factor: float) -> Callable:
    # S scales with theta_3^4 and theta_4^4, so scaling them by factor^(1/4) scales S by factor.
    scale = np.array([1.0, 1.0, factor**0.25, factor**0.25, 1.0])
    return lambda theta, x: sim.log_likelihood(theta * scale, x)


# theta1, theta2 are close: the squared Mahalanobis distance between the two data means is
# about 1, so the ratio has a small, finite variance and its sample standard error is reliable.
IS_CASES = {
    "gaussian_linear": (
        np.zeros(10),
        np.full(10, 0.1),
        lambda s: simulators.get("gaussian_linear", noise_var=0.2),
    ),
    "slcp": (
        np.array([0.5, -0.3, 1.0, -1.2, 0.4]),
        np.array([0.6, -0.4, 1.05, -1.25, 0.5]),
        lambda s: _slcp_scaled_cov(s, 1.5),
    ),
    "supernova": (
        np.array([0.3, -1.0]),
        np.array([0.35, -1.1]),
        lambda s: simulators.get("supernova", sigma_mu=0.2),
    ),
}


@pytest.mark.parametrize("name", IS_CASES)
def test_importance_sampling_identity(name: str) -> None:
    sim = simulators.get(name)
    theta1, theta2, make_wrong = IS_CASES[name]
    mean, se = _is_ratio(sim, sim.log_likelihood, theta1, theta2)
    assert abs(mean - 1) < N_SE * se, (mean, se)
    # Negative control: the likelihood with wrongly scaled noise fails the same check.
    wrong = make_wrong(sim)
    wrong_ll = wrong.log_likelihood if isinstance(wrong, Simulator) else wrong
    mean, se = _is_ratio(sim, wrong_ll, theta1, theta2)
    assert abs(mean - 1) > N_SE * se, (mean, se)


# -- 2-d densities: normalisation and histograms ---------------------------------------------


def _density_grid(
    log_density: Callable[[np.ndarray], np.ndarray], lo: tuple[float, float], h: float, shape: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Midpoint-rule cell masses density(center) * h^2 on a grid of ``shape`` cells from ``lo``."""
    edges = [lo[i] + h * np.arange(shape[i] + 1) for i in range(2)]
    c1, c2 = np.meshgrid(edges[0][:-1] + h / 2, edges[1][:-1] + h / 2, indexing="ij")
    logp = log_density(np.stack([c1.ravel(), c2.ravel()], axis=1)).reshape(shape)
    return np.exp(logp) * h * h, edges


def _chi2_pvalue(
    samples: np.ndarray, cell_mass: np.ndarray, edges: list[np.ndarray], bins: list[np.ndarray]
) -> float:
    """Chi-square p-value of a 2-d histogram of ``samples`` against the grid masses.

    ``bins[i]`` are indices into ``edges[i]`` (bin boundaries on the fine grid, first 0, last
    the number of cells). Bins with expected count < 5 are pooled with everything outside
    the grid, so the asymptotic chi-square distribution of the statistic holds.
    """
    n = samples.shape[0]
    mass = np.add.reduceat(np.add.reduceat(cell_mass, bins[0][:-1], axis=0), bins[1][:-1], axis=1)
    expected = n * mass.ravel()
    observed = np.histogram2d(samples[:, 0], samples[:, 1], bins=[edges[0][bins[0]], edges[1][bins[1]]])[
        0
    ].ravel()
    keep = expected >= 5
    o_kept, e_kept = observed[keep], expected[keep]
    o_rest, e_rest = n - o_kept.sum(), n - e_kept.sum()
    if e_rest >= 5:
        o_kept, e_kept = np.append(o_kept, o_rest), np.append(e_kept, e_rest)
    else:  # too little mass left to stand alone: merge it into the smallest kept bin
        i = np.argmin(e_kept)
        o_kept[i] += o_rest
        e_kept[i] += max(e_rest, 0.0)
    stat = float(((o_kept - e_kept) ** 2 / e_kept).sum())
    return float(stats.chi2.sf(stat, len(e_kept) - 1))


def _two_moons_grid(sim: TwoMoons, theta: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    # Cells of 0.0005 (r_std / 20) on a box around the half ring; a cell edge lies on the
    # density's jump at q_1 = 0, so the midpoint rule is accurate to far below 1e-4.
    c = TwoMoons._shift(theta[None])[0] + [sim.center, 0.0]
    h = 0.0005
    return _density_grid(
        lambda x: sim.log_likelihood(theta, x), (c[0] - 40 * h, c[1] - 360 * h), h, (400, 720)
    )


@pytest.mark.parametrize("theta", [[0.3, -0.6], [-0.9, -0.95], [0.0, 0.0]])
def test_two_moons_density_integrates_to_one(theta: list[float]) -> None:
    sim = TwoMoons()
    theta = np.array(theta)
    cell_mass, _ = _two_moons_grid(sim, theta)
    assert cell_mass.sum() == pytest.approx(1.0, abs=1e-6)  # tolerance: quadrature error

    # Negative control: a likelihood without the polar Jacobian 1 / r fails the same check.
    class NoJacobian(TwoMoons):
        def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
            q = x - self._shift(theta) - [self.center, 0.0]
            return super()._log_likelihood(theta, x) + np.log(np.hypot(q[:, 0], q[:, 1]))

    cell_mass, _ = _two_moons_grid(NoJacobian(), theta)
    assert cell_mass.sum() != pytest.approx(1.0, abs=1e-6)


def test_gaussian_mixture_density_integrates_to_one() -> None:
    sim = GaussianMixture()
    theta = np.array([2.0, -3.0])
    cell_mass, _ = _density_grid(
        lambda x: sim.log_likelihood(theta, x), (theta[0] - 6, theta[1] - 6), 0.01, (1200, 1200)
    )
    assert cell_mass.sum() == pytest.approx(1.0, abs=1e-6)  # tolerance: quadrature error


def _two_moons_x_pvalue(sim_data: TwoMoons, theta: np.ndarray, n: int = 50_000) -> float:
    """Histogram of x ~ sim_data against the density of the default TwoMoons at theta."""
    cell_mass, edges = _two_moons_grid(TwoMoons(), theta)
    x = sim_data.simulate(np.repeat(theta[None], n, axis=0), seed=11)
    bins = [np.arange(0, 401, 20), np.arange(0, 721, 20)]  # bins of 0.01 x 0.01
    return _chi2_pvalue(x, cell_mass, edges, bins)


def test_two_moons_histogram_matches_density() -> None:
    theta = np.array([0.3, -0.6])
    assert _two_moons_x_pvalue(TwoMoons(), theta) > P_MIN
    wrong = TwoMoons()
    wrong.r_std = 0.011  # negative control: 10 % wider ring
    assert _two_moons_x_pvalue(wrong, theta) < P_MIN


def _gmm_pvalue(sim_data: GaussianMixture, theta: np.ndarray, n: int = 50_000) -> float:
    sim = GaussianMixture()
    cell_mass, edges = _density_grid(
        lambda x: sim.log_likelihood(theta, x), (theta[0] - 6, theta[1] - 6), 0.01, (1200, 1200)
    )
    # Bins of 0.05 within 1 of theta (the narrow component), 0.5 outside.
    idx = np.concatenate([np.arange(0, 500, 50), np.arange(500, 700, 5), np.arange(700, 1201, 50)])
    x = sim_data.simulate(np.repeat(theta[None], n, axis=0), seed=12)
    return _chi2_pvalue(x, cell_mass, edges, [idx, idx])


def test_gaussian_mixture_histogram_matches_density() -> None:
    theta = np.array([2.0, -3.0])
    assert _gmm_pvalue(GaussianMixture(), theta) > P_MIN
    wrong = GaussianMixture()
    wrong.scales = (1.0, 0.11)  # negative control: narrow component 10 % wider
    assert _gmm_pvalue(wrong, theta) < P_MIN


# -- exact posteriors --------------------------------------------------------------------------


def _two_moons_posterior_pvalue(samples: torch.Tensor, x_o: np.ndarray) -> float:
    """Chi-square of posterior samples against exp(log_likelihood) normalised on a grid.

    Binned in u = theta_1 + theta_2, v = theta_2 - theta_1, where the density's only jump,
    |u| = sqrt(2) (0.25 - x_o1), lies on fine-grid edges. The prior is flat and, for this
    x_o, holds the whole posterior, so the grid-normalised likelihood is the posterior.
    """
    sim = TwoMoons()
    u_cut = math.sqrt(2) * (sim.center - x_o[0])
    m = 350
    h = u_cut / m  # ~0.001, a tenth of the ring's width
    ku, kv = 650, 350  # u in [-650 h, 650 h] ~ [-0.66, 0.66], v in [-0.35, 0.35]

    def log_density(uv: np.ndarray) -> np.ndarray:
        theta = np.stack([(uv[:, 0] - uv[:, 1]) / 2, (uv[:, 0] + uv[:, 1]) / 2], axis=1)
        return sim.log_likelihood(theta, x_o)

    cell_mass, edges = _density_grid(log_density, (-ku * h, -kv * h), h, (2 * ku, 2 * kv))
    cell_mass /= cell_mass.sum()
    s = samples.double().numpy()
    uv = np.stack([s[:, 0] + s[:, 1], s[:, 1] - s[:, 0]], axis=1)
    bins = [np.arange(0, 2 * ku + 1, 25), np.arange(0, 2 * kv + 1, 25)]  # bins of ~0.025
    return _chi2_pvalue(uv, cell_mass, edges, bins)


def test_two_moons_posterior_samples() -> None:
    sim = TwoMoons()
    x_o = np.array([0.0, 0.05])
    n = 50_000
    s = sim.sample_posterior(x_o, n, seed=0)
    assert isinstance(s, torch.Tensor) and s.shape == (n, 2) and s.dtype == torch.float32
    assert torch.equal(s, sim.sample_posterior(torch.tensor(x_o), n, seed=0))
    assert bool(sim.prior.in_support(s).all())
    assert np.isfinite(sim.log_likelihood(s.double().numpy(), x_o)).all()
    # Both moons, each with probability 1/2 by the symmetry (t1, t2) -> (-t2, -t1).
    frac = float(((s[:, 0] + s[:, 1]) > 0).double().mean())
    assert abs(frac - 0.5) < N_SE * math.sqrt(0.25 / n)
    assert _two_moons_posterior_pvalue(s, x_o) > P_MIN


def test_two_moons_posterior_negative_control() -> None:
    wrong = TwoMoons()
    wrong.r_std = 0.011  # samples from the posterior of a 10 % wider ring
    s = wrong.sample_posterior(np.array([0.0, 0.05]), 50_000, seed=0)
    assert _two_moons_posterior_pvalue(s, np.array([0.0, 0.05])) < P_MIN


def test_two_moons_posterior_cut_by_the_prior() -> None:
    sim = TwoMoons()
    x_o = sim.simulate(np.array([0.9, 0.8]), seed=0)  # posterior runs into the box edges
    s = sim.sample_posterior(x_o, 5000, seed=1)
    assert s.shape == (5000, 2) and bool(sim.prior.in_support(s).all())
    assert np.isfinite(sim.log_likelihood(s.double().numpy(), x_o)).all()
    with pytest.raises(ValueError, match="no mass"):
        sim.sample_posterior(np.array([5.0, 5.0]), 10, seed=0)
    with pytest.raises(ValueError, match=r"x_o must have shape \(2,\)"):
        sim.sample_posterior(np.zeros(3), 10)


def _check_gaussian_samples(s: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> bool:
    """Sample mean, variances and covariances within N_SE standard errors of the target."""
    n = s.shape[0]
    var = np.diag(cov)
    se_mean = np.sqrt(var / n)
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / n)  # standard error of a sample covariance
    ok_mean = np.all(np.abs(s.mean(0) - mean) < N_SE * se_mean)
    ok_cov = np.all(np.abs(np.cov(s.T) - cov) < N_SE * se_cov)
    return bool(ok_mean and ok_cov)


def test_gaussian_linear_analytic_posterior() -> None:
    sim = GaussianLinear()
    x_o = sim.simulate(_theta(sim, 1)[0], seed=1)
    mean, cov = sim.posterior_mean_cov(x_o)
    assert mean.dtype == torch.float64 and mean.shape == (10,) and cov.shape == (10, 10)
    np.testing.assert_allclose(mean.numpy(), 0.5 * x_o, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), 0.05 * np.eye(10), atol=1e-12)
    s = sim.sample_posterior(x_o, 20_000, seed=2)
    assert s.shape == (20_000, 10) and s.dtype == torch.float32
    assert torch.equal(s, sim.sample_posterior(x_o, 20_000, seed=2))
    assert _check_gaussian_samples(s.double().numpy(), mean.numpy(), cov.numpy())
    # Negative controls: a 10 % too wide posterior and a shifted one fail the same check.
    z = np.random.default_rng(3).standard_normal((20_000, 10))
    assert not _check_gaussian_samples(mean.numpy() + math.sqrt(0.055) * z, mean.numpy(), cov.numpy())
    assert not _check_gaussian_samples(mean.numpy() + 0.01 + math.sqrt(0.05) * z, mean.numpy(), cov.numpy())


@pytest.mark.parametrize("kwargs", [{}, {"dim": 3, "prior_var": 0.5, "noise_var": 0.2}])
def test_gaussian_linear_posterior_is_prior_times_likelihood(kwargs: dict) -> None:
    sim = GaussianLinear(**kwargs)
    x_o = sim.simulate(_theta(sim, 1)[0], seed=4)
    mean, cov = sim.posterior_mean_cov(torch.tensor(x_o)[None])
    post = stats.multivariate_normal(mean.numpy(), cov.numpy())
    a, b = _theta(sim, 100, seed=5), _theta(sim, 100, seed=6)
    analytic = post.logpdf(a) - post.logpdf(b)
    unnorm = sim.log_posterior_unnormalized(a, x_o) - sim.log_posterior_unnormalized(b, x_o)
    np.testing.assert_allclose(unnorm, analytic, atol=1e-5)  # exact identity in float64
    if not kwargs:
        np.testing.assert_allclose(cov.numpy(), 0.05 * np.eye(10), atol=1e-12)
    else:  # (1/0.5 + 1/0.2)^-1 = 1/7, mean = cov x_o / 0.2
        np.testing.assert_allclose(cov.numpy(), np.eye(3) / 7, atol=1e-12)
        np.testing.assert_allclose(mean.numpy(), x_o / 7 / 0.2, atol=1e-12)
    with pytest.raises(ValueError, match="x_o must have shape"):
        sim.posterior_mean_cov(np.zeros(sim.dim + 1))
