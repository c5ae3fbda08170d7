"""Contrastive compressors: SimCLR's NT-Xent loss (or VICReg) on pairs of views of the same theta.

Positive pairs are two augmentations of the same image (:class:`~sbikit.compressors.Augment`),
or two simulations with the same parameters (``fit(x, x_pair=...)``), optionally augmented
too. The encoder's output is the summary; a small projection head feeds the loss (SimCLR) and
is not part of the summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbikit.compressors.augment import Augment
from sbikit.compressors.base import Compressor
from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvEncoder
from sbikit.train import StreamingData

__all__ = ["Contrastive", "nt_xent", "vicreg", "contrastive_loss"]

LOSSES = ("ntxent", "vicreg")


def nt_xent(za: Tensor, zb: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's normalised temperature-scaled cross entropy for ``b`` positive pairs.

    The ``2b`` projections are L2-normalised; for each one the logits are its cosine
    similarities to the other ``2b - 1`` divided by ``temperature``, and the loss is the cross
    entropy of picking its partner, averaged over all ``2b``:
    ``l_i = -s_(i,p(i)) / t + log sum_(j != i) exp(s_ij / t)``.

    Args:
        za: projections of the first views ``(b, m)``.
        zb: projections of the second views ``(b, m)``; row ``i`` pairs with ``za[i]``.
        temperature: ``t > 0``.

    Returns:
        Scalar tensor.
    """
    if za.shape != zb.shape or za.ndim != 2:
        raise ValueError(f"za and zb must both have shape (b, m), got {tuple(za.shape)} and {tuple(zb.shape)}")
    b = za.shape[0]
    z = F.normalize(torch.cat([za, zb]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def vicreg(
    za: Tensor, zb: Tensor, *, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0
) -> Tensor:
    """VICReg (Bardes et al. 2022): invariance + variance + covariance regularisation.

    ``sim_weight * mse(za, zb) + var_weight * mean_j relu(1 - std_j) (both views)
    + cov_weight * sum_(i != j) cov_ij^2 / m (both views)``, with ``std`` including ``1e-4``.

    Args:
        za, zb: projections ``(b, m)``.

    Returns:
        Scalar tensor.
    """
    m = za.shape[1]
    inv = F.mse_loss(za, zb)
    var = 0.0
    cov = 0.0
    for z in (za, zb):
        z = z - z.mean(0)
        std = torch.sqrt(z.var(0) + 1e-4)
        var = var + F.relu(1.0 - std).mean()
        c = z.T @ z / max(len(z) - 1, 1)
        off = c - torch.diag(torch.diag(c))
        cov = cov + (off**2).sum() / m
    return sim_weight * inv + var_weight * var + cov_weight * cov


def contrastive_loss(model: Contrastive, xa: Tensor, xb: Tensor) -> Tensor:
    """Augment both views, encode, project and apply the model's loss (NT-Xent or VICReg)."""
    va = model.augment(model._standardize(xa)) if model.augment is not None else model._standardize(xa)
    vb = model.augment(model._standardize(xb)) if model.augment is not None else model._standardize(xb)
    pa, pb = model.projector(model.encoder(va)), model.projector(model.encoder(vb))
    if model.loss == "vicreg":
        return vicreg(pa, pb)
    return nt_xent(pa, pb, model.temperature)


def _augmented_pairs_loss(model: Contrastive, x: Tensor) -> Tensor:
    """:func:`contrastive_loss` of two augmentations of the same images ``(b, *x_shape)`` (a stream of ``x`` alone)."""
    return contrastive_loss(model, x, x)


def _pooled_moments(mean_a: float, std_a: float, mean_b: float, std_b: float, count: int) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1) of two samples of ``count`` values each, pooled (Chan's update)."""
    delta = mean_b - mean_a
    m2 = (std_a**2 + std_b**2) * (count - 1) + delta**2 * count / 2
    return mean_a + delta / 2, math.sqrt(m2 / max(2 * count - 1, 1))


class Contrastive(Compressor):
    """A CNN trained contrastively; :meth:`encode` returns its ``k`` summaries.

    Args:
        num_summaries: summary width ``k``.
        loss: ``"ntxent"`` (SimCLR) or ``"vicreg"``.
        temperature: NT-Xent temperature.
        augment: an :class:`Augment`, its dict, or ``None`` for no augmentation (then pairs
            must come from ``fit(x, x_pair=...)``). Default: 90-degree rotations and flips.
        projection_features: width of the projection head's output.
        channels: channels per encoder stage.
        x_shape: one image, ``(H, W)`` or ``(C, H, W)`` (``None``: from the data at :meth:`fit`).
    """

    def __init__(
        self,
        num_summaries: int = 8,
        *,
        loss: str = "ntxent",
        temperature: float = 0.1,
        augment: Augment | dict[str, Any] | None | str = "default",
        projection_features: int = 64,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        x_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(num_summaries, x_shape=x_shape)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if isinstance(augment, str):
            if augment != "default":
                raise ValueError(f"augment must be an Augment, a dict, None or 'default', got {augment!r}")
            augment = Augment()
        elif isinstance(augment, dict):
            augment = Augment(**augment)
        self.augment: Augment | None = augment
        self.loss = loss
        self.temperature = float(temperature)
        self.projection_features = int(projection_features)
        self.channels = tuple(int(c) for c in channels)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "temperature": self.temperature,
            "augment": None if self.augment is None else self.augment.to_dict(),
            "projection_features": self.projection_features,
            "channels": list(self.channels),
        }

    def _build(self) -> None:
        assert self.x_shape is not None and self.num_summaries is not None
        k, m = self.num_summaries, self.projection_features
        self.encoder = ConvEncoder(self.x_shape, k, channels=self.channels)
        self.projector = nn.Sequential(nn.Linear(k, 2 * m), nn.SiLU(), nn.Linear(2 * m, m))

    def fit(
        self,
        x: Any,
        theta: Any = None,
        *,
        x_pair: Any = None,
        seed: int | None = None,
        batch_size: int | None = 256,
        learning_rate: float = 1e-3,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str | torch.device = "auto",
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        memory_limit_gb: float | None = 4.0,
    ) -> Contrastive:
        """Train on positive pairs with :func:`sbikit.train.fit`.

        Args:
            x: images ``(n, *x_shape)``: numpy, torch, or an array on disk such as
                ``sbikit.open_store(path).x``.
            theta: ignored (pairs, not labels, carry the information); accepted for the
                common interface.
            x_pair: optional second simulations ``(n, *x_shape)`` with the same parameters as
                ``x`` row by row: the positive pairs are then ``(x[i], x_pair[i])`` (each view
                also augmented when ``augment`` is set). Without it the pairs are two
                augmentations of ``x[i]``. May be an array on disk too; with arrays on disk,
                rows where ``x`` or ``x_pair`` holds NaN or inf are dropped with a warning.
            seed: initial weights, augmentations, validation split and batch order.
            batch_size: pairs per step; NT-Xent contrasts each pair against the other
                ``2 (batch_size - 1)`` views, so larger batches give more negatives.
            learning_rate, max_epochs, validation_fraction, patience, progress: passed to
                :func:`sbikit.train.fit`.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            checkpoint: file written atomically after every epoch; with ``resume=True`` a
                killed fit continues from it (see :func:`sbikit.train.fit`).
            resume: continue from ``checkpoint`` when it exists.
            memory_limit_gb: arrays on disk larger than this (as float32, ``x`` and
                ``x_pair`` together) are streamed in shuffled buffers of chunks (the
                standardisation from one streaming pass) instead of read into memory; ``0``
                always streams, ``None`` never does.

        Returns:
            self.
        """
        if x_pair is None and self.augment is None:
            raise ValueError("with augment=None the positive pairs must be given: fit(x, x_pair=...)")
        arrays, streamed = self._fit_inputs({"x": x, "x_pair": x_pair}, memory_limit_gb=memory_limit_gb)
        x, x_pair = arrays["x"], arrays["x_pair"]
        loss_fn = contrastive_loss
        data: tuple[Tensor, Tensor] | StreamingData
        if streamed:
            pair = {} if x_pair is None else {"x_pair": (x_pair, None)}
            data = self._start_streamed_fit(x, pair, seed=seed)
            moments = self._streamed_moments(data, ["x", *pair], pooled=[True] * (1 + len(pair)), stacklevel=3)
            mean, std = float(moments[0][0]), float(moments[0][1])
            if x_pair is None:
                loss_fn = _augmented_pairs_loss  # the stream holds x alone; both views come from it
            else:  # one mean and scale for x and x_pair together, as in memory
                assert self.x_shape is not None
                count = moments[0][2] * math.prod(self.x_shape)
                mean, std = _pooled_moments(mean, std, float(moments[1][0]), float(moments[1][1]), count)
            self._set_standardization_values(mean, std)
        else:
            xt = self._start_fit(x, seed=seed)
            if x_pair is None:
                xb = xt
            else:
                xb, _ = self._check_x(x_pair, "x_pair")
                if len(xb) != len(xt):
                    raise ValueError(f"x_pair must have as many rows as x ({len(xt)}), got {len(xb)}")
            self._set_standardization(torch.cat([xt, xb]) if x_pair is not None else xt)
            data = (xt, xb)
        self._train(
            loss_fn,
            data,
            seed=seed,
            device=device,
            description=f"Contrastive ({self.loss})",
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
        )
        return self

    def _encode(self, xs: Tensor) -> Tensor:
        return self.encoder(xs)
