"""Gaussian mixture model fitted by EM, with the number of components chosen by BIC."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.utils import as_float_tensor

__all__ = ["GMM"]

logger = logging.getLogger(__name__)

_LOG_2PI = math.log(2 * math.pi)


class GMM:
    """A full-covariance Gaussian mixture ``p(z) = sum_j w_j N(z; mu_j, S_j)``.

    :meth:`fit` runs EM (k-means++ initialisation, ``n_init`` restarts) for every number of
    components ``k = 1 .. max_components`` (or only ``num_components``) and keeps the ``k``
    with the lowest Bayesian information criterion
    ``BIC = -2 log L + p log n``, ``p = k (D + D (D + 1) / 2) + k - 1``.

    Args:
        max_components: largest ``k`` tried by BIC.
        num_components: fix ``k`` instead of choosing it by BIC.
        reg_covar: added to covariance diagonals (relative to the data variance) for stability.
        max_iter: EM iterations per run.
        tol: stop when the mean log-likelihood per sample improves by less than this (nats).
        n_init: EM restarts per ``k`` (the best log-likelihood is kept).

    Attributes (after :meth:`fit`):
        weights: ``(k,)``; means: ``(k, D)``; covariances: ``(k, D, D)`` (float64 tensors).
        bic: ``{k: BIC}`` for every ``k`` tried.
    """

    def __init__(
        self,
        max_components: int = 10,
        *,
        num_components: int | None = None,
        reg_covar: float = 1e-6,
        max_iter: int = 500,
        tol: float = 1e-4,
        n_init: int = 3,
    ) -> None:
        if int(max_components) < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        if num_components is not None and int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.max_components = int(max_components)
        self.num_components = None if num_components is None else int(num_components)
        self.reg_covar = float(reg_covar)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.n_init = int(n_init)
        self.weights: Tensor | None = None
        self.means: Tensor | None = None
        self.covariances: Tensor | None = None
        self.bic: dict[int, float] = {}

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, z: Any, *, seed: int | None = 0) -> GMM:
        """Fit to samples ``z`` ``(n, D)``; returns self.

        Raises:
            ValueError: on a wrong shape, NaN/inf, or fewer samples than free parameters of ``k = 1``.
        """
        data = self._check(z, "z").numpy()
        n, d = data.shape
        if n < d + 2:
            raise ValueError(f"GMM needs more than D + 1 = {d + 1} samples, got {n}")
        rng = np.random.default_rng(seed)
        ks = [self.num_components] if self.num_components is not None else range(1, self.max_components + 1)
        reg = self.reg_covar * float(np.mean(np.var(data, axis=0))) + 1e-300
        best: tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.bic = {}
        for k in ks:
            if k > n:
                break
            runs = [self._em(data, k, rng, reg) for _ in range(self.n_init if k > 1 else 1)]
            loglik, params = max(runs, key=lambda r: r[0])
            p = k * (d + d * (d + 1) / 2) + k - 1
            bic = -2 * loglik + p * math.log(n)
            self.bic[k] = bic
            if best is None or bic < best[0]:
                best = (bic, params)
        assert best is not None
        w, mu, cov = best[1]
        self.weights, self.means, self.covariances = (torch.from_numpy(a) for a in (w, mu, cov))
        logger.info("GMM: BIC chose %d components (tried %s)", len(w), list(self.bic))
        return self

    def _em(
        self, x: np.ndarray, k: int, rng: np.random.Generator, reg: float
    ) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One EM run -> (total log-likelihood, (weights, means, covariances))."""
        n, d = x.shape
        mu = _kmeans_pp(x, k, rng)
        # Hard assignment to the nearest centre gives the starting responsibilities.
        resp = np.zeros((n, k))
        resp[np.arange(n), ((x[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)] = 1.0
        prev = -np.inf
        loglik = -np.inf
        w, cov = np.full(k, 1.0 / k), np.tile(np.cov(x.T).reshape(d, d), (k, 1, 1))
        for _ in range(self.max_iter):
            # M step
            nk = resp.sum(0) + 1e-12
            w = nk / n
            mu = resp.T @ x / nk[:, None]
            diff = x[None] - mu[:, None]  # (k, n, d)
            cov = np.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None] + reg * np.eye(d)
            # E step
            log_comp = _component_log_prob(x, mu, cov) + np.log(w)  # (n, k)
            log_norm = np.logaddexp.reduce(log_comp, axis=1)
            resp = np.exp(log_comp - log_norm[:, None])
            loglik = float(log_norm.sum())
            if loglik - prev < self.tol * n:
                break
            prev = loglik
        return loglik, (w, mu, cov)

    # -- density and sampling ----------------------------------------------------------------
    def log_prob(self, z: Any) -> Tensor:
        """``log p(z)`` for ``z`` ``(n, D)`` -> ``(n,)`` float64 (CPU)."""
        self._require_fit()
        assert self.means is not None and self.covariances is not None and self.weights is not None
        x = self._check(z, "z", dim=self.means.shape[1]).numpy()
        lc = _component_log_prob(x, self.means.numpy(), self.covariances.numpy()) + np.log(self.weights.numpy())
        return torch.from_numpy(np.logaddexp.reduce(lc, axis=1))

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws ``(n, D)``, float32 (CPU)."""
        self._require_fit()
        assert self.means is not None and self.covariances is not None and self.weights is not None
        rng = np.random.default_rng(seed)
        w = self.weights.numpy()
        comp = rng.choice(len(w), size=int(n), p=w / w.sum())
        chol = np.linalg.cholesky(self.covariances.numpy())
        eps = rng.standard_normal((int(n), self.means.shape[1]))
        out = self.means.numpy()[comp] + np.einsum("nij,nj->ni", chol[comp], eps)
        return torch.from_numpy(out).float()

    @property
    def n_components(self) -> int:
        self._require_fit()
        assert self.weights is not None
        return int(len(self.weights))

    def _require_fit(self) -> None:
        if self.weights is None:
            raise RuntimeError("GMM is not fitted: call fit(z) first")

    @staticmethod
    def _check(z: Any, name: str, dim: int | None = None) -> Tensor:
        t = as_float_tensor(z, name, dtype=torch.float64)
        if t.ndim == 1:
            t = t[:, None] if dim in (None, 1) else t[None]
        if t.ndim != 2 or (dim is not None and t.shape[1] != dim):
            want = "(n, D)" if dim is None else f"(n, {dim})"
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf")
        return t

    def __repr__(self) -> str:
        k = None if self.weights is None else len(self.weights)
        return f"GMM(components={k}, max_components={self.max_components})"


def _component_log_prob(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``log N(x_i; mu_j, cov_j)`` for ``x`` ``(n, d)`` -> ``(n, k)``."""
    d = x.shape[1]
    chol = np.linalg.cholesky(cov)  # (k, d, d)
    diff = x[None] - mu[:, None]  # (k, n, d)
    sol = np.linalg.solve(chol, diff.transpose(0, 2, 1))  # (k, d, n): L^-1 (x - mu)
    maha = (sol**2).sum(1)  # (k, n)
    logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # (k,)
    return (-0.5 * (maha + logdet[:, None] + d * _LOG_2PI)).T


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding followed by 20 Lloyd iterations -> centres ``(k, d)``."""
    n = len(x)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = ((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        total = d2.sum()
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centres.append(x[idx])
    c = np.array(centres)
    for _ in range(20):
        lab = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if np.any(lab == j):
                c[j] = x[lab == j].mean(0)
    return c
