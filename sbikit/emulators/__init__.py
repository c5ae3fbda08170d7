"""Emulators: generative models of ``x | theta`` trained on simulations and used as fast simulators.

One interface (the simulator protocol): ``fit(theta, x, ...)`` (returns self),
``simulate(theta, seed=)`` (numpy in -> numpy out, torch in -> torch out), ``sample(n, theta, seed=)``,
``save(path)`` / ``load_emulator(path)``; :func:`fidelity` compares an emulator with its simulator.

>>> from sbikit.emulators import ConditionalVAE, ConditionalWGAN, fidelity
>>> emu = ConditionalVAE(prior=sim.prior).fit(theta, x, seed=0)   # x: (n, 32, 32)
>>> x_new = emu.simulate(sim.prior.sample(1000, seed=1), seed=2)   # (1000, 32, 32)
>>> print(fidelity(emu, sim, sim.prior.sample(5, seed=3)))

:func:`edge_weighted_design` draws an emulator's training parameters with more rows near the
prior's bounds, where prior draws leave an emulator thin.
"""

from sbikit.emulators.base import Emulator, load_emulator
from sbikit.emulators.cvae import ConditionalVAE, cvae_loss, cvae_terms
from sbikit.emulators.design import edge_weighted_design
from sbikit.emulators.fidelity import FidelityReport, fidelity, mmd, power_spectrum
from sbikit.emulators.wgan import ConditionalWGAN, WGANHistory, critic_loss, gradient_penalty

__all__ = [
    "ConditionalVAE",
    "ConditionalWGAN",
    "Emulator",
    "FidelityReport",
    "WGANHistory",
    "critic_loss",
    "cvae_loss",
    "cvae_terms",
    "edge_weighted_design",
    "fidelity",
    "gradient_penalty",
    "load_emulator",
    "mmd",
    "power_spectrum",
]
