"""Principal component analysis: the linear compressor, fitted in closed form by an SVD.

Data on disk too large for memory are fitted from one streaming pass that accumulates the
mean and the scatter matrix in float64, then eigendecomposed; that needs a ``D x D`` matrix
and is offered for up to :data:`MAX_STREAMED_FEATURES` features.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from sbikit.compressors.base import Compressor
from sbikit.train import StreamingData, mean_and_scatter
from sbikit.utils import resolve_device

__all__ = ["PCA", "MAX_STREAMED_FEATURES"]

logger = logging.getLogger(__name__)

#: Most features (pixels) a streamed fit accepts: 64 x 64 images; the float64 scatter matrix
#: then takes 128 MiB and its eigendecomposition seconds.
MAX_STREAMED_FEATURES = 4096

# Eigenvalues of the scatter matrix below this fraction of the largest count as zero: float64
# rounding of a D x D eigenproblem leaves errors of about D * 2.2e-16 of the largest (< 1e-12
# for D <= 4096), so smaller eigenvalues cannot be told from a constant direction.
_ZERO_EIGENVALUE = 1e-10


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

    def fit(
        self,
        x: Any,
        theta: Any = None,
        *,
        seed: int | None = None,
        device: str | torch.device = "auto",
        memory_limit_gb: float | None = 4.0,
    ) -> PCA:
        """Fit by a float64 SVD of the centred data (in memory) or from the streamed covariance.

        Args:
            x: ``(n, *x_shape)`` with ``n >= 2``: numpy, torch, or an array on disk such as
                ``sbikit.open_store(path).x`` (rows with NaN or inf are then dropped with a
                warning that counts them).
            theta: ignored (PCA is unsupervised); accepted for the common interface.
            seed: unused (the SVD is deterministic up to the sign convention below).
            device: where the SVD runs and the compressor lives.
            memory_limit_gb: arrays on disk larger than this (as float32) are not read into
                memory: one pass over their chunks accumulates the mean and the scatter
                matrix ``sum (x - mean)(x - mean)^T`` in float64 (Chan's merge of blocks),
                whose eigenvectors are the components (the same as the SVD's to float32
                storage precision). ``0`` always streams, ``None`` never does. Streaming needs
                at most :data:`MAX_STREAMED_FEATURES` features.

        Returns:
            self. Component signs are fixed so that each component's largest entry is positive.

        Raises:
            ValueError: on bad shapes or too few data sets, fewer non-constant directions
                than ``num_summaries``, or a streamed fit of more than
                :data:`MAX_STREAMED_FEATURES` features.
        """
        arrays, streamed = self._fit_inputs({"x": x}, memory_limit_gb=memory_limit_gb)
        if streamed:
            return self._fit_streamed(arrays["x"], device=device)
        xt = self._start_fit(arrays["x"], seed=seed)
        assert self.num_summaries is not None
        n = len(xt)
        if self.num_summaries > n - 1:
            raise ValueError(f"num_summaries={self.num_summaries} needs at least {self.num_summaries + 1} data sets")
        dev = resolve_device(device)
        flat = xt.reshape(n, -1).to(dev, torch.float64)
        mean = flat.mean(0)
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        comps = vh[: self.num_summaries]
        std = s[: self.num_summaries] / math.sqrt(n - 1)
        if bool((std <= 1e-12 * max(float(s[0]), 1e-300)).any()):
            raise ValueError("the data have fewer non-constant directions than num_summaries; lower num_summaries")
        self._store_fit(mean, comps, std, dev)
        explained = float((s[: self.num_summaries] ** 2).sum() / (s**2).sum())
        logger.info("PCA: %d components explain %.1f%% of the variance", self.num_summaries, 100 * explained)
        return self

    def _fit_streamed(self, x: Any, *, device: str | torch.device) -> PCA:
        """One pass over ``x`` on disk: mean and scatter matrix in float64, then ``eigh``.

        No ``torch.no_grad`` decorator (nothing here needs a gradient): its wrapper frame would
        shift the dropped-rows warning off the user's ``fit`` call.
        """
        shape = tuple(int(s) for s in x.shape)
        dim = math.prod(shape[1:]) if self.x_shape is None else math.prod(self.x_shape)
        if dim > MAX_STREAMED_FEATURES:
            raise ValueError(
                f"PCA cannot stream data of {dim} features (x of shape {shape}): the fit accumulates a "
                f"{dim} x {dim} covariance and is limited to {MAX_STREAMED_FEATURES} features (64 x 64 images). "
                "Fit in memory (memory_limit_gb=None, or a subset of the rows), or use fewer features "
                "(downsample or crop the images)"
            )
        data: StreamingData = self._start_streamed_fit(x, seed=None)
        assert self.num_summaries is not None
        dev = resolve_device(device)
        mean, scatter, count = mean_and_scatter((block for (block,) in data.iter_blocks()), dim, device=dev)
        if count < data.num_rows:
            self._warn_dropped(data.num_rows - count, data.num_rows, ["x"], stacklevel=4)
        if count < 2:
            raise ValueError(f"fit needs at least 2 data sets with finite values, got {count} of {data.num_rows}")
        if self.num_summaries > count - 1:
            raise ValueError(f"num_summaries={self.num_summaries} needs at least {self.num_summaries + 1} data sets")
        evals, evecs = torch.linalg.eigh(scatter)  # ascending
        top = evals.flip(0)[: self.num_summaries]
        if bool((top <= _ZERO_EIGENVALUE * max(float(evals[-1]), 1e-300)).any()):
            raise ValueError("the data have fewer non-constant directions than num_summaries; lower num_summaries")
        comps = evecs.flip(1)[:, : self.num_summaries].T
        self._store_fit(mean, comps, (top / (count - 1)).sqrt(), dev)
        explained = float(top.sum() / scatter.diagonal().sum())
        logger.info(
            "PCA (streamed, %d rows): %d components explain %.1f%% of the variance",
            count,
            self.num_summaries,
            100 * explained,
        )
        return self

    @torch.no_grad()
    def _store_fit(self, mean: Tensor, comps: Tensor, std: Tensor, dev: torch.device) -> None:
        """Keep the fit: ``mean`` ``(D,)``, ``comps`` ``(k, D)`` (signs fixed here), ``std`` ``(k,)``."""
        idx = comps.abs().argmax(dim=1)
        comps = comps * torch.sign(comps.gather(1, idx[:, None]))
        self.to(dev)
        self.mean.copy_(mean.float())
        self.components.copy_(comps.float())
        self.component_std.copy_(std.float())
        self.fitted.fill_(True)
        self.eval()

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
