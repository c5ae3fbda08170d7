"""Amortized posteriors: sampling, densities, MAP, saving and loading.

A :class:`FlowPosterior` wraps a :class:`~sbikit.flows.ConditionalFlow` trained on
``u = prior.to_unconstrained(theta)`` given ``x``. Samples are mapped back with
``prior.from_unconstrained``, so they never leave the prior support, and densities
include the change-of-variables term, so ``log_prob`` is a normalised density on the
support (no leakage correction needed).

Files are a ``torch.save`` dict of a state dict and JSON strings; :func:`load` reads
them with ``weights_only=True``, so loading never runs code from the file.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbikit.density.misspecification import (
    WARN_P_VALUE,
    ObservationCheck,
    OutOfDistributionWarning,
    TypicalityCheck,
    atypical_count_tail,
)
from sbikit.flows import ConditionalFlow, FlowConfig
from sbikit.priors import Prior, make_generator, prior_from_config
from sbikit.utils import as_float_tensor, check_x_shape, load_payload, resolve_device, save_payload

__all__ = ["TrainedFlowModel", "FlowPosterior", "load", "FORMAT"]

FORMAT = "sbikit-posterior"
FORMAT_VERSION = 1


class TrainedFlowModel:
    """State shared by the posteriors sbikit returns: a trained flow, its prior, the
    observation shape, the training record; device moves and (atomic) saving.

    Subclasses implement ``config()``, whose ``"kind"`` tells :func:`load` what to rebuild.

    Args:
        flow: the trained flow.
        prior: the prior used in training; defines the support.
        x_shape: shape of one observation.
        info: JSON-able training record (losses, epochs, times).
        theta_names: optional parameter names (default ``theta_1 ... theta_d``).
        typicality: a check of observations against the training simulations (see
            :meth:`FlowPosterior.check_observation`); ``None`` where there is none.
    """

    def __init__(
        self,
        flow: ConditionalFlow,
        prior: Prior,
        x_shape: tuple[int, ...],
        *,
        info: dict[str, Any] | None = None,
        theta_names: list[str] | None = None,
        typicality: TypicalityCheck | None = None,
    ) -> None:
        self.flow = flow.eval()
        self.prior = prior
        self.x_shape = tuple(int(s) for s in x_shape)
        self.info = dict(info or {})
        self.theta_names = list(theta_names) if theta_names else [f"theta_{i + 1}" for i in range(prior.dim)]
        self.typicality = typicality

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return self.prior.dim

    @property
    def device(self) -> torch.device:
        return self.flow.y_shift.device

    def to(self, device: str | torch.device) -> TrainedFlowModel:
        """Move the flow to ``device`` (in place) and return self."""
        self.flow.to(resolve_device(device))
        return self

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- misspecification ----------------------------------------------------------------
    def check_observation(self, x: Any, *, alpha: float = 0.05) -> ObservationCheck:
        """How typical ``x`` is among the training simulations (a misspecification check).

        The density of ``x``'s summary (for NPE the flow's embedded context: the z-scored
        ``x``, or the embedding's output; for NLE the z-scored ``x``) is estimated from its
        nearest training summaries and compared with that of held-out training
        simulations: the p-value is the share of those at most as typical
        (``sbikit.density.misspecification`` has the details). A small p-value
        means the simulator (or the prior) does not produce data like ``x``, and the
        posterior for it should not be trusted.

        Args:
            x: one observation ``x_shape`` or a batch ``(m, *x_shape)`` (for NLE, each of
                ``k`` i.i.d. observations is rated).
            alpha: level of the test.

        Returns:
            An :class:`~sbikit.density.misspecification.ObservationCheck` with ``(m,)``
            ``log_density``, ``p_value`` and ``typical``; ``print`` it for a report.

        Raises:
            ValueError: when the posterior carries no check (trained on fewer than 60
                simulations, or saved by an sbikit without checks).
        """
        if self.typicality is None:
            raise ValueError(
                "this posterior carries no typicality check (trained on too few simulations, or saved by an "
                "older sbikit); retrain it, or fit sbikit.density.TypicalityCheck on summaries of your simulations"
            )
        with torch.no_grad():
            return self.typicality.check(self._summaries(x).cpu(), alpha=alpha)

    def _summaries(self, x: Any) -> Tensor:  # pragma: no cover - abstract
        """Observations ``x_shape`` or ``(m, *x_shape)`` -> the summaries the check rates, ``(m, k)``."""
        raise NotImplementedError

    def _warn_if_atypical(self, summaries: Tensor, *, stacklevel: int) -> None:
        """Warn (:class:`OutOfDistributionWarning`) for observations less typical than nearly all simulations.

        An observation counts as atypical at p-value ``<= level``, where ``level`` is
        ``WARN_P_VALUE`` (1e-3), or the smallest p-value the reference set resolves,
        ``1 / (N_ref + 1)``, where that is larger (posteriors trained on fewer than about 3,000
        simulations). One observation warns when it is atypical: under the null hypothesis
        that happens at rate ``level``. For ``m`` observations at once (calibration runs,
        many objects) the warning fires only when the number of atypical ones, ``k``, is
        itself unlikely by chance: ``P(K >= k) <= level`` under the exact null distribution of
        the count (:func:`~sbikit.density.misspecification.atypical_count_tail`; the p-values
        share one reference set). So the false-alarm rate of a call stays at ``level``
        whatever ``m`` (with 1,000 simulated observations a per-observation rule warned in
        about half of the calls); per-observation p-values are always available from
        :meth:`check_observation`.
        """
        if self.typicality is None or len(summaries) == 0:
            return
        p = self.typicality.p_value(summaries.detach().cpu())
        level = max(WARN_P_VALUE, 1.0 / (len(self.typicality.reference) + 1.0))
        bad = int((p <= level * (1 + 1e-9)).sum())
        m = len(p)
        if bad == 0 or atypical_count_tail(bad, m, len(self.typicality.reference), level) > level * (1 + 1e-6):
            return
        which = "the observation is" if m == 1 else f"{bad} of {m} observations are"
        chance = "" if m == 1 else f"; {m * level:.2g} expected by chance"
        warnings.warn(
            f"{which} less typical than {100 * (1 - level):.1f}% of the training simulations (typicality "
            f"p-value {float(p.min()):.3g}{chance}): the simulator or the prior may be misspecified, and "
            "posterior samples for such observations are not to be trusted; see posterior.check_observation(x)",
            OutOfDistributionWarning,
            stacklevel=stacklevel + 1,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path`` (atomically: a temporary file, then a rename)."""
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config()),
            "info": json.dumps(self.info),
            "state_dict": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
        }
        if self.typicality is not None:
            payload["typicality"] = self.typicality.state()
        return save_payload(payload, path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(flow={self.flow.config.kind}, d={self.dim}, x_shape={self.x_shape}, "
            f"prior={self.prior!r}, device={self.device})"
        )


class FlowPosterior(TrainedFlowModel):
    """Posterior ``p(theta | x)`` given by a conditional flow in unconstrained space.

    Args:
        flow: trained flow over ``u`` (``(d,)``) given ``x`` (``x_shape``).
        prior: the prior used in training; defines the support and the bijection.
        x_shape: shape of one observation.
        info: JSON-able training record (losses, epochs, times).
        theta_names: optional parameter names.
    """

    # -- helpers ---------------------------------------------------------------------
    def _x(self, x: Any) -> tuple[Tensor, bool]:
        if x is None:
            raise ValueError(f"x is required: pass an observation of shape {self.x_shape}")
        xt = as_float_tensor(x, "x")
        if self.x_shape == (1,) and xt.ndim <= 1:
            # Scalar observations: a 0-d or (1,) x is one observation, (m,) is a batch.
            xt = xt.reshape(-1, 1)
            if len(xt) == 1:
                xt = xt[0]
        batched = check_x_shape(xt, self.x_shape)
        if not bool(torch.isfinite(xt).all()):
            raise ValueError("x holds NaN or inf; observations must be finite")
        return (xt if batched else xt[None]).to(self.device), batched

    # -- sampling -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, x: Any, seed: int | None = None, *, chunk_size: int = 2**16) -> Tensor:
        """Draw posterior samples.

        Args:
            n: samples per observation.
            x: one observation ``x_shape`` or a batch ``(m, *x_shape)``.
            seed: seed for repeatable draws.
            chunk_size: rows pushed through the flow at once (memory bound).

        Returns:
            ``(n, d)`` for one observation, ``(m, n, d)`` for a batch; CPU float32,
            always strictly inside the prior support.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        xt, batched = self._x(x)
        gen = make_generator(seed, self.device)
        embedded = self.flow.embed(xt)
        if self.typicality is not None:  # this <- sample <- torch.no_grad's wrapper <- caller
            self._warn_if_atypical(self._check_summaries(xt, embedded), stacklevel=3)
        out = torch.empty(len(xt), n, self.dim)
        per = max(1, chunk_size // max(n, 1))
        for i in range(0, len(xt), per):
            emb = embedded[i : i + per]
            for j in range(0, n, chunk_size):
                k = min(chunk_size, n - j)
                u = self.flow.sample_embedded(k, emb, generator=gen)
                out[i : i + per, j : j + k] = self.prior.from_unconstrained(u).cpu()
        return out if batched else out[0]

    def _summaries(self, x: Any) -> Tensor:
        xt, _ = self._x(x)
        return self._check_summaries(xt, self.flow.embed(xt))

    def _check_summaries(self, xt: Tensor, embedded: Tensor) -> Tensor:
        """What the typicality check rates: the embedded ``x``, and the raw data's residual statistic if any."""
        summaries = self.flow.typicality_summaries(embedded)
        residual = None if self.typicality is None else self.typicality.residual
        if residual is None:
            return summaries
        return torch.cat([summaries, residual(xt).to(summaries.device)], dim=1)

    # -- density ------------------------------------------------------------------------
    def log_prob(self, theta: Any, x: Any) -> Tensor:
        """Posterior log density ``log p(theta | x)`` (normalised on the prior support).

        Args:
            theta: ``(n, d)`` or ``(d,)``.
            x: one observation ``x_shape`` (shared by all rows) or ``(n, *x_shape)`` (paired).

        Returns:
            ``(n,)`` (a 0-d tensor for a single ``theta``); ``-inf`` outside the support.
        """
        with torch.no_grad():
            return self._log_prob(theta, x).cpu()

    def _log_prob(self, theta: Any, x: Any) -> Tensor:
        th = as_float_tensor(theta, "theta") if not isinstance(theta, Tensor) else theta.float()
        given_shape = tuple(th.shape)
        if self.dim == 1 and th.ndim == 1:
            # One parameter: an (n,) vector holds n values.
            single, th = False, th[:, None]
        else:
            single = th.ndim == 1
            th = th.reshape(1, -1) if single else th
        if th.ndim != 2 or th.shape[-1] != self.dim:
            raise ValueError(f"theta must have shape (n, {self.dim}) or ({self.dim},), got {given_shape}")
        th = th.to(self.device)
        xt, batched = self._x(x)
        if batched and len(xt) != len(th):
            raise ValueError(f"x has {len(xt)} rows but theta has {len(th)}; pass one x or one per theta")
        inside = self.prior.in_support(th)
        safe = torch.where(inside[:, None], th, self.prior.from_unconstrained(torch.zeros_like(th)))
        u = self.prior.to_unconstrained(safe)
        emb = self.flow.embed(xt)
        if not batched:
            emb = emb.expand(len(th), -1)
        lp = self.flow.log_prob_embedded(u, emb) - self.prior.log_abs_det_jacobian(u)
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        return lp[0] if single else lp

    # -- point estimate ---------------------------------------------------------------
    def map(self, x: Any, *, num_init: int = 1000, num_steps: int = 200, seed: int | None = 0) -> Tensor:
        """Maximum a posteriori estimate for one observation.

        Starts from the best of ``num_init`` posterior samples and refines the ten best
        by Adam on the unconstrained parameters.

        Returns:
            ``(d,)``.
        """
        xt, batched = self._x(x)
        if batched:
            return torch.stack([self.map(xi, num_init=num_init, num_steps=num_steps, seed=seed) for xi in xt.cpu()])
        start = self.sample(num_init, x=xt[0].cpu(), seed=seed)
        lp = self.log_prob(start, x=xt[0].cpu())
        top = start[torch.topk(lp, min(10, len(lp))).indices].to(self.device)
        u = self.prior.to_unconstrained(top).detach().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=0.01)
        emb = self.flow.embed(xt).detach()
        flags = [p.requires_grad for p in self.flow.parameters()]
        for p in self.flow.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(num_steps):
                opt.zero_grad()
                lpu = self.flow.log_prob_embedded(u, emb.expand(len(u), -1)) - self.prior.log_abs_det_jacobian(u)
                (-lpu.sum()).backward()
                opt.step()
        finally:
            for p, flag in zip(self.flow.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        with torch.no_grad():
            theta = self.prior.from_unconstrained(u)
            final = self._log_prob(theta, xt[0])
        return theta[torch.argmax(final)].detach().cpu()

    # -- persistence --------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able description from which :func:`load` rebuilds the posterior."""
        return {
            "kind": "flow_posterior",
            "prior": self.prior.to_config(),
            "flow": self.flow.config.to_dict(),
            "x_shape": list(self.x_shape),
            "embedding": _embedding_config(self.flow.embedding),
            "theta_names": self.theta_names,
        }


def _embedding_config(embedding: nn.Module) -> dict[str, Any] | None:
    if isinstance(embedding, nn.Flatten):
        return None
    get_config = getattr(embedding, "get_config", None)
    if get_config is None:
        raise ValueError(
            f"cannot save a posterior whose embedding {type(embedding).__name__} has no get_config(); "
            "add a get_config() method returning the constructor's keyword arguments so that the "
            "embedding can be rebuilt from its import path"
        )
    cls = type(embedding)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": get_config()}


def _build_embedding(cfg: dict[str, Any] | None) -> nn.Module | None:
    if cfg is None:
        return None
    module_name, _, qualname = cfg["class"].partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"embedding class {cfg['class']} in the file is not an nn.Module")
    return obj(**cfg["kwargs"])


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FlowPosterior:
    """Load a posterior written by :meth:`FlowPosterior.save` (or ``NLEPosterior.save``).

    The saved config's ``"kind"`` picks the class: ``"nle_posterior"`` files give an
    :class:`~sbikit.inference.nle.NLEPosterior`, all others a :class:`FlowPosterior`.

    Args:
        path: the file.
        device: where to put the flow (``"cpu"``, ``"cuda"`` or ``"auto"``); a posterior
            trained on a GPU loads on a CPU.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an sbikit posterior.
    """
    payload = load_payload(path, fmt=FORMAT, version=FORMAT_VERSION, what="posterior")
    cfg = json.loads(payload["config"])
    state = payload.get("typicality")
    typicality = None if state is None else TypicalityCheck.from_state(state)
    if cfg.get("kind") == "nle_posterior":
        from sbikit.inference.nle import NLEPosterior

        nle = NLEPosterior.from_saved(cfg, payload["state_dict"], json.loads(payload["info"]), typicality)
        return nle.to(device)  # type: ignore[return-value]
    prior = prior_from_config(cfg["prior"])
    flow_cfg = FlowConfig.from_dict(cfg["flow"])
    flow = ConditionalFlow(flow_cfg, tuple(cfg["x_shape"]), _build_embedding(cfg.get("embedding")))
    flow.load_state_dict(payload["state_dict"])
    post = FlowPosterior(
        flow,
        prior,
        tuple(cfg["x_shape"]),
        info=json.loads(payload["info"]),
        theta_names=cfg.get("theta_names"),
        typicality=typicality,
    )
    return post.to(device)
