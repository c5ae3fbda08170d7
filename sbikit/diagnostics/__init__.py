"""Calibration and accuracy diagnostics."""

from sbikit.diagnostics.c2st import c2st

__all__ = ["c2st"]
