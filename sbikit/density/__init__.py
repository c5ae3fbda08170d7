"""Density estimation on summaries: Gaussian mixtures (GMM) with the number of components chosen by BIC."""

from sbikit.density.gmm import GMM

__all__ = ["GMM"]
