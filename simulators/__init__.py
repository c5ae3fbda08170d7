"""Example simulators with exact likelihoods, and a registry to find them by name.

>>> import simulators
>>> simulators.available()
['gaussian_linear', 'gaussian_mixture', 'grf', 'lens', 'sersic', 'slcp', 'supernova', 'two_moons']
>>> sim = simulators.get("two_moons")
>>> theta = sim.prior.sample(1000, seed=0)       # torch (1000, 2)
>>> x = sim.simulate(theta, seed=1)              # torch (1000, 2)
>>> ll = sim.log_likelihood(theta, x)            # torch (1000,)
"""

from __future__ import annotations

from simulators.base import Simulator
from simulators.gaussian_linear import GaussianLinear
from simulators.gaussian_mixture import GaussianMixture
from simulators.grf import GaussianRandomField
from simulators.lens import Lens
from simulators.registry import available, get, register
from simulators.sersic import Sersic
from simulators.slcp import SLCP
from simulators.supernova import Supernova
from simulators.two_moons import TwoMoons

__all__ = [
    "Simulator",
    "available",
    "get",
    "register",
    "GaussianLinear",
    "GaussianMixture",
    "GaussianRandomField",
    "Lens",
    "SLCP",
    "Sersic",
    "Supernova",
    "TwoMoons",
]
