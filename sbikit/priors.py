"""Prior distributions over simulator parameters.

Every prior here has the same small surface:

* ``sample(n, seed=None, generator=None)`` returns a float32 tensor of shape ``(n, d)``;
* ``log_prob(theta)`` takes ``(..., d)`` and returns ``(...)``, ``-inf`` outside the support;
* ``in_support(theta)`` takes ``(..., d)`` and returns a boolean tensor ``(...)``;
* ``to_unconstrained(theta)`` / ``from_unconstrained(u)`` is a bijection between the
  support and R^d, and ``log_abs_det_jacobian(u)`` is ``log |d theta / d u|`` of
  ``from_unconstrained`` with shape ``(...)``;
* ``to_config()`` returns a JSON-able dict that :func:`prior_from_config` rebuilds.

:func:`as_prior` turns ``torch.distributions`` objects and ``sbi``'s ``BoxUniform``
into these priors, so users can pass whichever they already have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "Prior",
    "BoxUniform",
    "Gaussian",
    "LogNormal",
    "Independent",
    "TorchPrior",
    "as_prior",
    "prior_from_config",
    "make_generator",
    "strictly_inside",
]

_DTYPE = torch.float32


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` (fresh OS entropy when ``seed`` is None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    gen.manual_seed(int(seed))
    return gen


def strictly_inside(theta: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``theta`` ``(..., d)`` with every value clamped to ``[nextafter(low, high), nextafter(high, low)]``.

    Draws and maps into a box can land exactly on a bound (``torch.rand`` returns 0 about once
    in 2^24 draws; float32 rounding of a sigmoid); this keeps them strictly inside, in
    ``theta``'s dtype. ``low`` and ``high`` are ``(d,)`` in that dtype and on that device.
    """
    return torch.minimum(torch.maximum(theta, torch.nextafter(low, high)), torch.nextafter(high, low))


def _as_tensor(value: Any, dtype: torch.dtype = _DTYPE) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(dtype=dtype, device="cpu")
    return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype)


def _vector(value: Any, name: str) -> Tensor:
    t = _as_tensor(value)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-d vector, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


class Prior:
    """Base class: a distribution on a subset of R^d with a bijection to R^d.

    Subclasses set ``dim``, ``low`` and ``high`` (tensors of shape ``(d,)``, possibly
    infinite) and implement ``_sample``, ``log_prob`` and the bijection.
    """

    dim: int
    low: Tensor
    high: Tensor

    # -- sampling ---------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` parameter vectors.

        Args:
            n: number of draws.
            seed: seed for a fresh generator (ignored when ``generator`` is given).
            generator: a ``torch.Generator`` to draw from.

        Returns:
            Tensor of shape ``(n, d)``, float32, on the CPU.
        """
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        gen = generator if generator is not None else make_generator(seed)
        return self._sample(int(n), gen)

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, theta: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- support ----------------------------------------------------------------
    def in_support(self, theta: Tensor) -> Tensor:
        """Boolean mask ``(...)`` of rows of ``theta`` ``(..., d)`` inside the support."""
        theta = self._check(theta)
        low, high = self.low.to(theta), self.high.to(theta)
        return ((theta > low) & (theta < high)).all(-1)

    def check_support(self, theta: Tensor, name: str = "theta") -> None:
        """Raise ``ValueError`` naming the first offending row and bound if any row is outside."""
        theta = self._check(theta)
        inside = self.in_support(theta)
        if bool(inside.all()):
            return
        flat = theta.reshape(-1, self.dim)
        bad = (~inside.reshape(-1)).nonzero()[0, 0].item()
        row = flat[bad]
        raise ValueError(
            f"{name} has {(~inside).sum().item()} row(s) outside the prior support; "
            f"first is row {bad}: {row.tolist()}, expected low < {name} < high with "
            f"low={self.low.tolist()} and high={self.high.tolist()}"
        )

    # -- bijection ----------------------------------------------------------------
    def to_unconstrained(self, theta: Tensor) -> Tensor:
        """Map ``theta`` ``(..., d)`` from the support to R^d."""
        return theta

    def from_unconstrained(self, u: Tensor) -> Tensor:
        """Map ``u`` ``(..., d)`` from R^d to the support."""
        return u

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``log |det d from_unconstrained(u) / du|`` with shape ``(...)``."""
        return u.new_zeros(u.shape[:-1])

    # -- misc -------------------------------------------------------------------------
    @property
    def bounded(self) -> bool:
        """Whether any coordinate has a finite bound (so the bijection is not the identity)."""
        return bool(torch.isfinite(self.low).any() or torch.isfinite(self.high).any())

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, theta: Tensor) -> Tensor:
        if not isinstance(theta, Tensor):
            theta = _as_tensor(theta)
        if theta.ndim == 0 or theta.shape[-1] != self.dim:
            raise ValueError(
                f"theta must have shape (..., {self.dim}) for this {type(self).__name__} prior, "
                f"got {tuple(theta.shape)}"
            )
        return theta

    def __repr__(self) -> str:
        cfg = self.to_config()
        args = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "type")
        return f"{cfg['type']}({args})"


