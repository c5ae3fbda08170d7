"""MCMC with emcee: reference posteriors from an exact likelihood, and NLE sampling.

:func:`reference_posterior` samples ``p(theta | x_o) ∝ p(x_o | theta) p(theta)`` for a
simulator with an exact ``log_likelihood`` (or any log-likelihood callable plus a prior);
:func:`sample_emcee` is the sampler underneath, shared with
:class:`sbikit.inference.nle.NLEPosterior`.

How the chain is run (the rules, so that results can be judged):

* **Space.** Walkers live in the prior's unconstrained space ``u = prior.to_unconstrained(theta)``
  with target ``log L(theta(u)) + log p(theta(u)) + log |d theta / d u|``, so bounded
  priors need no rejection at the walls. Every walker is evaluated in one vectorised call.
* **Start.** ``num_init`` prior draws (default ``max(10_000, 200 * num_walkers)``) are
  weighted by their likelihood (importance weights of the posterior against the prior)
  and ``num_walkers`` distinct ones are picked with probability proportional to the
  weight. The walkers therefore start spread over *all* modes, in roughly posterior
  proportions (what keeps both moons of two_moons). Each pick is then refined by
  ``scipy.optimize.minimize`` (L-BFGS-B, all picks in one batched run). When the prior
  sample is too coarse for the posterior (importance-weight ESS below ``num_walkers``, or
  picks mostly more than ``d + 5`` nats below the best optimum; e.g. slcp), the walkers
  start instead from Gaussians ``N(u*, Sigma)`` (``Sigma`` from the Hessian) at the
  distinct optima, each mode getting walkers in proportion to its mass, estimated by
  importance sampling from ``N(u*, 2 Sigma)``. Modes that no pick reaches are missed.
* **Moves.** By default emcee's affine-invariant ``StretchMove`` (90 %) and a
  mode-jumping differential-evolution move, ``DEMove(gamma0=1.0)`` (10 %): with
  ``gamma = 1`` the proposal ``x_i + (x_j - x_k)`` carries a walker from the mode of
  ``x_k`` to the mode of ``x_j`` (ter Braak 2006), which lets walkers re-balance between
  modes (slcp's four sign-flip modes came out 0.28/0.13/0.34/0.26 with the stretch move
  alone, 0.28/0.25/0.24/0.23 with the mixture; the reference is 0.25 each). emcee's
  DEMove 0.8 + DESnookerMove 0.2 mixture was rejected: on the 10-d Gaussian linear
  posterior with 40 walkers its standard deviations came out ~14 % too small (8-10
  Monte Carlo standard errors) however long the chain.
* **Length, burn-in, thinning.** The chain runs in blocks; after each block the integrated
  autocorrelation time ``tau`` (per parameter, emcee's estimator on the second half of the
  chain) is re-estimated. It stops once it is at least ``50 max(tau)`` long and, after a
  burn-in of ``ceil(5 max(tau))`` steps and thinning by ``max(1, floor(min(tau) / 2))``,
  holds at least ``num_samples`` draws; ``num_samples`` of them are then picked at random.
  When ``max_steps`` stops it first, a warning says for how many parameters the chain is
  shorter than ``50 tau``.
* **Effective sample size.** ``ess_chain = num_walkers (N - burn_in) / tau`` per parameter
  for the post-burn-in chain; the returned subset of ``num_samples`` of the ``P`` kept
  draws has ``ess = min(num_samples, ess_chain * num_samples / P)``. Monte Carlo standard
  errors follow: ``se(mean) = sd / sqrt(ess)``, ``se(sd) ≈ sd / sqrt(2 ess)``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import emcee
import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
import torch
from torch import Tensor

from sbikit.priors import Prior, as_prior

__all__ = [
    "MCMCResult",
    "reference_posterior",
    "sample_emcee",
    "has_likelihood",
    "default_moves",
    "default_num_walkers",
]

logger = logging.getLogger(__name__)

#: ``log_likelihood(theta)``: ``theta`` float64 ``(n, d)`` -> float64 ``(n,)`` (``-inf`` allowed).
LogLikelihood = Callable[[np.ndarray], np.ndarray]

#: The chain must be at least this many autocorrelation times long (emcee's advice).
MIN_TAU_MULTIPLE = 50
#: Burn-in in autocorrelation times.
BURN_IN_TAUS = 5
#: Importance-sampling draws per mode to weigh modes when walkers start from optima.
IS_DRAWS = 2000


@dataclass
class MCMCResult:
    """Samples of an emcee run and its diagnostics.

    Attributes:
        samples: ``(num_samples, d)`` float32 posterior draws (after burn-in and thinning).
        tau: ``(d,)`` integrated autocorrelation time per parameter, in steps (estimated in
            the unconstrained space the walkers move in).
        acceptance_fraction: mean acceptance fraction over walkers.
        ess: ``(d,)`` effective sample size of ``samples`` per parameter.
        chain: ``(num_steps, num_walkers, d)`` float32 full chain in parameter space,
            burn-in included.
        log_prob: ``(num_steps, num_walkers)`` log target (unconstrained space) of ``chain``.
        burn_in: steps discarded at the start.
        thin: thinning step.
        num_walkers: walkers in the ensemble.
        num_steps: steps run.
        converged: whether the chain is at least ``50 max(tau)`` steps long.
        info: anything else worth keeping (initialisation, times).
    """

    samples: Tensor
    tau: np.ndarray
    acceptance_fraction: float
    ess: np.ndarray
    chain: Tensor
    log_prob: Tensor
    burn_in: int
    thin: int
    num_walkers: int
    num_steps: int
    converged: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ess_chain(self) -> np.ndarray:
        """``(d,)`` effective sample size of the whole post-burn-in chain."""
        return self.num_walkers * max(self.num_steps - self.burn_in, 0) / self.tau

    def summary(self) -> dict[str, Any]:
        """JSON-able diagnostics (no arrays of samples)."""
        return {
            "tau": [float(t) for t in self.tau],
            "acceptance_fraction": float(self.acceptance_fraction),
            "ess": [float(e) for e in self.ess],
            "burn_in": int(self.burn_in),
            "thin": int(self.thin),
            "num_walkers": int(self.num_walkers),
            "num_steps": int(self.num_steps),
            "converged": bool(self.converged),
            **{k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool))},
        }

    def __repr__(self) -> str:
        return (
            f"MCMCResult(samples={tuple(self.samples.shape)}, tau_max={float(np.max(self.tau)):.1f}, "
            f"acceptance={self.acceptance_fraction:.2f}, ess_min={float(np.min(self.ess)):.0f}, "
            f"steps={self.num_steps}, walkers={self.num_walkers}, converged={self.converged})"
        )


def default_num_walkers(dim: int) -> int:
    """``max(32, 4 d)``, rounded up to an even number."""
    n = max(32, 4 * int(dim))
    return n + (n % 2)


def default_moves() -> list[tuple[Any, float]]:
    """``StretchMove`` 0.9 + mode-jumping ``DEMove(gamma0=1.0)`` 0.1 (see the module docstring)."""
    return [(emcee.moves.StretchMove(), 0.9), (emcee.moves.DEMove(gamma0=1.0), 0.1)]


class _Target:
    """``log L(theta(u)) + log p(theta(u)) + log |J(u)|`` for walkers ``u`` ``(n, d)``."""

    def __init__(self, log_likelihood: LogLikelihood, prior: Prior) -> None:
        self.log_likelihood = log_likelihood
        self.prior = prior
        self.calls = 0

    def theta(self, u: np.ndarray) -> np.ndarray:
        ut = torch.as_tensor(np.atleast_2d(u), dtype=torch.float64)
        return self.prior.from_unconstrained(ut).numpy()

    def __call__(self, u: np.ndarray) -> np.ndarray:
        self.calls += 1
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        ut = torch.from_numpy(u)
        with torch.no_grad():
            th = self.prior.from_unconstrained(ut)
            log_prior = self.prior.log_prob(th).double() + self.prior.log_abs_det_jacobian(ut).double()
        log_prior = log_prior.numpy()
        out = np.full(len(u), -np.inf)
        ok = np.isfinite(log_prior) & np.isfinite(u).all(axis=1)
        if ok.any():
            ll = np.asarray(self.log_likelihood(th.numpy()[ok]), dtype=np.float64).reshape(-1)
            out[ok] = np.where(np.isnan(ll), -np.inf, ll) + log_prior[ok]
        return out


def _batched_optimize(target: _Target, starts: np.ndarray, maxiter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Maximise the target from each row of ``starts`` ``(m, d)`` at once.

    The objective ``-sum_i target(u_i)`` is separable, so one L-BFGS-B run on the stacked
    ``(m d,)`` vector optimises every start; its gradient comes from forward differences
    evaluated in a single vectorised call of ``m (d + 1)`` rows.

    Returns:
        Optima ``(m, d)`` and their log target ``(m,)``.
    """
    m, d = starts.shape
    h = 1e-5

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        u = flat.reshape(m, d)
        pts = np.concatenate([u[:, None, :], u[:, None, :] + h * np.eye(d)[None]], axis=1)  # (m, d+1, d)
        vals = target(pts.reshape(-1, d)).reshape(m, d + 1)
        base = vals[:, 0]
        # Rows with a non-finite target: a huge finite value and no gradient keeps L-BFGS-B sane.
        ok = np.isfinite(vals).all(axis=1)
        grad = np.where(ok[:, None], (vals[:, 1:] - base[:, None]) / h, 0.0)
        total = np.where(np.isfinite(base), -base, 1e10).sum()
        return float(total), -grad.reshape(-1)

    res = scipy.optimize.minimize(fun, starts.reshape(-1), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    opt = res.x.reshape(m, d)
    lp = target(opt)
    better = lp >= target(starts)
    return np.where(better[:, None], opt, starts), np.where(better, lp, target(starts))


def _hessian(target: _Target, u: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central-difference Hessian ``(d, d)`` of the log target at ``u`` ``(d,)`` (one batched call)."""
    d = len(u)
    eye = np.eye(d) * h
    pts = [u]
    for j in range(d):
        for k in range(d):
            pts += [u + eye[j] + eye[k], u + eye[j] - eye[k], u - eye[j] + eye[k], u - eye[j] - eye[k]]
    vals = target(np.array(pts))
    quad = vals[1:].reshape(d, d, 4)
    return (quad[..., 0] - quad[..., 1] - quad[..., 2] + quad[..., 3]) / (4 * h * h)


def _laplace_mixture(
    target: _Target, optima: np.ndarray, lp: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``n`` draws from a mixture of Laplace approximations at the distinct optima.

    Optima closer than 3 (in the whitened coordinates of a better optimum) are one mode,
    with ``Sigma = (-Hessian)^-1`` (eigenvalues clipped). Each mode's mass is estimated by
    importance sampling with ``N(u*, 2 Sigma)`` as proposal (``IS_DRAWS`` draws; for a
    Gaussian mode this is exact in expectation and its relative error is ~``1/sqrt(IS_DRAWS)``),
    and the mode gets walkers in proportion (largest-remainder rounding).
    """
    d = optima.shape[1]
    finite = np.isfinite(lp)
    order = np.argsort(-np.where(finite, lp, -np.inf))
    modes: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []  # (u, lp, cov, whitening)
    for i in order:
        if not finite[i]:
            continue
        if any(np.linalg.norm(w @ (optima[i] - u)) < 3.0 for u, _, _, w in modes):
            continue
        neg_h = -_hessian(target, optima[i])
        neg_h = 0.5 * (neg_h + neg_h.T)
        vals, vecs = np.linalg.eigh(neg_h)
        if not np.isfinite(vals).all():
            vals, vecs = np.ones(d), np.eye(d)
        var = 1.0 / np.clip(vals, 1e-2, 1e10)  # posterior variance along each eigenvector
        cov = (vecs * var) @ vecs.T
        whiten = (vecs / np.sqrt(var)).T
        modes.append((optima[i], float(lp[i]), cov, whiten))
        if len(modes) >= 64:
            break
    log_mass = np.empty(len(modes))
    for j, (u, _, cov, _) in enumerate(modes):
        prop = scipy.stats.multivariate_normal(u, 2.0 * cov, allow_singular=True)
        draws_j = prop.rvs(size=IS_DRAWS, random_state=rng).reshape(IS_DRAWS, d)
        log_ratio = target(draws_j) - prop.logpdf(draws_j)
        log_ratio = np.where(np.isfinite(log_ratio), log_ratio, -np.inf)
        log_mass[j] = scipy.special.logsumexp(log_ratio) - math.log(IS_DRAWS)
    if not np.isfinite(log_mass).any():
        log_mass = np.array([m[1] + 0.5 * np.linalg.slogdet(m[2])[1] for m in modes])  # Laplace masses
    weight = np.exp(log_mass - log_mass.max())
    weight /= weight.sum()
    share = weight * n
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts))[: n - counts.sum()]] += 1
    draws = [rng.multivariate_normal(u, cov, size=c) for (u, _, cov, _), c in zip(modes, counts, strict=True) if c]
    return np.concatenate(draws), len(modes)


