"""Duck-typed, batched access to posteriors, shared by every diagnostic.

The diagnostics work with any object that can draw samples and evaluate densities:

* **sbikit** :class:`~sbikit.FlowPosterior` (and anything with the same contract):
  ``sample(n, x=x_batch, seed=s)`` with ``x_batch`` ``(m, *x_shape)`` returns
  ``(m, n, d)`` in one call; ``log_prob(theta, x=x_paired)`` with ``theta`` ``(k, d)`` and
  ``x_paired`` ``(k, *x_shape)`` returns ``(k,)``.
* **sbi** posteriors: ``sample_batched((n,), x=x_batch)`` returning ``(n, m, d)`` and
  ``log_prob_batched(theta, x=x_batch)`` with ``theta`` ``(n, m, d)`` returning ``(n, m)``
  are used when present (sbi's ``sample`` takes one observation only).
* anything else with ``sample(n, x=x_one)`` -> ``(n, d)`` and ``log_prob(theta, x=x_one)``
  -> ``(n,)``: a loop over observations (slower; logged once).

Objects whose ``sample`` takes no ``seed`` are seeded through the global torch RNG inside
:func:`torch.random.fork_rng`, so the caller's RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from sbikit.utils import as_float_tensor

__all__ = ["check_pairs", "sample_batch", "log_prob_paired", "jittered_ranks", "param_names"]

logger = logging.getLogger("sbikit.diagnostics")


def check_pairs(theta: Any, x: Any) -> tuple[Tensor, Tensor]:
    """Validate test pairs.

    Args:
        theta: ``(m, d)`` (or ``(m,)`` for one parameter) true parameters.
        x: ``(m, *x_shape)`` data simulated from them.

    Returns:
        ``theta`` ``(m, d)`` and ``x`` ``(m, *x_shape)`` as float32 tensors.
    """
    th = as_float_tensor(theta, "theta")
    xt = as_float_tensor(x, "x")
    if th.ndim == 1:
        th = th[:, None]
    if th.ndim != 2:
        raise ValueError(f"theta must have shape (m, d), got {tuple(th.shape)}")
    if xt.ndim == 1:
        xt = xt[:, None]
    if len(th) != len(xt):
        raise ValueError(f"theta has {len(th)} rows but x has {len(xt)}; pass one x per theta (paired test data)")
    if len(th) < 2:
        raise ValueError(f"calibration needs at least 2 test pairs, got {len(th)}")
    if not bool(torch.isfinite(th).all()) or not bool(torch.isfinite(xt).all()):
        raise ValueError("theta and x must be finite; drop the pairs whose simulation failed first")
    return th, xt


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@contextlib.contextmanager
def _torch_seed(seed: int | None) -> Iterator[None]:
    """Seed the global torch RNG for the block, restoring its state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def sample_batch(posterior: Any, n: int, x: Tensor, *, seed: int | None = 0) -> Tensor:
    """Draw ``n`` posterior samples for each of ``m`` observations, batched when possible.

    Args:
        posterior: see the module docstring for the supported interfaces.
        n: samples per observation.
        x: ``(m, *x_shape)`` observations.
        seed: seed for repeatable draws.

    Returns:
        ``(m, n, d)`` float32 samples on the CPU.
    """
    m = len(x)
    if hasattr(posterior, "sample_batched"):  # sbi: (n, m, d)
        kwargs: dict[str, Any] = {"x": x}
        if _accepts(posterior.sample_batched, "show_progress_bars"):
            kwargs["show_progress_bars"] = False
        with _torch_seed(seed):
            out = as_float_tensor(posterior.sample_batched((n,), **kwargs), "posterior samples")
        if out.ndim == 3 and out.shape[:2] == (n, m):
            return out.permute(1, 0, 2).contiguous()
        raise ValueError(f"sample_batched returned shape {tuple(out.shape)}; expected ({n}, {m}, d)")
    takes_seed = _accepts(posterior.sample, "seed")
    kwargs = {"seed": seed} if takes_seed else {}
    try:
        with _torch_seed(None if takes_seed else seed):
            out = as_float_tensor(posterior.sample(n, x=x, **kwargs), "posterior samples")
        if out.ndim == 3 and out.shape[:2] == (m, n):
            return out
    except (ValueError, RuntimeError, TypeError, AssertionError, NotImplementedError) as err:
        logger.info("posterior.sample did not take a batch of x (%s); sampling one observation at a time", err)
    else:
        logger.info("posterior.sample returned shape %s for a batch; sampling one x at a time", tuple(out.shape))
    rows = []
    for i in range(m):
        kw = {"seed": None if seed is None else int(seed) + i} if takes_seed else {}
        with _torch_seed(None if (takes_seed or seed is None) else int(seed) + i):
            s = as_float_tensor(posterior.sample(n, x=x[i], **kw), "posterior samples")
        rows.append(s.reshape(n, -1))
    return torch.stack(rows)


