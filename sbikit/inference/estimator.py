"""What the flow-based estimators (NPE, NLE) share: the prior, the flow choice, the device."""

from __future__ import annotations

from typing import Any

import torch

from sbikit.flows import FLOW_KINDS
from sbikit.priors import Prior, as_prior
from sbikit.utils import resolve_device

__all__ = ["FlowEstimator"]


class FlowEstimator:
    """Base of :class:`~sbikit.NPE` and :class:`~sbikit.NLE`.

    Args:
        prior: an sbikit prior, a ``torch.distributions`` distribution or sbi's ``BoxUniform``.
        flow: ``"maf"``, ``"realnvp"`` or ``"nsf"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        hidden_features: width of the flow's conditioner networks.
        num_transforms: number of flow layers.
        num_bins: spline bins (``nsf`` only).
        num_blocks: hidden layers after the first in each conditioner.
        theta_names: optional parameter names carried by the posterior.

    Raises:
        ValueError: for an unknown flow, or CUDA asked for where there is none.
    """

    def __init__(
        self,
        prior: Any,
        flow: str = "maf",
        device: str | torch.device = "auto",
        *,
        hidden_features: int = 64,
        num_transforms: int = 5,
        num_bins: int = 8,
        num_blocks: int = 2,
        theta_names: list[str] | None = None,
    ) -> None:
        if flow.lower() not in FLOW_KINDS:
            raise ValueError(f"flow must be one of {FLOW_KINDS}, got {flow!r}")
        self.prior: Prior = as_prior(prior)
        self.flow_kind = flow.lower()
        self.device = resolve_device(device)
        self.hidden_features = hidden_features
        self.num_transforms = num_transforms
        self.num_bins = num_bins
        self.num_blocks = num_blocks
        self.theta_names = theta_names