def _initial_walkers(
    target: _Target, prior: Prior, num_walkers: int, num_init: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pick ``(num_walkers, d)`` distinct starting points in unconstrained space (see module doc)."""
    d = prior.dim
    theta0 = prior.sample(num_init, seed=seed).double()
    u0 = prior.to_unconstrained(theta0).numpy()
    lp = np.concatenate([target(u0[i : i + 4096]) for i in range(0, num_init, 4096)])
    # Importance weight of a prior draw for the posterior: the likelihood = lp - log prior(u).
    with torch.no_grad():
        log_q = (prior.log_prob(theta0).double() + prior.log_abs_det_jacobian(torch.from_numpy(u0))).numpy()
    log_w = np.where(np.isfinite(lp) & np.isfinite(log_q), lp - log_q, -np.inf)
    finite = np.isfinite(log_w)
    if finite.sum() < 2:
        raise RuntimeError(
            f"only {int(finite.sum())} of {num_init} prior draws have a finite likelihood; "
            "the observation is (numerically) impossible under this model and prior"
        )
    w = np.exp(log_w - log_w[finite].max())
    w[~finite] = 0.0
    ess_is = float(w.sum() ** 2 / (w**2).sum())
    # Sampling without replacement needs enough non-zero probabilities: give every finite
    # draw a floor far below the typical weight (it only matters when weights are degenerate).
    p = np.where(finite, w + 1e-12, 0.0)
    p /= p.sum()
    k = min(num_walkers, int(finite.sum()))
    idx = rng.choice(num_init, size=k, replace=False, p=p)
    walkers = u0[idx]
    walker_lp = lp[idx]

    # Refine every picked draw (one batched L-BFGS-B). A draw from a posterior sits about
    # d / 2 below its maximum (chi^2_d / 2); when the picks are mostly more than d + 5 below
    # the optima, or when the importance weights have an effective sample size below the
    # number of walkers, the prior sample was too coarse for this posterior, and the walkers
    # start instead from Gaussians at the distinct optima found, weighted by mode mass.
    optima, lp_opt = _batched_optimize(target, walkers)
    info: dict[str, Any] = {"init_ess": ess_is, "init_best_log_prob": float(lp[np.argmax(lp)])}
    info["optimum_log_prob"] = float(np.max(lp_opt))
    coarse = bool(np.median(walker_lp) < np.max(lp_opt) - (d + 5.0))
    if coarse or ess_is < num_walkers or k < num_walkers:
        walkers, num_modes = _laplace_mixture(target, optima, lp_opt, num_walkers, rng)
        info.update({"init": "laplace", "init_modes": num_modes})
    else:
        info["init"] = "prior_resampling"
    # Replace any walker with a non-finite target by a jittered copy of the best one.
    wl = target(walkers)
    bad = ~np.isfinite(wl)
    if bad.any():
        good = walkers[~bad][np.argmax(wl[~bad])] if (~bad).any() else optima[np.argmax(lp_opt)]
        walkers[bad] = good + 1e-3 * rng.standard_normal((int(bad.sum()), d))
    return walkers, info


def sample_emcee(
    log_likelihood: LogLikelihood,
    prior: Any,
    num_samples: int,
    *,
    num_walkers: int | None = None,
    seed: int | None = None,
    moves: Sequence[tuple[Any, float]] | Any | None = None,
    max_steps: int = 100_000,
    min_steps: int = 500,
    num_init: int | None = None,
    initial_walkers: Any | None = None,
    progress: bool = False,
) -> MCMCResult:
    """Sample ``p(theta) exp(log_likelihood(theta))`` with emcee (rules in the module docstring).

    Args:
        log_likelihood: ``theta`` float64 numpy ``(n, d)`` -> ``(n,)``; may return ``-inf``.
        prior: an sbikit prior (or anything :func:`sbikit.priors.as_prior` accepts).
        num_samples: posterior draws to return.
        num_walkers: ensemble size; default :func:`default_num_walkers` (``max(32, 4 d)``).
        seed: seeds the starting points and emcee's generator.
        moves: emcee moves (a move or ``[(move, weight), ...]``); default :func:`default_moves`.
        max_steps: cap on the chain length (then a warning if shorter than ``50 tau``).
        min_steps: length of the first block.
        num_init: prior draws to pick the walkers from; default ``max(10_000, 200 num_walkers)``.
        initial_walkers: optional ``(num_walkers, d)`` starting points in parameter space,
            inside the prior support (skips the automatic start).
        progress: show emcee's progress bar.

    Returns:
        An :class:`MCMCResult`.
    """
    prior = as_prior(prior)
    d = prior.dim
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    num_walkers = default_num_walkers(d) if num_walkers is None else int(num_walkers)
    if num_walkers < 2 * d or num_walkers % 2:
        raise ValueError(f"num_walkers must be even and >= 2 d = {2 * d} (emcee's requirement), got {num_walkers}")
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    target = _Target(log_likelihood, prior)

    if initial_walkers is not None:
        th = torch.as_tensor(np.asarray(initial_walkers, dtype=np.float64))
        if tuple(th.shape) != (num_walkers, d):
            raise ValueError(f"initial_walkers must have shape ({num_walkers}, {d}), got {tuple(th.shape)}")
        prior.check_support(th, "initial_walkers")
        p0, info = prior.to_unconstrained(th).numpy(), {}
    else:
        num_init = max(10_000, 200 * num_walkers) if num_init is None else int(num_init)
        p0, info = _initial_walkers(target, prior, num_walkers, num_init, rng, seed)

    sampler = emcee.EnsembleSampler(
        num_walkers, d, target, moves=default_moves() if moves is None else moves, vectorize=True
    )
    sampler.random_state = np.random.RandomState(seed % 2**32).get_state()
    state: Any = p0
    block = int(min_steps)
    tau = np.full(d, np.nan)
    while True:
        state = sampler.run_mcmc(state, block, progress=progress)
        n = sampler.iteration
        chain_u = sampler.get_chain()  # (n, walkers, d)
        tau = emcee.autocorr.integrated_time(chain_u[n // 2 :], tol=0, quiet=True)
        tau = np.where(np.isfinite(tau) & (tau > 0), tau, float(n))
        tau_max = float(tau.max())
        burn = int(math.ceil(BURN_IN_TAUS * tau_max))
        thin = max(1, int(0.5 * tau.min()))
        kept = num_walkers * max(0, (n - burn) // thin)
        long_enough = n >= MIN_TAU_MULTIPLE * tau_max
        if (long_enough and kept >= num_samples) or n >= max_steps:
            break
        target_n = max(MIN_TAU_MULTIPLE * tau_max, burn + thin * math.ceil(num_samples / num_walkers))
        block = int(min(max(1.1 * target_n - n, 100), max_steps - n))
        logger.debug("emcee: %d steps, tau max %.1f; running %d more", n, tau_max, block)

    n = sampler.iteration
    short = int((n < MIN_TAU_MULTIPLE * tau).sum())
    if short:
        warnings.warn(
            f"the emcee chain ({n} steps) is shorter than {MIN_TAU_MULTIPLE} autocorrelation times for "
            f"{short} of {d} parameters (tau = {np.round(tau, 1).tolist()}); the samples may be "
            f"inaccurate: raise max_steps (now {max_steps})",
            stacklevel=3,
        )
    burn = min(int(math.ceil(BURN_IN_TAUS * float(tau.max()))), n - 1)
    thin = max(1, int(0.5 * tau.min()))
    if num_walkers * ((n - burn) // thin) < num_samples:
        thin = 1
    flat_u = sampler.get_chain(discard=burn, thin=thin, flat=True)
    pool = len(flat_u)
    replace = pool < num_samples
    if replace:
        warnings.warn(
            f"the chain holds only {pool} draws after burn-in; {num_samples} were asked for, so draws repeat",
            stacklevel=3,
        )
    pick = rng.choice(pool, size=num_samples, replace=replace)
    samples = torch.from_numpy(target.theta(flat_u[pick])).float()
    ess_chain = num_walkers * (n - burn) / tau
    ess = np.minimum(float(num_samples), ess_chain * num_samples / pool)
    full = sampler.get_chain()
    chain = torch.from_numpy(target.theta(full.reshape(-1, d)).reshape(full.shape)).float()
    acc = float(np.mean(sampler.acceptance_fraction))
    info.update({"target_calls": target.calls})
    logger.info(
        "emcee: %d walkers x %d steps, tau max %.1f, burn-in %d, thin %d, acceptance %.2f, min ESS %.0f",
        num_walkers,
        n,
        float(tau.max()),
        burn,
        thin,
        acc,
        float(ess.min()),
    )
    return MCMCResult(
        samples=samples,
        tau=tau,
        acceptance_fraction=acc,
        ess=ess,
        chain=chain,
        log_prob=torch.from_numpy(sampler.get_log_prob()).float(),
        burn_in=burn,
        thin=thin,
        num_walkers=num_walkers,
        num_steps=n,
        converged=short == 0,
        info=info,
    )


def has_likelihood(simulator: Any) -> bool:
    """Whether ``simulator.log_likelihood`` exists and is implemented (tried on one prior draw)."""
    fn = getattr(simulator, "log_likelihood", None)
    if not callable(fn):
        return False
    try:
        theta = simulator.prior.sample(1, seed=0)
        fn(theta, simulator.simulate(theta, seed=0))
    except NotImplementedError:
        return False
    return True


def _simulator_log_likelihood(simulator: Any, x_o: Any) -> tuple[LogLikelihood, int]:
    """A log-likelihood of ``theta`` for one observation or ``k`` i.i.d. ones (summed)."""
    x_shape = tuple(simulator.x_shape)
    x = x_o.detach().cpu().double().numpy() if isinstance(x_o, Tensor) else np.asarray(x_o, dtype=np.float64)
    if x.shape == x_shape:
        xs = x[None]
    elif x.ndim == len(x_shape) + 1 and x.shape[1:] == x_shape:
        xs = x
    else:
        raise ValueError(
            f"x_o must have shape {x_shape} (one observation) or (k, *{x_shape}) (k i.i.d. observations), "
            f"got {x.shape}"
        )
    if not np.isfinite(xs).all():
        raise ValueError("x_o holds NaN or inf")

    def log_likelihood(theta: np.ndarray) -> np.ndarray:
        total = np.zeros(len(theta))
        for xi in xs:
            total = total + np.asarray(simulator.log_likelihood(theta, xi), dtype=np.float64).reshape(-1)
        return total

    return log_likelihood, len(xs)


def reference_posterior(
    simulator: Any,
    x_o: Any,
    *,
    prior: Any | None = None,
    num_samples: int = 10_000,
    num_walkers: int | None = None,
    seed: int | None = None,
    max_steps: int = 100_000,
    moves: Sequence[tuple[Any, float]] | Any | None = None,
    progress: bool = False,
) -> MCMCResult:
    """Reference posterior samples with emcee from an exact likelihood.

    Args:
        simulator: a simulator with ``prior``, ``x_shape`` and an exact
            ``log_likelihood(theta, x)``; or a plain callable ``log_likelihood(theta, x_o)``
            (``theta`` float64 numpy ``(n, d)`` -> ``(n,)``), which then needs ``prior``.
        x_o: the observation, ``x_shape``; with a simulator also ``(k, *x_shape)`` for
            ``k`` i.i.d. observations of the same ``theta`` (log-likelihoods are summed).
            With a callable it is passed through unchanged.
        prior: the prior; default ``simulator.prior``.
        num_samples: draws to return.
        num_walkers: ensemble size; default ``max(32, 4 d)``.
        seed: makes the run repeatable.
        max_steps: cap on the chain length.
        moves: emcee moves; default :func:`default_moves` (stretch 0.9 + mode-jumping DE 0.1).
        progress: emcee's progress bar.

    Returns:
        An :class:`MCMCResult`: ``samples`` ``(num_samples, d)`` and diagnostics.

    Raises:
        ValueError: when the simulator has no likelihood, no prior is known, or ``x_o``
            has the wrong shape.
    """
    if hasattr(simulator, "log_likelihood") and hasattr(simulator, "prior"):
        if not has_likelihood(simulator):
            raise ValueError(
                f"{type(simulator).__name__} does not implement log_likelihood(theta, x); an emcee reference "
                "needs an exact likelihood (or pass a callable log_likelihood and prior=)"
            )
        prior = simulator.prior if prior is None else prior
        ll, k = _simulator_log_likelihood(simulator, x_o)
    elif callable(simulator):
        if prior is None:
            raise ValueError("reference_posterior with a log-likelihood callable needs prior=")
        fn = simulator

        def ll(theta: np.ndarray) -> np.ndarray:
            return np.asarray(fn(theta, x_o), dtype=np.float64).reshape(-1)

        k = 1
    else:
        raise ValueError(
            f"{type(simulator).__name__} has no log_likelihood(theta, x); an emcee reference needs an "
            "exact likelihood (pass a simulator that has one, or a callable log_likelihood and prior=)"
        )
    result = sample_emcee(
        ll,
        prior,
        num_samples,
        num_walkers=num_walkers,
        seed=seed,
        moves=moves,
        max_steps=max_steps,
        progress=progress,
    )
    result.info["num_observations"] = k
    return result
