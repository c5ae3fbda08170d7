"""An unconditional normalizing-flow density ``p(z)`` on vectors, with a density threshold.

:class:`FlowDensity` is sbikit's conditional flow (:mod:`sbikit.flows`) given one constant
context entry, so that it models ``p(z)`` alone; inputs are z-scored per feature from the
training data, and it is trained by :func:`sbikit.train.fit` with NPE's recipe for vector
data. As an :class:`~sbikit.density.anomaly.AnomalyScore` its score is ``-log p(z)``:
after ``calibrate(z_normal, false_positive_rate=0.05)`` an input is anomalous when
``p(z) < epsilon = exp(-threshold)``.

>>> density = FlowDensity().fit(z_train, seed=0)        # z: (n, k) summaries
>>> density.calibrate(z_held_out, false_positive_rate=0.01)
>>> flags = density.is_anomalous(z_new)                   # bool (m,)
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sbikit.density.anomaly import _FORMAT_VERSION, AnomalyScore
from sbikit.flows import ConditionalFlow, FlowConfig, build_flow
from sbikit.priors import make_generator
from sbikit.train import FitResult, fit
from sbikit.utils import as_float_tensor, load_payload, resolve_device, save_payload

if TYPE_CHECKING:
    from sbikit.inference.npe import TrainingRecipe

__all__ = ["FlowDensity", "load_density", "flow_density_loss"]

logger = logging.getLogger(__name__)

_FORMAT = "sbikit-density"
_CHUNK = 65_536


def _npe() -> ModuleType:
    """NPE's module, for its flow choice and training recipe (imported late: sbikit.inference
    imports sbikit.density, so a module-level import would be circular)."""
    import sbikit.inference.npe as npe

    return npe


def _context(z: Tensor) -> Tensor:
    """The constant context ``(b, 1)`` of zeros that makes the conditional flow unconditional."""
    return z.new_zeros(len(z), 1)


def flow_density_loss(flow: ConditionalFlow, z: Tensor) -> Tensor:
    """Mean negative log density ``-log p(z)`` of a batch ``z`` ``(b, k)``."""
    return -flow.log_prob(z, _context(z)).mean()


class FlowDensity(AnomalyScore):
    """A normalizing flow ``p(z)`` for vectors ``z`` ``(n, k)``; score ``-log p(z)``.

    Args:
        flow: ``"auto"`` (NSF up to 5 features, MAF above, as in :class:`sbikit.NPE`),
            ``"nsf"``, ``"maf"`` or ``"realnvp"`` (``k >= 2``).
        hidden_features: conditioner width; ``None``: 128 for NSF, 64 otherwise.
        num_transforms: flow layers.
        num_blocks: hidden layers per conditioner after the first.
        num_bins: spline bins (NSF).
        tail_bound: the splines act on ``[-tail_bound, tail_bound]`` standard deviations and
            are linear outside, so far outliers keep a finite, small density (NSF).

    Attributes:
        flow: the trained :class:`~sbikit.flows.ConditionalFlow` (``None`` before :meth:`fit`).
        history: the :class:`~sbikit.train.FitResult` of the fit.
    """

    def __init__(
        self,
        flow: str = "auto",
        *,
        hidden_features: int | None = None,
        num_transforms: int = 5,
        num_blocks: int = 2,
        num_bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        _npe().resolve_flow(flow, 2)  # validates the name
        self.flow_kind = flow.lower()
        self.hidden_features = hidden_features
        self.num_transforms = int(num_transforms)
        self.num_blocks = int(num_blocks)
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.flow: ConditionalFlow | None = None
        self.history: FitResult | None = None
        self.recipe: TrainingRecipe | None = None

    # -- inputs ---------------------------------------------------------------------------
    @property
    def features(self) -> int | None:
        """``k``, the dimension of ``z`` (``None`` before :meth:`fit`)."""
        return None if self.flow is None else int(self.flow.config.features)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.flow is None else self.flow.y_shift.device

    def _check(self, z: Any, name: str = "z") -> Tensor:
        t = as_float_tensor(z, name)
        k = self.features
        if t.ndim == 1:
            t = t[:, None] if k in (None, 1) else t[None]
        if t.ndim != 2 or (k is not None and t.shape[1] != k):
            want = "(n, k)" if k is None else f"(n, {k})"
            raise ValueError(f"{name} must have shape {want}, got {tuple(as_float_tensor(z, name).shape)}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t).all(1)).sum())
            raise ValueError(f"{name} holds NaN or inf in {bad} of {len(t)} rows")
        return t

    def _require_fit(self) -> ConditionalFlow:
        if self.flow is None:
            raise RuntimeError("FlowDensity is not fitted: call fit(z) first")
        return self.flow

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        z: Any,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        max_epochs: int | None = None,
        schedule: str | None = None,
        validation_fraction: float = 0.1,
        patience: int = 20,
        device: str | torch.device = "auto",
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
    ) -> FlowDensity:
        """Fit ``p(z)`` by maximum likelihood with :func:`sbikit.train.fit`.

        Args:
            z: samples ``(n, k)`` (``(n,)`` for ``k = 1``), ``n >= 2``.
            seed: initial weights, validation split and batch order.
            batch_size, learning_rate, max_epochs, schedule: ``None`` takes NPE's recipe for
                vector data (:func:`sbikit.inference.npe.default_recipe`): batches of up to
                512, a cosine schedule peaking at 6e-3 (NSF) or 3e-3 (MAF), 60-200 epochs.
            validation_fraction, patience, progress: passed to :func:`sbikit.train.fit`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            checkpoint: file written atomically after every epoch; ``resume=True`` continues it.
            resume: continue from ``checkpoint`` when it exists.

        Returns:
            self; any earlier threshold is cleared.
        """
        self.flow = None
        zt = self._check(z)
        if len(zt) < 2:
            raise ValueError(f"fit needs at least 2 samples, got {len(zt)}")
        k = int(zt.shape[1])
        npe = _npe()
        kind = npe.resolve_flow(self.flow_kind, k)
        hidden = self.hidden_features if self.hidden_features is not None else npe.DEFAULT_HIDDEN.get(kind, 64)
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            flow = build_flow(
                kind,
                k,
                (1,),
                context_features=1,
                hidden_features=hidden,
                num_transforms=self.num_transforms,
                num_blocks=self.num_blocks,
                num_bins=self.num_bins,
                tail_bound=self.tail_bound,
            )
        flow.set_standardization(zt, _context(zt))
        num_train = len(zt) - max(1, int(round(len(zt) * validation_fraction)))
        base = npe.default_recipe(kind, num_train, weight_average=False)
        schedule = base.schedule if schedule is None else schedule
        epochs = base.max_epochs if max_epochs is None else int(max_epochs)
        recipe = npe.TrainingRecipe(
            batch_size=base.batch_size if batch_size is None else int(batch_size),
            learning_rate=base.learning_rate if learning_rate is None else float(learning_rate),
            schedule=schedule,
            max_epochs=epochs,
            warmup_epochs=npe.cosine_warmup(epochs) if schedule == "cosine" else 0.0,
        )
        result = fit(
            flow,
            flow_density_loss,
            (zt,),
            seed=seed,
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            max_epochs=recipe.max_epochs,
            schedule=recipe.schedule,
            warmup_epochs=recipe.warmup_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            device=dev,
            progress=progress,
            description=f"FlowDensity ({kind})",
            checkpoint=checkpoint,
            resume=resume,
        )
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError("FlowDensity: training diverged (the validation loss is not finite)")
        self.flow = flow.eval()
        self.history = result
        self.recipe = recipe
        self.threshold = self.false_positive_rate = self.num_calibration = None
        logger.info("FlowDensity (%s, k=%d): best validation -log p %.4g", kind, k, result.best_val_loss)
        return self

    # -- density -------------------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, z: Any) -> Tensor:
        """``log p(z)`` of ``z`` ``(n, k)`` (or one row ``(k,)``) -> ``(n,)`` float32 CPU."""
        flow = self._require_fit()
        zt = self._check(z)
        flow.eval()
        out = [
            flow.log_prob(c, _context(c)).cpu()
            for c in (zt[i : i + _CHUNK].to(self.device) for i in range(0, len(zt), _CHUNK))
        ]
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, z: Any) -> Tensor:
        """``-log p(z)`` ``(n,)``: higher = less probable = more anomalous."""
        return -self.log_prob(z)

    @property
    def epsilon(self) -> float:
        """The density threshold ``exp(-threshold)``: ``z`` is anomalous when ``p(z) < epsilon``."""
        self._require_calibrated()
        assert self.threshold is not None
        return math.exp(-self.threshold)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws from ``p(z)`` -> ``(n, k)`` float32 CPU (same seed, same draws)."""
        flow = self._require_fit()
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        gen = make_generator(seed, self.device)
        ctx = torch.zeros(1, 1, device=self.device)
        emb = flow.embed(ctx)
        parts = [
            flow.sample_embedded(min(_CHUNK, int(n) - i), emb, generator=gen)[0].cpu() for i in range(0, int(n), _CHUNK)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, self.features or 0)

    def to(self, device: str | torch.device) -> FlowDensity:
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``) in place; returns self."""
        self._require_fit().to(resolve_device(device))
        return self

    # -- persistence ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-able)."""
        return {
            "flow": self.flow_kind,
            "hidden_features": self.hidden_features,
            "num_transforms": self.num_transforms,
            "num_blocks": self.num_blocks,
            "num_bins": self.num_bins,
            "tail_bound": self.tail_bound,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the flow, its settings and the threshold to ``path`` atomically."""
        flow = self._require_fit()
        cls = type(self)
        config = {
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "kwargs": self.get_config(),
            "flow_config": flow.config.to_dict(),
            "recipe": None if self.recipe is None else asdict(self.recipe),
            **self._threshold_state(),
        }
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": json.dumps(config),
            "history": json.dumps(self.history.to_dict() if self.history is not None else None),
            "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
        }
        return save_payload(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FlowDensity:
        """Load a density written by :meth:`save` (same as :func:`load_density`)."""
        return load_density(path, device=device)

    def __repr__(self) -> str:
        return (
            f"FlowDensity(flow={self.flow_kind}, features={self.features}, "
            f"fitted={self.flow is not None}, threshold={self.threshold})"
        )


def load_density(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FlowDensity:
    """Load a :class:`FlowDensity` written by :meth:`FlowDensity.save` (read as weights only).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an sbikit density file, or names a class that is not
            a :class:`FlowDensity`.
    """
    payload = load_payload(path, fmt=_FORMAT, version=_FORMAT_VERSION, what="density")
    cfg = json.loads(payload["config"])
    module_name, _, qualname = str(cfg.get("class", "")).partition(":")
    obj: Any = importlib.import_module(module_name) if module_name else None
    for part in qualname.split(".") if qualname else []:
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, FlowDensity)):
        raise ValueError(f"{path} names {cfg.get('class')!r}, not a FlowDensity class; refusing to build it")
    density = obj(**cfg["kwargs"])
    flow_cfg = FlowConfig.from_dict(cfg["flow_config"])
    flow = ConditionalFlow(flow_cfg, (1,))
    flow.load_state_dict(payload["state_dict"])
    density.flow = flow.eval().to(resolve_device(device))
    if cfg.get("recipe") is not None:
        density.recipe = _npe().TrainingRecipe(**cfg["recipe"])
    density._set_threshold_state(cfg)
    history = json.loads(payload.get("history") or "null")
    if history is not None:
        density.history = FitResult(**{k: v for k, v in history.items() if k in FitResult.__dataclass_fields__})
    return density
