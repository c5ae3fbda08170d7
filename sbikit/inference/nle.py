"""Neural likelihood estimation (NLE): a conditional flow for ``p(x | theta)``, sampled with emcee.

The estimator is :class:`NLE`; its loss is :func:`nle_loss`, the negative log density of
the simulations under the flow given their parameters. The flow models the flattened
``x`` (z-scored) with ``theta`` (z-scored) as context, trained by :func:`sbikit.train.fit`.
The posterior, :class:`NLEPosterior`, combines the learned likelihood with the prior and
draws samples with emcee (:func:`sbikit.mcmc.sample_emcee`). Because the likelihood is
learned per data set, several i.i.d. observations of the same ``theta`` are handled by
summing their log-likelihoods, without retraining.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sbikit.density.misspecification import TypicalityCheck
from sbikit.flows import ConditionalFlow, build_flow
from sbikit.inference._store_data import pair_stream, standardize, training_inputs
from sbikit.inference.estimator import FlowEstimator
from sbikit.inference.posterior import TrainedFlowModel
from sbikit.inference.typicality import fit_typicality
from sbikit.train import StreamingData, fit
from sbikit.utils import as_float_tensor, prepare_training_pairs

if TYPE_CHECKING:
    from sbikit.mcmc import MCMCResult

__all__ = ["NLE", "NLEPosterior", "nle_loss"]

logger = logging.getLogger(__name__)

# Rows of (theta, x) pairs pushed through the flow at once when evaluating likelihoods.
_CHUNK = 65_536


def nle_loss(flow: ConditionalFlow, x: Tensor, theta: Tensor) -> Tensor:
    """Mean negative log density ``-log q(x | theta)`` of a batch.

    Args:
        flow: the conditional flow over flattened ``x``.
        x: flattened simulations ``(b, k)``.
        theta: parameters ``(b, d)``.

    Returns:
        Scalar tensor.
    """
    return -flow.log_prob(x, theta).mean()


class NLE(FlowEstimator):
    """Neural likelihood estimation with a conditional normalizing flow.

    Args:
        prior: an sbikit prior, a ``torch.distributions`` distribution or sbi's ``BoxUniform``.
        flow: ``"maf"`` (default), ``"realnvp"`` or ``"nsf"``; ``realnvp`` needs ``x`` with
            at least 2 entries.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; where the flow
            trains and is evaluated (emcee itself runs on the CPU).
        hidden_features: width of the flow's conditioner networks.
        num_transforms: number of flow layers.
        num_bins: spline bins (``nsf`` only).
        theta_names: optional parameter names carried by the posterior.
    """

    def fit(
        self,
        theta: Any,
        x: Any,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float = 1e-3,
        max_epochs: int = 1000,
        validation_fraction: float = 0.1,
        patience: int = 20,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> NLEPosterior:
        """Train on simulated pairs and return the posterior.

        Args:
            theta: parameters ``(n, d)`` (numpy or torch), inside the prior support; or an
                array on disk such as ``sbikit.open_store(path).theta``.
            x: simulations ``(n, *x_shape)``; rows with NaN or inf are dropped with a warning.
                Or an array on disk such as ``sbikit.open_store(path).x``.
            seed: makes initialisation, validation split and batch order repeatable.
            batch_size: ``None`` picks :func:`sbikit.train.default_batch_size`.
            learning_rate: initial Adam learning rate.
            max_epochs: cap on epochs.
            validation_fraction: share held out for early stopping.
            patience: epochs without improvement before stopping.
            progress: show a progress bar.
            checkpoint: file to save the training state to after every epoch (atomically).
            resume: continue from ``checkpoint`` if it exists (see :func:`sbikit.train.fit`).
            memory_limit_gb: arrays on disk larger than this (as float32) are streamed in
                shuffled chunk-batches instead of read into memory, and the z-scoring
                statistics are computed in one streaming pass; ``0`` always streams.

        Returns:
            An :class:`NLEPosterior` on ``self.device``.
        """
        theta, x, streamed = training_inputs(theta, x, memory_limit_gb=memory_limit_gb)
        data: tuple[Tensor, Tensor] | StreamingData
        if streamed:
            data, x_shape = pair_stream(self.prior, theta, x, _flat_pairs)
        else:
            th, xt = prepare_training_pairs(self.prior, theta, x)  # warns at the user's fit()
            x_shape = tuple(xt.shape[1:])
            data = tuple(_flat_pairs(th, xt))
        x_features = math.prod(x_shape)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            flow = build_flow(
                self.flow_kind,
                x_features,
                (self.prior.dim,),
                hidden_features=self.hidden_features,
                num_transforms=self.num_transforms,
                num_bins=self.num_bins,
                num_blocks=self.num_blocks,
            )
        num_rows = standardize(flow, data)
        result = fit(
            flow,
            nle_loss,
            data,
            seed=seed,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            device=self.device,
            progress=progress,
            description=f"NLE ({self.flow_kind})",
            checkpoint=checkpoint,
            resume=resume,
        )
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError("training diverged: the validation loss is not finite")
        info = {"method": "NLE", "num_simulations": num_rows, **result.to_dict()}
        # The check rates observations by the density of their z-scored x (what the flow models).
        typicality = fit_typicality(
            flow, data, column=0, summarize=lambda xf: (xf - flow.y_shift) / flow.y_scale, seed=seed
        )
        return NLEPosterior(flow, self.prior, x_shape, info=info, theta_names=self.theta_names, typicality=typicality)


def _flat_pairs(theta: Tensor, x: Tensor) -> list[Tensor]:
    """``[x_flat, theta]``: simulations flattened to ``(n, k)`` and their parameters ``(n, d)``."""
    return [x.reshape(len(x), -1), theta]


class NLEPosterior(TrainedFlowModel):
    """Posterior ``p(theta | x) ∝ q(x | theta) p(theta)`` from a learned likelihood, sampled with emcee.

    Args:
        flow: trained flow over flattened ``x`` (``(k,)``, ``k = prod(x_shape)``) given
            ``theta`` (``(d,)``).
        prior: the prior used in training.
        x_shape: shape of one observation.
        info: JSON-able training record.
        theta_names: optional parameter names.
    """

    # -- observations ---------------------------------------------------------------------
    def _summaries(self, x: Any) -> Tensor:
        """z-scored flattened observations ``(k, prod(x_shape))``: what :meth:`check_observation` rates."""
        return (self._observations(x) - self.flow.y_shift) / self.flow.y_scale

    def _observations(self, x: Any) -> Tensor:
        """``x_shape`` or ``(k, *x_shape)`` -> flattened ``(k, prod(x_shape))`` on the device."""
        if x is None:
            raise ValueError(f"x is required: pass an observation of shape {self.x_shape} or (k, *{self.x_shape})")
        xt = as_float_tensor(x, "x")
        if self.x_shape == (1,) and xt.ndim <= 1:
            xt = xt.reshape(-1, 1)
        if tuple(xt.shape) == self.x_shape:
            xt = xt[None]
        elif not (xt.ndim == len(self.x_shape) + 1 and tuple(xt.shape[1:]) == self.x_shape and len(xt) >= 1):
            raise ValueError(
                f"x must have shape {self.x_shape} (one observation) or (k, *{self.x_shape}) "
                f"(k i.i.d. observations of the same theta), got {tuple(xt.shape)}"
            )
        if not bool(torch.isfinite(xt).all()):
            raise ValueError("x holds NaN or inf; observations must be finite")
        return xt.reshape(len(xt), -1).to(self.device)

    def _theta(self, theta: Any) -> tuple[Tensor, bool]:
        th = as_float_tensor(theta, "theta")
        given = tuple(th.shape)
        if self.dim == 1 and th.ndim == 1:
            return th[:, None], False
        single = th.ndim == 1
        th = th.reshape(1, -1) if single else th
        if th.ndim != 2 or th.shape[-1] != self.dim:
            raise ValueError(f"theta must have shape (n, {self.dim}) or ({self.dim},), got {given}")
        return th, single

    @torch.no_grad()
    def _summed_log_likelihood(self, theta: Tensor, xs: Tensor) -> Tensor:
        """``sum_i log q(x_i | theta)`` for ``theta`` ``(n, d)`` and ``xs`` ``(k, m)`` -> ``(n,)``."""
        theta = theta.to(self.device, torch.float32)
        out = torch.zeros(len(theta), device=self.device)
        per = max(1, _CHUNK // len(xs))
        for i in range(0, len(theta), per):
            th = theta[i : i + per]
            ctx = th.repeat_interleave(len(xs), dim=0)
            xr = xs.repeat(len(th), 1)
            out[i : i + per] = self.flow.log_prob(xr, ctx).reshape(len(th), len(xs)).sum(1)
        return out

    # -- density ------------------------------------------------------------------------
    def log_likelihood(self, theta: Any, x: Any) -> Tensor:
        """Learned log-likelihood ``sum_i log q(x_i | theta)``.

        Args:
            theta: ``(n, d)`` or ``(d,)``.
            x: one observation ``x_shape`` or ``k`` i.i.d. ones ``(k, *x_shape)``.

        Returns:
            ``(n,)`` (0-d for a single ``theta``), CPU float32.
        """
        th, single = self._theta(theta)
        ll = self._summed_log_likelihood(th, self._observations(x)).cpu()
        return ll[0] if single else ll

    def log_prob(self, theta: Any, x: Any) -> Tensor:
        """Unnormalised posterior log density ``sum_i log q(x_i | theta) + log p(theta)``.

        The evidence is unknown, so this differs from ``log p(theta | x)`` by a constant
        (the same for every ``theta`` at a given ``x``); good for ratios and MCMC, not for
        comparing absolute values across observations.

        Args:
            theta: ``(n, d)`` or ``(d,)``.
            x: one observation ``x_shape`` or ``k`` i.i.d. ones ``(k, *x_shape)``.

        Returns:
            ``(n,)`` (0-d for a single ``theta``); ``-inf`` outside the prior support.
        """
        th, single = self._theta(theta)
        xs = self._observations(x)
        inside = self.prior.in_support(th)
        lp = torch.full((len(th),), -math.inf)
        if bool(inside.any()):
            lp[inside] = self._summed_log_likelihood(th[inside], xs).cpu() + self.prior.log_prob(th[inside]).float()
        return lp[0] if single else lp

    # -- sampling -----------------------------------------------------------------------
    def sample_mcmc(
        self,
        n: int,
        x: Any,
        seed: int | None = None,
        *,
        num_walkers: int | None = None,
        max_steps: int = 20_000,
        progress: bool = False,
    ) -> MCMCResult:
        """Run emcee on the learned likelihood and return samples with diagnostics.

        Args:
            n: samples to return.
            x: one observation ``x_shape`` or ``k`` i.i.d. ones ``(k, *x_shape)``.
            seed: makes the chain repeatable.
            num_walkers: ensemble size; default ``max(32, 4 d)``.
            max_steps: cap on the chain length (a warning says when the chain is shorter
                than 50 autocorrelation times); lower than for
                :func:`~sbikit.mcmc.reference_posterior` because every step evaluates the flow.
            progress: emcee's progress bar.

        Returns:
            An :class:`~sbikit.mcmc.MCMCResult` (``samples`` ``(n, d)``).
        """
        from sbikit.mcmc import sample_emcee  # emcee and scipy load on first use

        xs = self._observations(x)
        self._warn_if_atypical((xs - self.flow.y_shift) / self.flow.y_scale, stacklevel=2)

        def log_likelihood(theta: np.ndarray) -> np.ndarray:
            th = torch.from_numpy(np.ascontiguousarray(theta, dtype=np.float32))
            return self._summed_log_likelihood(th, xs).cpu().double().numpy()

        result = sample_emcee(
            log_likelihood,
            self.prior,
            n,
            num_walkers=num_walkers,
            seed=seed,
            max_steps=max_steps,
            progress=progress,
        )
        result.info["num_observations"] = len(xs)
        return result

    def sample(self, n: int, x: Any, seed: int | None = None, **mcmc_kwargs: Any) -> Tensor:
        """Draw posterior samples with emcee.

        Args:
            n: number of samples.
            x: one observation ``x_shape`` or ``k`` i.i.d. observations of the same
                ``theta`` ``(k, *x_shape)`` (log-likelihoods summed). Unlike NPE there is
                no batch of independent observations: sample each one separately.
            seed: makes the draws repeatable.
            **mcmc_kwargs: ``num_walkers``, ``max_steps``, ``progress`` of :meth:`sample_mcmc`.

        Returns:
            ``(n, d)`` CPU float32, inside the prior support.
        """
        return self.sample_mcmc(n, x, seed, **mcmc_kwargs).samples

    # -- persistence --------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able description from which :func:`sbikit.load` rebuilds the posterior."""
        return {
            "kind": "nle_posterior",
            "prior": self.prior.to_config(),
            "flow": self.flow.config.to_dict(),
            "x_shape": list(self.x_shape),
            "theta_names": self.theta_names,
        }

    @classmethod
    def from_saved(
        cls,
        config: dict[str, Any],
        state_dict: dict[str, Tensor],
        info: dict[str, Any],
        typicality: TypicalityCheck | None = None,
    ) -> NLEPosterior:
        """Rebuild from the parts of a saved file (used by :func:`sbikit.load`)."""
        from sbikit.flows import FlowConfig
        from sbikit.priors import prior_from_config

        prior = prior_from_config(config["prior"])
        flow = ConditionalFlow(FlowConfig.from_dict(config["flow"]), (prior.dim,))
        flow.load_state_dict(state_dict)
        return cls(
            flow,
            prior,
            tuple(config["x_shape"]),
            info=info,
            theta_names=config.get("theta_names"),
            typicality=typicality,
        )