def log_prob_paired(posterior: Any, theta: Tensor, x: Tensor, *, chunk_size: int = 2**18) -> Tensor:
    """``log q(theta[i, j] | x[i])`` for ``k`` values of ``theta`` per observation.

    Args:
        posterior: see the module docstring.
        theta: ``(m, k, d)``.
        x: ``(m, *x_shape)``.
        chunk_size: rows evaluated per call (memory bound).

    Returns:
        ``(m, k)`` float32 log densities on the CPU (up to a constant per observation for
        sbi posteriors, whose leakage normalisation is skipped: ranks do not need it).
    """
    m, k, d = theta.shape
    if hasattr(posterior, "log_prob_batched"):  # sbi: theta (k, m, d) -> (k, m)
        kwargs: dict[str, Any] = {"x": x}
        if _accepts(posterior.log_prob_batched, "norm_posterior"):
            kwargs["norm_posterior"] = False
        with torch.no_grad():
            out = as_float_tensor(
                posterior.log_prob_batched(theta.permute(1, 0, 2).contiguous(), **kwargs), "posterior log_prob"
            )
        return out.reshape(k, m).T.contiguous()
    per = max(1, chunk_size // max(k, 1))  # observations per call
    parts: list[Tensor] = []
    try:
        with torch.no_grad():
            for i in range(0, m, per):
                th = theta[i : i + per].reshape(-1, d)
                xr = x[i : i + per].repeat_interleave(k, dim=0)
                lp = as_float_tensor(posterior.log_prob(th, x=xr), "posterior log_prob").reshape(-1)
                if lp.numel() != th.shape[0]:
                    raise ValueError(f"log_prob returned {lp.numel()} values for {th.shape[0]} rows")
                parts.append(lp.reshape(-1, k))
        return torch.cat(parts)
    except (ValueError, RuntimeError, TypeError, AssertionError, NotImplementedError) as err:
        logger.info("posterior.log_prob did not take paired x (%s); evaluating one observation at a time", err)
    with torch.no_grad():
        return torch.stack(
            [as_float_tensor(posterior.log_prob(theta[i], x=x[i]), "posterior log_prob").reshape(k) for i in range(m)]
        )


def jittered_ranks(less: Tensor, equal: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Integer ranks in ``0..N`` with ties broken at random.

    Args:
        less: ``(...)`` counts of samples strictly below the true value.
        equal: ``(...)`` counts of samples equal to it.
        num_samples: ``N``, the number of samples compared.
        generator: torch generator for the tie-breaking draws.

    Returns:
        ``(...)`` float32 ranks ``less + U{0..equal}``; uniform on ``0..N`` under calibration.
    """
    u = torch.rand(less.shape, generator=generator)
    return (less + torch.floor(u * (equal + 1)).clamp(max=equal)).float().clamp(0, num_samples)


def normalised(ranks: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Map integer ranks ``0..N`` to ``(0, 1)`` by adding ``U(0, 1)`` and dividing by ``N + 1``.

    Exactly ``U(0, 1)`` when the ranks are uniform on ``0..N``, so continuous tests apply.
    """
    return (ranks.double() + torch.rand(ranks.shape, generator=generator, dtype=torch.float64)) / (num_samples + 1)


def param_names(posterior: Any, dim: int, names: list[str] | None = None) -> list[str]:
    """Parameter names: ``names``, else ``posterior.theta_names``, else ``theta_1 .. theta_d``."""
    if names is None:
        names = getattr(posterior, "theta_names", None)
    if names is None or len(names) != dim:
        return [f"theta_{i + 1}" for i in range(dim)]
    return [str(n) for n in names]
