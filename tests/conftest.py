"""Shared pytest fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed the global torch and numpy RNGs before every test, so no test depends on order."""
    torch.manual_seed(0)
    np.random.seed(0)
