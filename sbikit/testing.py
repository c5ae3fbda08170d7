"""Assertions for posteriors, exact Gaussian controls, and a pytest plugin.

>>> from sbikit.testing import assert_calibrated, assert_posterior_close
>>> assert_calibrated(posterior, simulator, num_tests=500)          # raises AssertionError
>>> assert_posterior_close(npe_samples, reference_samples, max_c2st=0.6)

The pytest plugin is registered by the ``pytest11`` entry point, so after
``pip install sbikit`` a calibration test for your own simulator is::

    import pytest

    @pytest.mark.calibration(num_tests=300)
    def test_my_posterior_is_calibrated(calibration_check):
        calibration_check(my_posterior, my_simulator)

The ``calibration`` marker's keyword arguments become defaults of the
``calibration_check`` fixture, a callable with :func:`assert_calibrated`'s signature;
select or skip these tests with ``pytest -m calibration`` / ``-m "not calibration"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbikit.diagnostics.report import CalibrationSummary, run_calibration
from sbikit.priors import make_generator
from sbikit.utils import as_float_tensor

try:  # pytest is only needed for the plugin part
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

__all__ = ["assert_calibrated", "assert_posterior_close", "GaussianPosterior", "calibration_check"]


def assert_calibrated(
    posterior: Any,
    simulator_or_pairs: Any,
    *,
    num_tests: int = 500,
    alpha: float = 0.01,
    num_posterior_samples: int = 500,
    checks: tuple[str, ...] = ("sbc", "coverage", "tarp"),
    seed: int | None = 0,
) -> CalibrationSummary:
    """Assert that a posterior is calibrated: SBC, HPD coverage and TARP all pass.

    With a simulator, ``num_tests`` pairs ``theta ~ prior``, ``x ~ simulator`` are drawn
    (seeded); with a ``(theta, x)`` tuple, those pairs are used. All tests share ``alpha``
    by Bonferroni, so a calibrated posterior fails with probability at most ``alpha``
    (see docs/calibration.md for the measured size and power).

    Args:
        posterior: any object with ``sample(n, x=...)`` and ``log_prob(theta, x=...)``.
        simulator_or_pairs: a simulator or ``(theta (m, d), x (m, *x_shape))``.
        num_tests: test pairs to simulate.
        alpha: family-wise false-alarm rate.
        num_posterior_samples: samples per pair.
        checks: subset of ``("sbc", "coverage", "tarp")``.
        seed: seeds everything.

    Returns:
        The :class:`~sbikit.diagnostics.report.CalibrationSummary` when it passes.

    Raises:
        AssertionError: naming every failed parameter, test and direction (over-confident,
            under-confident, biased high/low), with the numbers, plus a summary table.
    """
    summary = run_calibration(
        posterior,
        simulator_or_pairs,
        num_tests=num_tests,
        num_posterior_samples=num_posterior_samples,
        alpha=alpha,
        checks=checks,
        seed=seed,
    )
    if not summary.passed:
        raise AssertionError(summary.report())
    return summary


def assert_posterior_close(
    samples: Any,
    reference: Any,
    *,
    max_c2st: float = 0.6,
    num_samples: int | None = 2000,
    seed: int = 0,
) -> float:
    """Assert that posterior samples are close to reference samples by C2ST.

    Args:
        samples: ``(n, d)`` samples to check.
        reference: ``(n_ref, d)`` reference samples (e.g. exact or MCMC).
        max_c2st: largest accepted classifier accuracy (0.5: indistinguishable).
        num_samples: use at most this many rows of each set (C2ST's MLP is slow on large
            sets); ``None`` uses all.
        seed: seeds the subsampling and the classifier.

    Returns:
        The C2ST accuracy.

    Raises:
        AssertionError: when the accuracy exceeds ``max_c2st``, with per-parameter means and
            standard deviations of both sets.
    """
    from sbikit.diagnostics.c2st import c2st

    a = as_float_tensor(samples, "samples").reshape(len(samples), -1)
    b = as_float_tensor(reference, "reference").reshape(len(reference), -1)
    gen = make_generator(seed)
    if num_samples is not None:
        a = a[torch.randperm(len(a), generator=gen)[:num_samples]]
        b = b[torch.randperm(len(b), generator=gen)[:num_samples]]
    acc = c2st(a, b, seed=seed)
    if acc > max_c2st:
        rows = [
            f"  theta_{j + 1}: mean {a[:, j].mean():+.4f} vs {b[:, j].mean():+.4f}, "
            f"std {a[:, j].std():.4f} vs {b[:, j].std():.4f}"
            for j in range(a.shape[1])
        ]
        raise AssertionError(
            f"samples differ from the reference: C2ST accuracy {acc:.3f} > max_c2st={max_c2st} "
            f"({len(a)} vs {len(b)} samples; 0.5 means indistinguishable)\n" + "\n".join(rows)
        )
    return acc


class GaussianPosterior:
    """Exact Gaussian posterior ``N(A x + b, S)``, batched, optionally distorted.

    The distorted posterior is ``N(A x + b + shift * sqrt(diag S), scale^2 S)``: ``scale > 1``
    is under-confident (too wide), ``scale < 1`` over-confident, ``shift != 0`` biased by
    ``shift`` posterior standard deviations per parameter. Used as calibration controls.

    Args:
        matrix: ``A`` ``(d, p)``.
        offset: ``b`` ``(d,)``.
        cov: ``S`` ``(d, d)``.
        scale: width factor.
        shift: bias in posterior standard deviations, a scalar or ``(d,)``.
    """

    def __init__(self, matrix: Any, offset: Any, cov: Any, *, scale: float = 1.0, shift: Any = 0.0) -> None:
        self.matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
        self.offset = torch.as_tensor(np.asarray(offset, dtype=np.float64)).reshape(-1)
        cov64 = torch.as_tensor(np.asarray(cov, dtype=np.float64))
        d = len(self.offset)
        self.mean_shift = torch.as_tensor(shift, dtype=torch.float64) * cov64.diagonal().sqrt()
        self.cov = cov64 * float(scale) ** 2
        self.chol = torch.linalg.cholesky(self.cov)
        self.x_shape = (self.matrix.shape[1],)
        self.theta_names = [f"theta_{i + 1}" for i in range(d)]
        self._dist_const = -0.5 * d * math.log(2 * math.pi) - self.chol.diagonal().log().sum()

    @classmethod
    def from_simulator(cls, simulator: Any, *, scale: float = 1.0, shift: Any = 0.0) -> GaussianPosterior:
        """The exact posterior of a linear-Gaussian simulator (``posterior_mean_cov(x)``).

        The mean is affine in ``x``: ``b`` is the mean at ``x = 0`` and column ``j`` of ``A``
        the change at ``x = e_j``.
        """
        p = int(np.prod(simulator.x_shape))
        offset, cov = simulator.posterior_mean_cov(np.zeros(p))
        cols = [simulator.posterior_mean_cov(np.eye(p)[j])[0] - offset for j in range(p)]
        post = cls(torch.stack(cols, 1), offset, cov, scale=scale, shift=shift)
        post.theta_names = list(getattr(simulator, "theta_names", post.theta_names))
        return post

    @property
    def dim(self) -> int:
        return len(self.offset)

    def mean(self, x: Any) -> Tensor:
        """Posterior mean: ``x`` ``(p,)`` -> ``(d,)``, ``(m, p)`` -> ``(m, d)`` (float64)."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, Tensor) else x.double()
        return xt @ self.matrix.T + self.offset + self.mean_shift

    def sample(self, n: int, x: Any, seed: int | None = None) -> Tensor:
        """Samples: ``(n, d)`` for one ``x`` ``(p,)``, ``(m, n, d)`` for ``x`` ``(m, p)``."""
        mu = self.mean(x)
        gen = make_generator(seed)
        z = torch.randn(*mu.shape[:-1], int(n), self.dim, generator=gen, dtype=torch.float64)
        return (mu.unsqueeze(-2) + z @ self.chol.T).float()

    def log_prob(self, theta: Any, x: Any) -> Tensor:
        """``log q(theta | x)``: ``theta`` ``(k, d)``, ``x`` ``(p,)`` or paired ``(k, p)`` -> ``(k,)``."""
        th = as_float_tensor(theta, "theta").double()
        diff = th - self.mean(x)
        sol = torch.linalg.solve_triangular(self.chol, diff.reshape(-1, self.dim).T, upper=False).T
        return (self._dist_const - 0.5 * (sol**2).sum(-1)).reshape(diff.shape[:-1]).float()


# -- pytest plugin ----------------------------------------------------------------------
def pytest_configure(config: Any) -> None:
    """Register the ``calibration`` marker."""
    config.addinivalue_line(
        "markers",
        "calibration(**kwargs): a posterior calibration test (sbikit); keyword arguments such as "
        "num_tests, alpha, num_posterior_samples, seed become defaults of the calibration_check fixture",
    )


def _calibration_check(request: Any) -> Callable[..., CalibrationSummary]:
    """A callable ``check(posterior, simulator_or_pairs, **kwargs)`` running :func:`assert_calibrated`.

    Defaults come from the test's ``@pytest.mark.calibration(...)`` keyword arguments.
    """
    marker = request.node.get_closest_marker("calibration")
    defaults = dict(marker.kwargs) if marker is not None else {}

    def check(posterior: Any, simulator_or_pairs: Any, **kwargs: Any) -> CalibrationSummary:
        __tracebackhide__ = True
        return assert_calibrated(posterior, simulator_or_pairs, **{**defaults, **kwargs})

    return check


if pytest is not None:
    calibration_check = pytest.fixture(name="calibration_check")(_calibration_check)
