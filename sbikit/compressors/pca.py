"""Principal component analysis: the linear compressor, fitted in closed form by an SVD."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from sbikit.compressors.base import Compressor
from sbikit.utils import resolve_device

__all__ = ["PCA"]

logger = logging.getLogger(__name__)


class PCA(Compressor):
    """Projection on the leading principal components of the flattened data.

    ``encode(x) = (x_flat - mean) @ components.T`` and, with ``whiten=True`` (default),
    divided by the components' standard deviations, so the summaries of the training data
    have unit covariance.

    Args:
        num_summaries: number of components ``k``.
        whiten: scale each component to unit variance.
        x_shape: shape of one data set (``None``: taken from the data at :meth:`fit`).
    """

    def __init__(
        self, num_summaries: int = 8, *, whiten: bool = True, x_shape: tuple[int, ...] | list[int] | None = None
    ) -> None:
        super().__init__(num_summaries, x_shape=x_shape)
        self.whiten = bool(whiten)
        self._maybe_build()

    def _config(self) -> dict[str, Any]:
        return {"whiten": self.whiten}

    def _build(self) -> None:
        assert self.x_shape is not None and self.num_summaries is not None
        dim = math.prod(self.x_shape)
        if self.num_summaries > dim:
            raise ValueError(f"num_summaries={self.num_summaries} exceeds the data dimension {dim}")
        dev = self.x_shift.device
        self.register_buffer("mean", torch.zeros(dim, device=dev))
        self.register_buffer("components", torch.zeros(self.num_summaries, dim, device=dev))
        self.register_buffer("component_std", torch.ones(self.num_summaries, device=dev))

    def fit(self, x: Any, theta: Any = None, *, seed: int | None = None, device: str | torch.device = "auto") -> PCA:
        """Fit by a float64 SVD of the centred data.

        Args:
            x: ``(n, *x_shape)`` with ``n >= 2``.
            theta: ignored (PCA is unsupervised); accepted for the common interface.
            seed: unused (the SVD is deterministic up to the sign convention below).
            device: where the SVD runs and the compressor lives.

        Returns:
            self. Component signs are fixed so that each component's largest entry is positive.
        """
        xt = self._start_fit(x, seed=seed)
        assert self.num_summaries is not None
        n = len(xt)
        if self.num_summaries > n - 1:
            raise ValueError(f"num_summaries={self.num_summaries} needs at least {self.num_summaries + 1} data sets")
        dev = resolve_device(device)
        flat = xt.reshape(n, -1).to(dev, torch.float64)
        mean = flat.mean(0)
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        comps = vh[: self.num_summaries]
        idx = comps.abs().argmax(dim=1)
        signs = torch.sign(comps.gather(1, idx[:, None]))
        comps = comps * signs
        std = s[: self.num_summaries] / math.sqrt(n - 1)
        if bool((std <= 1e-12 * max(float(s[0]), 1e-300)).any()):
            raise ValueError("the data have fewer non-constant directions than num_summaries; lower num_summaries")
        self.to(dev)
        self.mean.copy_(mean.float())
        self.components.copy_(comps.float())
        self.component_std.copy_(std.float())
        self.fitted.fill_(True)
        explained = float((s[: self.num_summaries] ** 2).sum() / (s**2).sum())
        logger.info("PCA: %d components explain %.1f%% of the variance", self.num_summaries, 100 * explained)
        self.eval()
        return self

    def _encode(self, xs: Tensor) -> Tensor:
        z = (xs.reshape(len(xs), -1) - self.mean) @ self.components.T
        return z / self.component_std if self.whiten else z

    @torch.no_grad()
    def decode(self, z: Any) -> Tensor:
        """Map summaries ``(n, k)`` back to data ``(n, *x_shape)`` (the projection on the components)."""
        if not self.is_fitted:
            raise RuntimeError("PCA is not fitted: call fit(x) before decode(z)")
        zt = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if zt.ndim != 2 or zt.shape[1] != self.num_summaries:
            raise ValueError(f"z must have shape (n, {self.num_summaries}), got {tuple(zt.shape)}")
        if self.whiten:
            zt = zt * self.component_std
        assert self.x_shape is not None
        return (zt @ self.components + self.mean).reshape(len(zt), *self.x_shape).cpu()
