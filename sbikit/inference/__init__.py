"""Estimators (NPE) and the posteriors they return."""

from sbikit.inference.nle import NLE, NLEPosterior, nle_loss
from sbikit.inference.npe import NPE, npe_loss
from sbikit.inference.posterior import FlowPosterior, load

__all__ = ["NPE", "npe_loss", "FlowPosterior", "load", "NLE", "NLEPosterior", "nle_loss"]