class BoxUniform(Prior):
    """Uniform on the box ``low < theta < high``; bijection is a scaled logit.

    Args:
        low: lower bounds, shape ``(d,)`` (a scalar means ``d = 1``).
        high: upper bounds, same shape as ``low``.
    """

    def __init__(self, low: Any, high: Any) -> None:
        self._low64 = _as_tensor(low, torch.float64).reshape(-1)
        self._high64 = _as_tensor(high, torch.float64).reshape(-1)
        self.low = _vector(low, "low")
        self.high = _vector(high, "high")
        if self.low.shape != self.high.shape:
            raise ValueError(
                f"low and high must have the same shape, got {tuple(self.low.shape)} and {tuple(self.high.shape)}"
            )
        if not bool((self.high > self.low).all()):
            raise ValueError(f"need low < high everywhere, got low={self.low.tolist()}, high={self.high.tolist()}")
        self.dim = self.low.numel()
        self._log_volume = float(torch.log(self._high64 - self._low64).sum())

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:
        u = torch.rand(n, self.dim, generator=gen, dtype=_DTYPE)
        theta = self.low + (self.high - self.low) * u
        return strictly_inside(theta, self.low, self.high)

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        inside = self.in_support(theta)
        lp = torch.full(theta.shape[:-1], -self._log_volume, dtype=theta.dtype, device=theta.device)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def to_unconstrained(self, theta: Tensor) -> Tensor:
        low, high = self.low.to(theta), self.high.to(theta)
        p = (theta - low) / (high - low)
        return torch.logit(p)

    def from_unconstrained(self, u: Tensor) -> Tensor:
        low, high = self.low.to(u), self.high.to(u)
        theta = low + (high - low) * torch.sigmoid(u)
        return strictly_inside(theta, low, high)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        width = (self.high - self.low).to(u)
        # d/du sigmoid(u) = sigmoid(u) (1 - sigmoid(u)); log form is -softplus(-u) - softplus(u).
        return (torch.log(width) - F.softplus(-u) - F.softplus(u)).sum(-1)

    @property
    def mean(self) -> Tensor:
        return (self.low + self.high) / 2

    @property
    def stddev(self) -> Tensor:
        return (self.high - self.low) / math.sqrt(12.0)

    def to_config(self) -> dict[str, Any]:
        return {"type": "BoxUniform", "low": self._low64.tolist(), "high": self._high64.tolist()}


