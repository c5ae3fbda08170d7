"""Tests for sbikit.density.GMM: density against scipy, BIC model choice, sampling moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbikit.density import GMM

N_SE = 5.0  # Monte Carlo checks allow 5 standard errors (false failure ~1 in 1.7 million)


def _three_clusters(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.normal([0.0, 0.0], 0.5, (n, 2)),
            rng.normal([6.0, 6.0], 0.5, (n, 2)),
            rng.multivariate_normal([0.0, 7.0], [[0.6, 0.3], [0.3, 0.6]], n),
        ]
    )


def test_log_prob_is_the_scipy_mixture_density() -> None:
    gmm = GMM(num_components=3).fit(_three_clusters(200, 0), seed=0)
    z = np.random.default_rng(1).normal(3.0, 4.0, (50, 2))
    w, mu, cov = gmm.weights.numpy(), gmm.means.numpy(), gmm.covariances.numpy()
    ref = np.log(sum(w[j] * stats.multivariate_normal(mu[j], cov[j]).pdf(z) for j in range(3)))
    lp = gmm.log_prob(z)
    assert lp.shape == (50,) and lp.dtype == torch.float64
    np.testing.assert_allclose(lp.numpy(), ref, rtol=0, atol=1e-10)
    assert np.isclose(w.sum(), 1.0)


@pytest.mark.parametrize("true_k", [1, 3])
def test_bic_picks_the_true_number_of_components(true_k: int) -> None:
    z = _three_clusters(300, 2) if true_k == 3 else np.random.default_rng(2).normal(0, 1, (900, 2))
    gmm = GMM(max_components=6).fit(z, seed=0)
    assert gmm.n_components == true_k, gmm.bic
    assert set(gmm.bic) == set(range(1, 7))
    assert min(gmm.bic, key=gmm.bic.get) == true_k
    if true_k == 3:  # the fitted means sit at the cluster centres (tolerance: 5 standard errors of a mean)
        centres = np.array([[0.0, 0.0], [6.0, 6.0], [0.0, 7.0]])
        fitted = gmm.means.numpy()
        for c in centres:
            assert np.min(np.abs(fitted - c).max(1)) < N_SE * 0.8 / math.sqrt(300)


def test_samples_follow_the_mixture() -> None:
    gmm = GMM(num_components=3).fit(_three_clusters(200, 0), seed=0)
    m = 20_000
    s = gmm.sample(m, seed=0).double().numpy()
    assert s.shape == (m, 2)
    w, mu, cov = gmm.weights.numpy(), gmm.means.numpy(), gmm.covariances.numpy()
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (np.diagonal(cov, axis1=1, axis2=2) + mu**2)).sum(0) - mean**2
    # The sample mean has standard error sqrt(var / m).
    assert np.all(np.abs(s.mean(0) - mean) < N_SE * np.sqrt(var / m))
    # Negative control: a shifted mean by 0.1 (~12 standard errors here) fails the check.
    assert not np.all(np.abs(s.mean(0) + 0.1 - mean) < N_SE * np.sqrt(var / m))
    assert torch.equal(gmm.sample(5, seed=3), gmm.sample(5, seed=3))


def test_errors() -> None:
    gmm = GMM(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        gmm.sample(3)
    with pytest.raises(ValueError, match="more than D"):
        gmm.fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gmm.fit(np.array([[0.0, np.nan]] * 10))
    gmm.fit(np.random.default_rng(0).normal(size=(100, 2)))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        gmm.log_prob(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="max_components"):
        GMM(0)
