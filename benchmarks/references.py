"""Reference posteriors for the NPE benchmark, cached under ``benchmarks/references/``.

For each task, ``NUM_OBS = 5`` observations are simulated from fixed true parameters
(prior draws with the seeds recorded below; the sbibm observation files are not shipped
with this repository, so these are *not* the sbibm observations), and 10,000 samples of
the exact posterior are stored per observation (float32, one ``.npz`` per task with
arrays ``theta_true (5, d)``, ``x_o (5, k)``, ``samples (5, 10000, d)``).

How each reference is exact:

* ``two_moons``: ``TwoMoons.sample_posterior`` inverts the noise model (proof in its
  docstring): exact i.i.d. samples.
* ``gaussian_linear``: analytic ``N(x_o / 2, 0.05 I)`` (``GaussianLinear.sample_posterior``).
* ``gaussian_mixture``: the likelihood ``0.5 N(x; theta, I) + 0.5 N(x; theta, 0.01 I)`` is
  symmetric in ``x`` and ``theta``, so as a function of ``theta`` it is the density of the
  mixture ``0.5 N(x_o, I) + 0.5 N(x_o, 0.01 I)``. The prior is uniform on ``[-10, 10]^2``, so
  the posterior is that mixture truncated to the box. Drawing from the mixture (component,
  then Gaussian) and rejecting draws outside the box samples exactly the truncated mixture
  (rejection with proposal = untruncated target, acceptance = indicator of the box).
* ``slcp``: emcee on the exact log-likelihood plus the log-prior. The likelihood depends on
  ``theta_3, theta_4`` only through ``theta_3^2, theta_4^2`` and the prior is symmetric under
  ``theta_3 -> -theta_3`` and ``theta_4 -> -theta_4``, so the posterior is invariant under the
  four sign flips. We sample the *folded* posterior (``|theta_3|, |theta_4|``, whose density
  is 4x the posterior on the positive orthant) with emcee, then flip each sign independently
  with probability 1/2. If ``F`` has the folded law, ``S F`` with uniform random signs ``S``
  has the law of the symmetric posterior exactly; the only approximation is MCMC error in
  the folded chain, which we check (acceptance fraction, integrated autocorrelation time,
  thinning by it, and agreement of two chains with different seeds).

Run ``python benchmarks/references.py`` to (re)build; ``load_reference(task)`` reads the cache.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import simulators  # noqa: E402

REF_DIR = ROOT / "references"
TASKS = ("two_moons", "slcp", "gaussian_linear", "gaussian_mixture")
NUM_OBS = 5
NUM_SAMPLES = 10_000
# Seeds of the true parameters (prior draws) and of the observations, per task.
THETA_SEED = {"two_moons": 101, "slcp": 102, "gaussian_linear": 103, "gaussian_mixture": 104}
X_SEED = {"two_moons": 201, "slcp": 202, "gaussian_linear": 203, "gaussian_mixture": 204}


def observations(task: str) -> tuple[np.ndarray, np.ndarray]:
    """True parameters ``(NUM_OBS, d)`` and observations ``(NUM_OBS, k)`` of a task."""
    sim = simulators.get(task)
    theta = sim.prior.sample(NUM_OBS, seed=THETA_SEED[task])
    theta = np.asarray(theta.numpy() if hasattr(theta, "numpy") else theta, dtype=np.float64)
    x = np.asarray(sim.simulate(theta, seed=X_SEED[task]), dtype=np.float64)
    return theta, x


def _gaussian_mixture_posterior(sim, x_o: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    out: list[np.ndarray] = []
    count = 0
    while count < n:
        m = 2 * (n - count) + 1000
        first = rng.random(m) < sim.weights[0]
        scale = np.where(first, sim.scales[0], sim.scales[1])
        th = x_o[None, :] + scale[:, None] * rng.standard_normal((m, 2))
        ok = np.all((th > -10.0) & (th < 10.0), axis=1)
        out.append(th[ok])
        count += int(ok.sum())
    return np.concatenate(out)[:n]


def _slcp_folded_chain(sim, x_o: np.ndarray, n: int, seed: int, *, nwalkers: int = 64) -> tuple[np.ndarray, dict]:
    """emcee samples of the folded SLCP posterior (theta_3, theta_4 >= 0)."""
    import emcee

    rng = np.random.default_rng(seed)

    def log_prob(th: np.ndarray) -> np.ndarray:
        th = np.atleast_2d(th)
        inside = np.all(np.abs(th) < 3.0, axis=1) & (th[:, 2] > 0) & (th[:, 3] > 0)
        lp = np.full(len(th), -np.inf)
        if inside.any():
            lp[inside] = sim.log_likelihood(th[inside], np.broadcast_to(x_o, (int(inside.sum()), len(x_o))))
        return lp

    # Start the walkers at the best of many prior draws (folded), then burn in.
    cand = rng.uniform(-3, 3, size=(200_000, 5))
    cand[:, 2:4] = np.abs(cand[:, 2:4])
    lp = log_prob(cand)
    start = cand[np.argsort(lp)[-nwalkers:]]
    sampler = emcee.EnsembleSampler(nwalkers, 5, log_prob, vectorize=True)
    sampler._random = np.random.RandomState(seed)  # emcee's own generator, seeded (no global RNG)
    burn = 3000
    state = sampler.run_mcmc(start, burn, progress=False)
    sampler.reset()
    # Thin by ~the autocorrelation time: run, measure tau, keep every ceil(tau) step.
    steps = 6000
    sampler.run_mcmc(state, steps, progress=False)
    tau = sampler.get_autocorr_time(tol=0)
    thin = max(1, int(math.ceil(float(np.max(tau)))))
    chain = sampler.get_chain(thin=thin, flat=True)
    while len(chain) < n:  # extend if thinning left too few
        sampler.run_mcmc(None, steps, progress=False)
        tau = sampler.get_autocorr_time(tol=0)
        thin = max(1, int(math.ceil(float(np.max(tau)))))
        chain = sampler.get_chain(thin=thin, flat=True)
    idx = rng.choice(len(chain), size=n, replace=False)
    info = {
        "acceptance": float(np.mean(sampler.acceptance_fraction)),
        "tau_max": float(np.max(tau)),
        "chain_steps": int(sampler.iteration),
        "thin": thin,
        "effective_draws": float(sampler.iteration * nwalkers / np.max(tau)),
    }
    return chain[idx], info


def reference_samples(task: str, x_o: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, dict]:
    sim = simulators.get(task)
    rng = np.random.default_rng(seed)
    if task in ("two_moons", "gaussian_linear"):
        return sim.sample_posterior(x_o, n, seed=seed).numpy().astype(np.float64), {}
    if task == "gaussian_mixture":
        return _gaussian_mixture_posterior(sim, x_o, n, rng), {}
    if task == "slcp":
        folded, info = _slcp_folded_chain(sim, x_o, n, seed)
        signs = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0)
        out = folded.copy()
        out[:, 2:4] *= signs
        return out, info
    raise ValueError(f"unknown task {task!r}")


def build(task: str) -> Path:
    theta, x = observations(task)
    samples, infos = [], []
    for i in range(NUM_OBS):
        s, info = reference_samples(task, x[i], NUM_SAMPLES, seed=1000 * THETA_SEED[task] + i)
        samples.append(s)
        infos.append(info)
        if info:
            print(task, i, info, flush=True)
    REF_DIR.mkdir(exist_ok=True)
    path = REF_DIR / f"{task}.npz"
    np.savez_compressed(
        path,
        theta_true=theta.astype(np.float32),
        x_o=x.astype(np.float32),
        samples=np.stack(samples).astype(np.float32),
    )
    return path


def load_reference(task: str) -> dict[str, np.ndarray]:
    """Cached ``theta_true (5, d)``, ``x_o (5, k)``, ``samples (5, 10000, d)`` (float32)."""
    with np.load(REF_DIR / f"{task}.npz") as f:
        return {k: f[k] for k in f.files}


def _grid_moments(task: str, x_o: np.ndarray, n_grid: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of a 2-d task by quadrature of likelihood x prior."""
    sim = simulators.get(task)
    lo, hi = sim.prior.low.double().numpy(), sim.prior.high.double().numpy()
    g0 = np.linspace(lo[0], hi[0], n_grid + 1)
    g1 = np.linspace(lo[1], hi[1], n_grid + 1)
    c0, c1 = 0.5 * (g0[1:] + g0[:-1]), 0.5 * (g1[1:] + g1[:-1])
    th = np.stack(np.meshgrid(c0, c1, indexing="ij"), -1).reshape(-1, 2)
    lp = np.asarray(sim.log_likelihood(th, np.broadcast_to(x_o, th.shape)), dtype=np.float64)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean = w @ th
    cov = (th - mean).T @ ((th - mean) * w[:, None])
    return mean, cov


