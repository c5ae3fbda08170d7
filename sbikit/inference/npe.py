"""Neural posterior estimation (NPE): a conditional flow for ``p(theta | x)``.

The estimator is :class:`NPE`; its loss is :func:`npe_loss`, the negative log density of
the training parameters under the flow. Parameters are mapped to R^d by the prior's
bijection before training (a scaled logit for box priors), so the flow never puts mass
outside the prior support and samples never need rejection.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbikit.flows import FLOW_KINDS, ConditionalFlow, build_flow
from sbikit.inference._store_data import pair_stream, standardize, training_inputs
from sbikit.inference.estimator import FlowEstimator
from sbikit.inference.posterior import FlowPosterior
from sbikit.inference.typicality import fit_typicality
from sbikit.priors import as_prior
from sbikit.train import StreamingData, default_batch_size, fit
from sbikit.utils import prepare_training_pairs

__all__ = [
    "NPE",
    "npe_loss",
    "npe_batch_size",
    "resolve_flow",
    "TrainingRecipe",
    "default_recipe",
    "cosine_epochs",
    "cosine_warmup",
    "COSINE_EPOCHS",
    "COSINE_PATIENCE",
    "DEFAULT_PATIENCE",
    "CONV_LEARNING_RATE",
    "MAF_LEARNING_RATE",
    "VECTOR_LEARNING_RATE",
    "NSF_LEARNING_RATE",
    "CONDITIONAL_AFFINE_KINDS",
    "MLP_EMBEDDING_KINDS",
    "resolve_embedding",
]

logger = logging.getLogger(__name__)

# Default learning rates: the peaks of the cosine schedules of NSF and MAF on vectors (batches
# of up to 512), and the initial rate of RealNVP or any flow trained jointly with a
# convolutional embedding (batches of up to 128, halved on plateaus).
#: NSF's peak when the moving average of the weights is validated and returned (NPE): over
#: training seeds 0-2, slcp C2ST 0.824 -> 0.810 and two_moons 0.570 -> 0.565 against 6e-3
#: (docs/defaults.md, fifth round).
NSF_LEARNING_RATE = 1e-2
#: NSF's peak without the weight average (``FlowDensity``): 1e-2 was 0.01 nats worse than
#: 6e-3 on two_moons there (third round).
VECTOR_LEARNING_RATE = 6e-3
MAF_LEARNING_RATE = 3e-3
CONV_LEARNING_RATE = 1e-3
#: Epochs of the cosine schedule (NSF and MAF) for 9,000 or more training rows (the training
#: budget; early stopping may end it sooner); smaller sets get more, see :func:`cosine_epochs`.
#: 50 was screened and rejected: on two_moons at 5 paired training seeds it was worse than 60
#: at every seed (mean C2ST 0.560 against 0.552; docs/defaults.md, thirteenth round).
COSINE_EPOCHS = 60
#: Early-stopping patience (epochs without a gain of ``min_delta``) of the cosine recipe with
#: the weight average: on the 112 recorded cosine runs of the tuning rounds, 12 returned the
#: same weights as 20 (the longest stall before a later best was 11 epochs, 7 with the
#: default settings) and ended slcp and gaussian_linear 15-17% sooner (docs/defaults.md,
#: thirteenth round).
COSINE_PATIENCE = 12
#: Early-stopping patience otherwise (the plateau recipe halves its rate after ``patience // 3``).
DEFAULT_PATIENCE = 20
#: Linear warm-up of the cosine schedule's learning rate, in epochs.
WARMUP_EPOCHS = 3.0
#: Decay per step of the moving average of the weights that the cosine recipe validates and
#: returns (Polyak averaging, ~100 steps, i.e. ~5 epochs of 512-row batches at 10^4
#: simulations): slcp's held-out loss 5.525 -> 5.303 nats at the same cost (docs/defaults.md).
EMA_DECAY = 0.99
#: ``flow="auto"`` picks the spline flow up to this many parameters and MAF above it: NSF
#: gave the lowest C2ST on two_moons, gaussian_mixture (2 parameters) and slcp (5), but
#: overfitted gaussian_linear's 10 parameters with 10^4 simulations (best validation loss
#: -0.49 nats at epoch 11 against MAF's -0.65; docs/defaults.md).
AUTO_NSF_MAX_DIM = 5
#: Conditioner width when ``hidden_features`` is not given, per flow kind.
DEFAULT_HIDDEN = {"nsf": 128, "maf": 64, "realnvp": 64}
#: Flow kinds that start with a :class:`sbikit.flows.ConditionalAffine` layer when
#: ``conditional_affine`` is not given (docs/defaults.md, fifth round).
CONDITIONAL_AFFINE_KINDS = ("nsf",)
#: Flow kinds whose ``embedding="auto"`` is a jointly trained :class:`sbikit.flows.MLPEmbedding`
#: for vector data (docs/defaults.md, sixth round); MAF and RealNVP read the flattened ``x``.
MLP_EMBEDDING_KINDS = ("nsf",)


@dataclass(frozen=True)
class TrainingRecipe:
    """How :meth:`NPE.fit` trains when the caller leaves a setting out.

    Attributes:
        batch_size: rows per optimiser step.
        learning_rate: initial (``"plateau"``) or peak (``"cosine"``) AdamW learning rate.
        schedule: ``"cosine"`` or ``"plateau"`` (see :func:`sbikit.train.fit`).
        max_epochs: epoch cap; for ``"cosine"`` also the length of the schedule.
        warmup_epochs: linear warm-up of the learning rate (``"cosine"`` only).
        ema_decay: decay per step of the validated moving average of the weights
            (:func:`sbikit.train.fit`'s ``ema_decay``); ``None``: the weights themselves.
        patience: epochs without a better validation loss before training stops.
    """

    batch_size: int
    learning_rate: float
    schedule: str
    max_epochs: int
    warmup_epochs: float = 0.0
    ema_decay: float | None = None
    patience: int = DEFAULT_PATIENCE


def cosine_epochs(num_train: int) -> int:
    """Length of the cosine schedule: ``ceil(150,000 / num_train)`` epochs, clipped to [60, 200].

    60 epochs suffice for 9,000 training rows (two_moons: held-out loss -0.961 nats, as low as
    122 epochs of the plateau schedule; 50 was worse at 5 of 5 paired seeds); with 900 rows,
    150 epochs reached -0.50 against -0.36 for 60 (docs/defaults.md): small sets need more
    passes for the same number of steps.

    Args:
        num_train: training rows (after the validation split).
    """
    return int(min(200, max(COSINE_EPOCHS, math.ceil(150_000 / max(num_train, 1)))))


def cosine_warmup(max_epochs: int) -> float:
    """Warm-up of a cosine schedule of ``max_epochs`` epochs: ``WARMUP_EPOCHS`` (3) from
    ``COSINE_EPOCHS`` (60) epochs on, proportionally shorter below.

    A warm-up longer than a short budget would never reach the peak rate. The full 3 epochs
    matter: with a 50-epoch schedule, a 2.5-epoch warm-up raised slcp's C2ST from 0.793 / 0.790
    (3 epochs) to 0.818 / 0.817 at training seeds 0 and 1 (docs/defaults.md, thirteenth round).

    Args:
        max_epochs: the schedule's length.
    """
    return float(min(WARMUP_EPOCHS, WARMUP_EPOCHS * max_epochs / COSINE_EPOCHS))


def default_recipe(
    flow_kind: str, num_train: int, *, conv_embedding: bool = False, weight_average: bool = True
) -> TrainingRecipe:
    """NPE's training defaults for a flow kind and a number of training rows.

    * NSF and MAF on vector data: batches of :func:`npe_batch_size` (512 for 10^4
      simulations), a linear warm-up over 3 epochs to 1e-2 (NSF) or 3e-3 (MAF), then a
      cosine decay to zero at epoch :func:`cosine_epochs` (60 for 10^4 simulations), early
      stopping after ``COSINE_PATIENCE`` (12) epochs without a gain; the weights validated,
      kept and returned are their moving average (``EMA_DECAY`` per step). With
      ``weight_average=False`` the raw weights are kept, NSF peaks at 6e-3 and the patience is
      ``DEFAULT_PATIENCE`` (20).
    * RealNVP, or any flow with a jointly trained convolutional embedding: batches of
      :func:`sbikit.train.default_batch_size` (128), 1e-3 halved on plateaus, up to 1000 epochs,
      patience ``DEFAULT_PATIENCE`` (20).

    docs/defaults.md has the measurements behind both.

    Args:
        flow_kind: ``"nsf"``, ``"maf"`` or ``"realnvp"``.
        num_train: training rows (after the validation split).
        conv_embedding: whether the embedding holds trainable convolutions.
        weight_average: whether the caller validates and returns the moving average of the
            weights (NPE does; ``FlowDensity`` does not).
    """
    if flow_kind in ("nsf", "maf") and not conv_embedding:
        if flow_kind == "nsf":
            peak = NSF_LEARNING_RATE if weight_average else VECTOR_LEARNING_RATE
        else:
            peak = MAF_LEARNING_RATE
        ema, patience = (EMA_DECAY, COSINE_PATIENCE) if weight_average else (None, DEFAULT_PATIENCE)
        epochs = cosine_epochs(num_train)
        return TrainingRecipe(npe_batch_size(num_train), peak, "cosine", epochs, WARMUP_EPOCHS, ema, patience)
    return TrainingRecipe(default_batch_size(num_train), CONV_LEARNING_RATE, "plateau", 1000, patience=DEFAULT_PATIENCE)


def npe_loss(flow: ConditionalFlow, u: Tensor, x: Tensor) -> Tensor:
    """Mean negative log density ``-log q(u | x)`` of a batch.

    Args:
        flow: the conditional flow.
        u: unconstrained parameters ``(b, d)``.
        x: observations ``(b, *x_shape)``.

    Returns:
        Scalar tensor.
    """
    return -flow.log_prob(u, x).mean()


def resolve_flow(flow: str, dim: int) -> str:
    """The flow kind ``NPE`` builds.

    Args:
        flow: ``"auto"``, ``"nsf"``, ``"maf"`` or ``"realnvp"`` (any case).
        dim: number of parameters.

    Returns:
        ``flow`` in lower case, or for ``"auto"`` ``"nsf"`` up to :data:`AUTO_NSF_MAX_DIM`
        parameters and ``"maf"`` above.

    Raises:
        ValueError: for an unknown flow name.
    """
    kind = flow.lower()
    if kind not in ("auto", *FLOW_KINDS):
        raise ValueError(f"flow must be one of {('auto', *FLOW_KINDS)}, got {flow!r}")
    if kind == "auto":
        return "nsf" if dim <= AUTO_NSF_MAX_DIM else "maf"
    return kind


def resolve_embedding(embedding: Any, flow_kind: str, x_shape: tuple[int, ...]) -> Any:
    """NPE's ``embedding=`` with ``"auto"`` resolved.

    Args:
        embedding: what the user passed (``"auto"``, ``None``, ``"mlp"``, ``"cnn"``, a module
            or a fitted compressor).
        flow_kind: the resolved flow kind.
        x_shape: shape of one observation.

    Returns:
        ``embedding`` unchanged unless it is ``"auto"`` (any case): then ``"mlp"`` for vector
        data ``x_shape = (k,)`` and a flow kind in :data:`MLP_EMBEDDING_KINDS`, else ``None``
        (the flattened ``x``; images need an explicit ``"cnn"`` or compressor).
    """
    if isinstance(embedding, str) and embedding.lower() == "auto":
        return "mlp" if flow_kind in MLP_EMBEDDING_KINDS and len(x_shape) == 1 else None
    return embedding


def npe_batch_size(num_train: int) -> int:
    """Default NSF and MAF batch: 512 rows, fewer for small data (at least ~16 steps an epoch, min 32).

    With a learning rate of 3e-3 or more, batches of 512 reached the same or lower C2ST
    than batches of 128 at 1e-3 on two_moons, slcp and gaussian_mixture with 10^4
    simulations, in about 1/3 of the CPU time (docs/defaults.md).
    """
    return int(max(32, min(512, num_train // 16)))


def _has_trainable_conv(module: nn.Module | None) -> bool:
    """Whether ``module`` holds a convolution with trainable weights (a jointly trained CNN)."""
    if module is None:
        return False
    return any(
        isinstance(m, nn.modules.conv._ConvNd) and any(p.requires_grad for p in m.parameters())
        for m in module.modules()
    )


class NPE(FlowEstimator):
    """Neural posterior estimation with a conditional normalizing flow.

    Args:
        prior: an sbikit prior, a ``torch.distributions`` distribution or sbi's ``BoxUniform``.
        flow: ``"auto"`` (default), ``"nsf"`` (rational-quadratic spline autoregressive
            layers), ``"maf"`` or ``"realnvp"``. ``"auto"`` is NSF for up to 5 parameters
            (the lowest C2ST on two_moons, gaussian_mixture and slcp; MAF's posteriors are
            visibly worse on such non-Gaussian problems) and MAF above (NSF overfitted
            10-parameter gaussian_linear); docs/defaults.md has the numbers.
        embedding: ``"auto"`` (default): for NSF on vector data a
            :class:`sbikit.flows.MLPEmbedding` (``[x, MLP(x)]``, 32 learned features,
            two hidden layers of ``hidden_features``) trained jointly with the flow, so that
            every layer reads the same learned features of ``x`` (slcp's held-out loss ~0.2
            nats lower; docs/defaults.md); otherwise the flattened ``x``. ``"mlp"`` asks
            for that embedding with any flow; ``None`` flattens ``x``. Or an ``nn.Module``
            mapping ``(n, *x_shape)`` to ``(n, k)``, trained jointly with the flow.
            ``"cnn"`` builds a default convolutional encoder for images ``(H, W)`` or
            ``(C, H, W)`` (``max(8, 4 d)`` summaries, :class:`sbikit.compressors.ConvEncoder`),
            also trained jointly. A fitted :class:`sbikit.compressors.Compressor` is used
            frozen (no gradient, eval mode, fed the raw ``x``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        hidden_features: width of the flow's conditioner networks; ``None``: 128 for NSF,
            64 for MAF and RealNVP.
        num_transforms: number of flow layers.
        num_bins: spline bins (``nsf`` only).
        num_blocks: hidden layers after the first in each conditioner (with one instead of
            two, slcp's held-out log density was 0.5-0.6 nats worse; docs/defaults.md).
        conditional_affine: start the flow with a :class:`sbikit.flows.ConditionalAffine`
            layer (a shift and scale of the parameters computed from ``x``, which centres
            and scales each posterior before the other layers); ``None``: on for NSF
            (``CONDITIONAL_AFFINE_KINDS``), off otherwise.
        theta_names: optional parameter names carried by the posterior.
    """

    def __init__(
        self,
        prior: Any,
        flow: str = "auto",
        embedding: nn.Module | str | None = "auto",
        device: str | torch.device = "auto",
        *,
        hidden_features: int | None = None,
        num_transforms: int = 5,
        num_bins: int = 8,
        num_blocks: int = 2,
        conditional_affine: bool | None = None,
        theta_names: list[str] | None = None,
    ) -> None:
        prior = as_prior(prior)
        flow = resolve_flow(flow, prior.dim)
        if hidden_features is None:
            hidden_features = DEFAULT_HIDDEN.get(flow, 64)
        if conditional_affine is None:
            conditional_affine = flow in CONDITIONAL_AFFINE_KINDS
        super().__init__(
            prior,
            flow,
            device,
            hidden_features=hidden_features,
            num_transforms=num_transforms,
            num_bins=num_bins,
            num_blocks=num_blocks,
            theta_names=theta_names,
        )
        self.embedding = embedding
        self.conditional_affine = bool(conditional_affine)

    def fit(
        self,
        theta: Any,
        x: Any,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        max_epochs: int | None = None,
        schedule: str | None = None,
        validation_fraction: float = 0.1,
        patience: int | None = None,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> FlowPosterior:
        """Train on simulated pairs and return the posterior.

        Args:
            theta: parameters ``(n, d)`` (numpy or torch), inside the prior support; or an
                array on disk such as ``sbikit.open_store(path).theta``.
            x: simulations ``(n, *x_shape)``; rows with NaN or inf are dropped with a warning.
                Or an array on disk such as ``sbikit.open_store(path).x``.
            seed: makes initialisation, validation split and batch order repeatable.
            batch_size: ``None`` takes :func:`default_recipe`'s: :func:`npe_batch_size`
                (512 rows, fewer for small data so that an epoch has at least ~16 steps, min
                32) for NSF and MAF; for RealNVP or a jointly trained convolutional embedding
                (``embedding="cnn"`` or any module with trainable convolutions)
                :func:`sbikit.train.default_batch_size` (128 rows) instead: the CNN needs many
                more optimiser steps than a flow on vectors (docs/defaults.md and
                docs/compressors.md have the measurements).
            learning_rate: AdamW learning rate (the peak of a cosine schedule, the start of
                a plateau one); ``None``: 1e-2 for NSF, 3e-3 for MAF, 1e-3 for RealNVP or a
                jointly trained CNN.
            max_epochs: cap on epochs, and the length of a cosine schedule; ``None``:
                :func:`cosine_epochs` for NSF and MAF (cosine; 60 for 10^4 simulations),
                1000 otherwise (plateau).
            schedule: ``"cosine"`` (3 warm-up epochs, then a half cosine to ``max_epochs``)
                or ``"plateau"`` (halve the rate after ``patience // 3`` epochs without a
                gain); ``None``: cosine for NSF and MAF on vectors, plateau otherwise.
            validation_fraction: share held out for early stopping.
            patience: epochs without improvement before stopping; ``None``: 12
                (``COSINE_PATIENCE``) with the cosine schedule and the weight average (NSF and
                MAF), 20 otherwise.
            progress: show a progress bar.
            checkpoint: file to save the training state to after every epoch (atomically).
            resume: continue from ``checkpoint`` if it exists (see :func:`sbikit.train.fit`).
            memory_limit_gb: arrays on disk larger than this (as float32) are streamed in
                shuffled chunk-batches instead of read into memory, and the z-scoring
                statistics are computed in one streaming pass; ``0`` always streams.

        Returns:
            A :class:`~sbikit.inference.posterior.FlowPosterior` on ``self.device``.

        Raises:
            ValueError: ``theta`` is the parameter array of a store simulated with
                ``edge_fraction > 0`` (an emulator's design, not prior draws), besides the
                shape, support and NaN checks of the inputs.
        """
        _refuse_design_parameters(theta)
        theta, x, streamed = training_inputs(theta, x, memory_limit_gb=memory_limit_gb)
        data: tuple[Tensor, Tensor] | StreamingData
        if streamed:
            data, x_shape = pair_stream(self.prior, theta, x, self._unconstrained_pairs)
        else:
            th, xt = prepare_training_pairs(self.prior, theta, x)  # warns at the user's fit()
            x_shape = tuple(xt.shape[1:])
            data = tuple(self._unconstrained_pairs(th, xt))
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            # A copy, so that every fit starts from the embedding as the user gave it.
            from sbikit.compressors.cnn import make_embedding  # "cnn", nn.Module or frozen Compressor

            spec = resolve_embedding(self.embedding, self.flow_kind, x_shape)
            embedding = make_embedding(
                copy.deepcopy(spec), x_shape, self.prior.dim, hidden_features=self.hidden_features
            )
            flow = build_flow(
                self.flow_kind,
                self.prior.dim,
                x_shape,
                embedding=embedding,
                hidden_features=self.hidden_features,
                num_transforms=self.num_transforms,
                num_bins=self.num_bins,
                num_blocks=self.num_blocks,
                conditional_affine=self.conditional_affine,
            )
        num_rows = standardize(flow, data)
        if getattr(flow.embedding, "takes_raw_input", False):  # a frozen compressor z-scores x itself
            flow.c_shift.zero_()
            flow.c_scale.fill_(1.0)
        conv = _has_trainable_conv(embedding)
        total = data.num_rows if isinstance(data, StreamingData) else len(data[0])
        num_train = total - max(1, int(round(total * validation_fraction)))
        # The large-batch, high-rate cosine recipe was tuned for NSF and MAF on vectors (docs/defaults.md).
        recipe = default_recipe(self.flow_kind, num_train, conv_embedding=conv)
        schedule = recipe.schedule if schedule is None else schedule
        max_epochs = recipe.max_epochs if max_epochs is None else max_epochs
        ema_decay = recipe.ema_decay if schedule == "cosine" else None  # screened with the cosine only
        if patience is None:  # the recipe's patience was checked with its averaged cosine schedule only
            patience = recipe.patience if ema_decay is not None else DEFAULT_PATIENCE
        used = TrainingRecipe(
            batch_size=recipe.batch_size if batch_size is None else batch_size,
            learning_rate=recipe.learning_rate if learning_rate is None else learning_rate,
            schedule=schedule,
            max_epochs=max_epochs,
            warmup_epochs=cosine_warmup(max_epochs) if schedule == "cosine" else 0.0,
            ema_decay=ema_decay,
            patience=patience,
        )
        logger.debug("NPE (%s) training recipe: %s", self.flow_kind, used)
        result = fit(
            flow,
            npe_loss,
            data,
            seed=seed,
            batch_size=used.batch_size,
            learning_rate=used.learning_rate,
            max_epochs=used.max_epochs,
            schedule=used.schedule,
            warmup_epochs=used.warmup_epochs,
            ema_decay=used.ema_decay,
            validation_fraction=validation_fraction,
            patience=used.patience,
            device=self.device,
            progress=progress,
            description=f"NPE ({self.flow_kind})",
            checkpoint=checkpoint,
            resume=resume,
        )
        info = {"method": "NPE", "num_simulations": num_rows, "recipe": asdict(used), **result.to_dict()}
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError("training diverged: the validation loss is not finite")
        # A learned embedding may drop what the check should see (the noise level): append the
        # residual of a PCA of the raw x (docs/misspecification.md).
        typicality = fit_typicality(
            flow,
            data,
            column=1,
            summarize=lambda rows: flow.typicality_summaries(flow.embed(rows)),
            seed=seed,
            append_residual=not flow.embedding_passes_x,
        )
        return FlowPosterior(flow, self.prior, x_shape, info=info, theta_names=self.theta_names, typicality=typicality)

    def _unconstrained_pairs(self, theta: Tensor, x: Tensor) -> list[Tensor]:
        """``[u, x]``: ``theta`` ``(n, d)`` mapped to R^d by the prior's bijection, and ``x``."""
        u = self.prior.to_unconstrained(theta.double()).float()
        if not bool(torch.isfinite(u).all()):
            raise ValueError("theta lies too close to a prior bound to be transformed; check the prior support")
        return [u, x]


def _refuse_design_parameters(theta: Any) -> None:
    """Raise when ``theta`` is a store's parameter array drawn with ``edge_fraction > 0``.

    NPE's target ``p(theta | x)`` is defined by the distribution the training ``theta`` are
    drawn from, which must be the prior; an edge-weighted design (for emulators and NLE)
    would bias the posterior toward the prior's bounds.
    """
    attrs = getattr(theta, "attrs", None)
    try:
        fraction = float(attrs.get("edge_fraction", 0.0) or 0.0) if attrs is not None else 0.0
    except (AttributeError, TypeError, ValueError):
        return
    if fraction > 0:
        raise ValueError(
            f"these parameters were simulated with edge_fraction={fraction} (sbikit.simulate's design for "
            "emulators), not drawn from the prior: NPE needs prior draws, or its posterior leans toward the "
            "prior's bounds; simulate a store with edge_fraction=0 for NPE (NLE and emulators may use this one)"
        )
