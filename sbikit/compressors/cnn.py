"""The small convolutional encoder and decoder shared by the compressors, and NPE's ``embedding="cnn"``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ConvEncoder", "ConvDecoder", "image_channels", "make_embedding", "DEFAULT_CHANNELS", "POOLINGS"]

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64)
POOLINGS: tuple[str, ...] = ("power", "mean", "flatten")
# Added to mean squares before the log of ``pooling="power"`` (inputs are z-scored, so O(1)).
_POWER_EPS = 1e-6


def image_channels(x_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W)`` or ``(C, H, W)`` -> ``(C, H, W)``.

    Raises:
        ValueError: for any other number of dimensions.
    """
    shape = tuple(int(s) for s in x_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(
        f"convolutional networks need images of shape (H, W) or (C, H, W) per data set, got x_shape={shape}; "
        "use PCA or a custom embedding for vector data"
    )


def _as_4d(x: Tensor, chw: tuple[int, int, int]) -> Tensor:
    return x.reshape(x.shape[0], *chw)


class ConvEncoder(nn.Module):
    """Images -> features: per stage a 3x3 convolution and a stride-2 3x3 convolution (SiLU).

    After ``len(channels)`` stages (each halving the side, rounding up) the feature maps are
    pooled and an MLP maps them to ``out_features``. Poolings:

    * ``"power"`` (default): the spatial mean of the last feature maps plus, for every convolution,
      the log of the spatial mean of its squared (pre-activation) output per channel:
      ``log(mean_(h,w) conv(x)^2 + 1e-6)``. These are learned band powers at every scale,
      the statistics that carry the information of stationary fields (the GRF's power
      spectrum amplitude and slope); translation invariant. ``sum(channels) * 2`` extra
      features. On the GRF it removed the plateau at the start of training that mean
      pooling shows and gave lower losses (docs/compressors.md).
    * ``"mean"``: the spatial mean of the last feature maps only (translation invariant).
    * ``"flatten"``: the last feature maps flattened (keeps positions).

    Args:
        x_shape: one image, ``(H, W)`` or ``(C, H, W)``.
        out_features: output width ``k``.
        channels: channels per stage.
        hidden_features: width of the MLP head.
        pooling: ``"power"``, ``"mean"`` or ``"flatten"``.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        out_features: int,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        hidden_features: int = 128,
        pooling: str = "power",
    ) -> None:
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.chw = image_channels(self.x_shape)
        self.out_features = int(out_features)
        self.channels = tuple(int(c) for c in channels)
        self.hidden_features = int(hidden_features)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not self.channels:
            raise ValueError("channels needs at least one stage")
        self.pooling = pooling
        layers: list[nn.Module] = []
        c_in, h, w = self.chw
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU()]
            c_in, h, w = c, math.ceil(h / 2), math.ceil(w / 2)
        self.features = nn.Sequential(*layers)
        flat = {"mean": c_in, "power": c_in + 2 * sum(self.channels), "flatten": c_in * h * w}[pooling]
        self.head = nn.Sequential(
            nn.Linear(flat, self.hidden_features), nn.SiLU(), nn.Linear(self.hidden_features, self.out_features)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(b, *x_shape)`` -> ``(b, out_features)``."""
        f = _as_4d(x, self.chw)
        if self.pooling != "power":
            f = self.features(f)
            return self.head(f.mean(dim=(-2, -1)) if self.pooling == "mean" else f.flatten(1))
        pooled = []
        for layer in self.features:
            f = layer(f)
            if isinstance(layer, nn.Conv2d):  # band power of every filter, (b, c)
                pooled.append(torch.log(f.square().mean(dim=(-2, -1)) + _POWER_EPS))
        pooled.append(f.mean(dim=(-2, -1)))
        return self.head(torch.cat(pooled, dim=1))

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments, so a saved posterior can rebuild this embedding."""
        return {
            "x_shape": list(self.x_shape),
            "out_features": self.out_features,
            "channels": list(self.channels),
            "hidden_features": self.hidden_features,
            "pooling": self.pooling,
        }


class ConvDecoder(nn.Module):
    """Features -> images, mirroring :class:`ConvEncoder`: a linear map to a small grid, then per
    stage a nearest-neighbour 2x upsampling and a 3x3 convolution (SiLU), a last 3x3 convolution
    to the image channels, and a crop to ``(H, W)``.

    Args:
        in_features: input width.
        x_shape: the image shape to produce, ``(H, W)`` or ``(C, H, W)``.
        channels: channels per stage (used in reverse order).
    """

    def __init__(self, in_features: int, x_shape: Sequence[int], *, channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.chw = image_channels(self.x_shape)
        chans = tuple(int(c) for c in channels)[::-1]
        c, h, w = self.chw
        levels = len(chans)
        self.grid = (chans[0], math.ceil(h / 2**levels), math.ceil(w / 2**levels))
        self.linear = nn.Linear(int(in_features), math.prod(self.grid))
        layers: list[nn.Module] = [nn.SiLU()]
        c_in = chans[0]
        for c_out in (*chans[1:], chans[-1]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, c, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``(b, in_features)`` -> ``(b, *x_shape)``."""
        out = self.net(self.linear(z).reshape(z.shape[0], *self.grid))
        _, h, w = self.chw
        return out[..., :h, :w].reshape(z.shape[0], *self.x_shape)


def make_embedding(
    embedding: Any, x_shape: tuple[int, ...], num_parameters: int, *, hidden_features: int = 128
) -> nn.Module | None:
    """Resolve NPE's ``embedding=`` argument into a module (or ``None`` to flatten ``x``).

    Args:
        embedding: ``None``, ``"cnn"`` (a :class:`ConvEncoder` trained jointly with the flow),
            ``"mlp"`` (a :class:`sbikit.flows.MLPEmbedding` of the flattened ``x``,
            trained jointly), an ``nn.Module`` (trained jointly), or a fitted
            :class:`~sbikit.compressors.Compressor` (frozen). ``"auto"`` is resolved by
            :class:`sbikit.NPE` before this is called.
        x_shape: shape of one observation.
        num_parameters: ``d``; the CNN gives ``max(8, 4 d)`` summaries.
        hidden_features: width of the ``"mlp"`` embedding's hidden layers.

    Returns:
        A fresh module (a copy for user modules is made by the caller).

    Raises:
        ValueError: for an unknown string or a CNN on non-image data.
        TypeError: for anything else.
    """
    from sbikit.compressors.base import Compressor, FrozenEmbedding

    if embedding is None or isinstance(embedding, nn.Module) and not isinstance(embedding, Compressor):
        return embedding
    if isinstance(embedding, Compressor):
        if embedding.x_shape is not None and tuple(embedding.x_shape) != tuple(x_shape):
            raise ValueError(
                f"the compressor was fitted on x_shape={embedding.x_shape} but x has shape {tuple(x_shape)}"
            )
        return FrozenEmbedding(embedding)
    if isinstance(embedding, str):
        if embedding.lower() == "cnn":
            return ConvEncoder(x_shape, max(8, 4 * int(num_parameters)))
        if embedding.lower() == "mlp":
            from sbikit.flows import MLPEmbedding

            return MLPEmbedding(int(math.prod(x_shape)), hidden_features=hidden_features)
        raise ValueError(
            f"embedding must be None, 'auto', 'mlp', 'cnn', an nn.Module or a fitted Compressor, got {embedding!r}"
        )
    raise TypeError(
        "embedding must be None, 'auto', 'mlp', 'cnn', an nn.Module or a fitted Compressor, got "
        f"{type(embedding).__name__}"
    )