def check(task: str) -> None:
    """Compare the cached reference with an independent computation from the likelihood.

    2-d tasks: posterior mean and covariance by quadrature on a 2000 x 2000 grid of
    ``log_likelihood`` (uniform prior) against the samples' moments; the tolerance is 5
    Monte Carlo standard errors (``sqrt(var / 10,000)``) plus the grid's resolution.
    gaussian_linear: analytic moments. slcp: a second chain with another seed must be
    indistinguishable by C2ST (2,000 vs 2,000 samples, threshold 0.55 ~ 0.5 + 4.5 sd of
    the null accuracy), and the log-likelihood of every sample must be finite.
    """
    from sbikit.diagnostics.c2st import c2st

    ref = load_reference(task)
    sim = simulators.get(task)
    for i in range(NUM_OBS):
        s = ref["samples"][i].astype(np.float64)
        x_o = ref["x_o"][i].astype(np.float64)
        mean_s, cov_s = s.mean(0), np.cov(s.T)
        if task == "gaussian_linear":
            m, c = (t.numpy() for t in sim.posterior_mean_cov(x_o))
        elif task == "slcp":
            other, _ = reference_samples(task, x_o, 2000, seed=999 + i)
            score = c2st(other, s[:2000])
            ll = sim.log_likelihood(s, np.broadcast_to(x_o, (len(s), len(x_o))))
            ok = score < 0.55 and bool(np.isfinite(ll).all())
            print(f"{task} obs {i}: C2ST(chain seed 999, reference) = {score:.3f}, finite loglik: "
                  f"{bool(np.isfinite(ll).all())} -> {'ok' if ok else 'FAIL'}", flush=True)
            continue
        else:
            m, c = _grid_moments(task, x_o)
        se = np.sqrt(np.diag(cov_s) / len(s))
        res = 0.0 if task == "gaussian_linear" else float((sim.prior.high - sim.prior.low).max()) / 2000
        dev = np.abs(mean_s - m) / (5 * se + res)
        sd_ratio = np.sqrt(np.diag(cov_s) / np.diag(c))
        ok = bool((dev < 1).all() and (np.abs(sd_ratio - 1) < 0.05).all())
        print(f"{task} obs {i}: |mean dev| / tol = {np.round(dev, 2).tolist()}, "
              f"sd ratio = {np.round(sd_ratio, 3).tolist()} -> {'ok' if ok else 'FAIL'}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--check", action="store_true", help="check the cached references instead of building")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.check:
        for task in args.tasks:
            check(task)
        return
    for task in args.tasks:
        t = time.perf_counter()
        path = build(task)
        print(f"{task}: wrote {path} in {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