class Gaussian(Prior):
    """Multivariate normal ``N(mean, cov)``; the bijection is the identity.

    Args:
        mean: shape ``(d,)``.
        cov: shape ``(d, d)`` (symmetric positive definite), ``(d,)`` for a diagonal, or a scalar.
    """

    def __init__(self, mean: Any, cov: Any) -> None:
        self.mean = _vector(mean, "mean")
        self.dim = self.mean.numel()
        c = _as_tensor(cov, torch.float64)
        if c.ndim == 0:
            c = c * torch.eye(self.dim, dtype=torch.float64)
        elif c.ndim == 1:
            if c.numel() != self.dim:
                raise ValueError(f"diagonal cov must have shape ({self.dim},), got {tuple(c.shape)}")
            c = torch.diag(c)
        if c.shape != (self.dim, self.dim):
            raise ValueError(f"cov must have shape ({self.dim}, {self.dim}), got {tuple(c.shape)}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("cov must be finite")
        if not torch.allclose(c, c.T, atol=1e-10 * float(c.abs().max())):
            raise ValueError("cov must be symmetric")
        try:
            chol = torch.linalg.cholesky(c)
        except RuntimeError as err:
            raise ValueError("cov must be positive definite") from err
        self.cov = c.to(_DTYPE)
        self._cov64 = c
        self._chol64 = chol
        self._chol = chol.to(_DTYPE)
        self._prec64 = torch.cholesky_inverse(chol)
        self._log_norm = -0.5 * self.dim * math.log(2 * math.pi) - float(torch.log(torch.diagonal(chol)).sum())
        self.low = torch.full((self.dim,), -math.inf)
        self.high = torch.full((self.dim,), math.inf)

    def in_support(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        return torch.isfinite(theta).all(-1)

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=gen, dtype=_DTYPE)
        return self.mean + z @ self._chol.T

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        diff = theta.double() - self.mean.double().to(theta.device)
        maha = torch.einsum("...i,ij,...j->...", diff, self._prec64.to(theta.device), diff)
        return (self._log_norm - 0.5 * maha).to(theta.dtype)

    @property
    def stddev(self) -> Tensor:
        return torch.sqrt(torch.diagonal(self.cov))

    def to_config(self) -> dict[str, Any]:
        return {"type": "Gaussian", "mean": self.mean.tolist(), "cov": self._cov64.tolist()}


class LogNormal(Prior):
    """Independent log-normals: ``log theta_i ~ N(loc_i, scale_i^2)``; bijection is ``log``.

    Args:
        loc: shape ``(d,)`` or scalar.
        scale: shape ``(d,)`` or scalar, positive.
    """

    def __init__(self, loc: Any, scale: Any) -> None:
        loc_t, scale_t = _vector(loc, "loc"), _vector(scale, "scale")
        loc_t, scale_t = torch.broadcast_tensors(loc_t, scale_t)
        if not bool((scale_t > 0).all()):
            raise ValueError(f"scale must be positive, got {scale_t.tolist()}")
        self.loc, self.scale = loc_t.clone(), scale_t.clone()
        self.dim = self.loc.numel()
        self.low = torch.zeros(self.dim)
        self.high = torch.full((self.dim,), math.inf)

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=gen, dtype=_DTYPE)
        return torch.exp(self.loc + self.scale * z)

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        inside = self.in_support(theta)
        safe = torch.where(inside[..., None], theta, torch.ones_like(theta))
        logt = torch.log(safe)
        loc, scale = self.loc.to(theta), self.scale.to(theta)
        lp = (-0.5 * ((logt - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi) - logt).sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def to_unconstrained(self, theta: Tensor) -> Tensor:
        return torch.log(theta)

    def from_unconstrained(self, u: Tensor) -> Tensor:
        fi = torch.finfo(u.dtype)
        return torch.exp(u).clamp(fi.tiny, fi.max)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        return u.sum(-1)

    @property
    def mean(self) -> Tensor:
        return torch.exp(self.loc + self.scale**2 / 2)

    @property
    def stddev(self) -> Tensor:
        return self.mean * torch.sqrt(torch.expm1(self.scale**2))

    def to_config(self) -> dict[str, Any]:
        return {"type": "LogNormal", "loc": self.loc.tolist(), "scale": self.scale.tolist()}


class Independent(Prior):
    """Concatenation of independent priors: ``theta = [theta_1, theta_2, ...]``.

    Args:
        priors: the component priors (anything :func:`as_prior` accepts); their
            dimensions add up to ``d``.
    """

    def __init__(self, priors: Sequence[Any]) -> None:
        if len(priors) == 0:
            raise ValueError("Independent needs at least one component prior")
        self.priors = [as_prior(p) for p in priors]
        self._sizes = [p.dim for p in self.priors]
        self.dim = sum(self._sizes)
        self.low = torch.cat([p.low for p in self.priors])
        self.high = torch.cat([p.high for p in self.priors])

    def _split(self, t: Tensor) -> list[Tensor]:
        return list(torch.split(t, self._sizes, dim=-1))

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.cat([p.sample(n, generator=gen) for p in self.priors], dim=-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        return sum(p.log_prob(t) for p, t in zip(self.priors, self._split(theta), strict=True))  # type: ignore[return-value]

    def in_support(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        masks = [p.in_support(t) for p, t in zip(self.priors, self._split(theta), strict=True)]
        return torch.stack(masks, 0).all(0)

    def to_unconstrained(self, theta: Tensor) -> Tensor:
        return torch.cat([p.to_unconstrained(t) for p, t in zip(self.priors, self._split(theta), strict=True)], -1)

    def from_unconstrained(self, u: Tensor) -> Tensor:
        return torch.cat([p.from_unconstrained(t) for p, t in zip(self.priors, self._split(u), strict=True)], -1)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        return sum(p.log_abs_det_jacobian(t) for p, t in zip(self.priors, self._split(u), strict=True))  # type: ignore[return-value]

    @property
    def mean(self) -> Tensor:
        return torch.cat([p.mean for p in self.priors])  # type: ignore[attr-defined]

    @property
    def stddev(self) -> Tensor:
        return torch.cat([p.stddev for p in self.priors])  # type: ignore[attr-defined]

    def to_config(self) -> dict[str, Any]:
        return {"type": "Independent", "priors": [p.to_config() for p in self.priors]}


class TorchPrior(Prior):
    """Wraps any ``torch.distributions.Distribution`` (or object with ``sample``/``log_prob``).

    Support bounds are read from ``dist.support`` when it is an interval or
    independent interval; the bijection is ``torch.distributions.biject_to``.
    Such a prior cannot be saved to a config; convert it with :func:`as_prior` when
    an equivalent built-in prior exists.
    """

    def __init__(self, dist: Any) -> None:
        self.dist = dist
        with torch.random.fork_rng(devices=[]):
            probe = dist.sample((1,))
        self.dim = 1 if probe.ndim == 1 else int(probe.shape[-1])
        self._scalar = probe.ndim == 1
        low, high = -math.inf, math.inf
        support = getattr(dist, "support", None)
        base = getattr(support, "base_constraint", support)
        low = getattr(base, "lower_bound", low)
        high = getattr(base, "upper_bound", high)
        self.low = torch.broadcast_to(_as_tensor(low), (self.dim,)).clone()
        self.high = torch.broadcast_to(_as_tensor(high), (self.dim,)).clone()
        try:
            self._bij = torch.distributions.biject_to(support) if support is not None else None
        except NotImplementedError:
            self._bij = None

    def _sample(self, n: int, gen: torch.Generator) -> Tensor:
        # torch.distributions has no generator argument: fork the global RNG so the
        # caller's seed decides the draw and the global state is left untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            s = self.dist.sample((n,))
        return s.reshape(n, self.dim).to(_DTYPE)

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = self._check(theta)
        inside = self.in_support(theta)
        safe = torch.where(inside[..., None], theta, self.from_unconstrained(torch.zeros_like(theta)))
        lp = self.dist.log_prob(safe[..., 0] if self._scalar else safe).to(theta.dtype)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def to_unconstrained(self, theta: Tensor) -> Tensor:
        if self._bij is None:
            return theta
        arg = theta[..., 0] if self._scalar else theta
        out = self._bij.inv(arg)
        return out[..., None] if self._scalar else out

    def from_unconstrained(self, u: Tensor) -> Tensor:
        if self._bij is None:
            return u
        arg = u[..., 0] if self._scalar else u
        out = self._bij(arg)
        return out[..., None] if self._scalar else out

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        if self._bij is None:
            return u.new_zeros(u.shape[:-1])
        arg = u[..., 0] if self._scalar else u
        ladj = self._bij.log_abs_det_jacobian(arg, self._bij(arg))
        if ladj.ndim == u.ndim:
            ladj = ladj.sum(-1)
        return ladj

    def to_config(self) -> dict[str, Any]:
        raise ValueError(
            f"a prior wrapping {type(self.dist).__name__} cannot be saved; use one of "
            "sbikit.priors.BoxUniform, Gaussian, LogNormal or Independent"
        )

    def __repr__(self) -> str:
        return f"TorchPrior({self.dist!r})"


def as_prior(obj: Any) -> Prior:
    """Convert ``obj`` to an sbikit :class:`Prior`.

    Accepts sbikit priors (returned unchanged), ``torch.distributions`` ``Uniform``,
    ``MultivariateNormal``, ``Normal``, ``LogNormal`` (possibly wrapped in
    ``Independent``; converted to the built-in equivalents), sbi's ``BoxUniform``,
    and, as a fallback, any distribution with ``sample`` and ``log_prob``.
    """
    if isinstance(obj, Prior):
        return obj
    D = torch.distributions
    base, reinterpreted = obj, 0
    while isinstance(base, D.Independent):
        reinterpreted += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, D.Uniform):
        return BoxUniform(base.low.reshape(-1), base.high.reshape(-1))
    if isinstance(base, D.MultivariateNormal):
        return Gaussian(base.loc.reshape(-1), base.covariance_matrix)
    # A Normal/LogNormal with a batch shape is read as independent coordinates (as with
    # torch's Independent wrapper), the usual intent when it is passed as a prior.
    if isinstance(base, D.Normal):
        return Gaussian(base.loc.reshape(-1), base.scale.reshape(-1) ** 2)
    if isinstance(base, D.LogNormal):
        return LogNormal(base.loc.reshape(-1), base.scale.reshape(-1))
    if hasattr(obj, "sample") and hasattr(obj, "log_prob"):
        return TorchPrior(obj)
    raise TypeError(
        f"cannot use {type(obj).__name__} as a prior: expected an sbikit prior, a "
        "torch.distributions.Distribution or sbi's BoxUniform"
    )


def prior_from_config(config: dict[str, Any]) -> Prior:
    """Rebuild a prior from :meth:`Prior.to_config` output."""
    kind = config.get("type")
    if kind == "BoxUniform":
        return BoxUniform(config["low"], config["high"])
    if kind == "Gaussian":
        return Gaussian(config["mean"], config["cov"])
    if kind == "LogNormal":
        return LogNormal(config["loc"], config["scale"])
    if kind == "Independent":
        return Independent([prior_from_config(c) for c in config["priors"]])
    raise ValueError(f"unknown prior type in config: {kind!r}")
