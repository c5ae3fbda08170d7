"""Density estimation on summaries: Gaussian mixtures (GMM) with the number of components chosen by BIC,
and misspecification checks (how typical an observation is among the training simulations)."""

from sbikit.density.gmm import GMM
from sbikit.density.misspecification import (
    ObservationCheck,
    OutOfDistributionWarning,
    TypicalityCheck,
    check_observation,
)

__all__ = ["GMM", "TypicalityCheck", "ObservationCheck", "OutOfDistributionWarning", "check_observation"]
