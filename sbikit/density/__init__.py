"""Density estimation on summaries: Gaussian mixtures (GMM) with the number of components chosen by BIC,
and misspecification checks (how typical an observation is among the training simulations)."""

from sbikit.density.gmm import GMM
from sbikit.density.misspecification import (
    ObservationCheck,
    OutOfDistributionWarning,
    ResidualStatistic,
    TypicalityCheck,
    check_observation,
)

__all__ = [
    "GMM",
    "TypicalityCheck",
    "ResidualStatistic",
    "ObservationCheck",
    "OutOfDistributionWarning",
    "check_observation",
]

from sbikit.density.anomaly import (  # noqa: E402
    AnomalyDetector,
    AnomalyScore,
    CombinedScore,
    PCAReconstructionScore,
    WGANAnomalyScore,
    auroc,
    roc_curve,
    threshold_at_fpr,
)
from sbikit.density.flow_density import FlowDensity, load_density  # noqa: E402

__all__ += ["FlowDensity", "load_density", "AnomalyScore", "AnomalyDetector", "PCAReconstructionScore", "CombinedScore"]
__all__ += ["WGANAnomalyScore", "auroc", "roc_curve", "threshold_at_fpr"]
