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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` on machines without CUDA (run them with ``pytest -m gpu``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def two_moons_npe() -> tuple:
    """A default NPE trained once on 10^4 two-moons simulations (seeds 0/1, training seed 0).

    Shared by the accuracy tests (test_npe.py) and the calibration test (test_testing.py):
    training dominates their run time.
    """
    import sbikit
    import simulators

    sim = simulators.get("two_moons")
    theta = sim.prior.sample(10_000, seed=0)
    x = sim.simulate(theta, seed=1)
    return sim, sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, progress=False)
