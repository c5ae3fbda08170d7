"""sbikit: simulation-based inference with normalizing flows.

The public API::

    import sbikit, simulators
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(10_000, seed=0)
    x = sim.simulate(theta, seed=1)
    posterior = sbikit.NPE(sim.prior, flow="maf").fit(theta, x, seed=0)
    samples = posterior.sample(10_000, x=x_o, seed=0)
"""

from __future__ import annotations

import logging

from sbikit import priors
from sbikit.compare import compare
from sbikit.inference import NLE, NPE, FlowPosterior, NLEPosterior, load
from sbikit.priors import BoxUniform, Gaussian, Independent, LogNormal
from sbikit.simulate import simulate  # the function; the module stays importable as sbikit.simulate
from sbikit.store import SimulationStore, open_store

__version__ = "0.1.0"

__all__ = ["NPE", "FlowPosterior", "load", "priors", "BoxUniform", "Gaussian", "Independent", "LogNormal"]
__all__ += ["NLE", "NLEPosterior", "compare", "mcmc"]
__all__ += ["simulate", "open_store", "SimulationStore"]

logging.getLogger("sbikit").addHandler(logging.NullHandler())


def __getattr__(name: str) -> object:
    # Heavier submodules (matplotlib, scikit-learn) load on first use: sbikit.plots, sbikit.diagnostics.
    if name in {
        "plots",
        "diagnostics",
        "cli",
        "config",
        "flows",
        "train",
        "utils",
        "mcmc",
        "compressors",
        "density",
        "emulators",
    }:
        import importlib

        return importlib.import_module(f"sbikit.{name}")
    raise AttributeError(f"module 'sbikit' has no attribute {name!r}")
