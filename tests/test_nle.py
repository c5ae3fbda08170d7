"""Tests for sbikit.NLE and NLEPosterior: identities, save/load, and a known posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neural_network import MLPClassifier

import sbikit
import simulators
from sbikit.diagnostics.c2st import c2st
from sbikit.inference.nle import NLEPosterior, nle_loss


@pytest.fixture(scope="module")
def tiny() -> tuple[object, NLEPosterior]:
    """A barely trained NLE on a 2-d box prior (two_moons): for identities, not accuracy."""
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(400, seed=0)
    x = sim.simulate(theta, seed=1)
    post = sbikit.NLE(sim.prior, hidden_features=16, num_transforms=2).fit(
        theta, x, seed=0, max_epochs=3, progress=False
    )
    return sim, post


def test_gaussian_linear_recovered():
    # 10-d Gaussian linear, 5000 simulations: C2ST of 2000 emcee samples on the learned
    # likelihood against 2000 exact posterior samples. Identical distributions score
    # 0.5 +- 0.5 / sqrt(4000) ~ 0.008, so the 0.6 threshold leaves room for the
    # flow's approximation error, not for Monte Carlo noise.
    sim = simulators.get("gaussian_linear")
    theta = sim.prior.sample(5000, seed=0)
    x = sim.simulate(theta, seed=1)
    post = sbikit.NLE(sim.prior).fit(theta, x, seed=0, progress=False)
    x_o = sim.simulate(sim.prior.sample(1, seed=3)[0], seed=4)
    samples = post.sample(2000, x=x_o, seed=0)
    assert samples.shape == (2000, 10)
    exact = sim.sample_posterior(x_o, 2000, seed=5)
    score = c2st(samples, exact, classifier=MLPClassifier(early_stopping=True, random_state=0))
    assert score <= 0.6


def test_log_prob_is_likelihood_plus_prior(tiny):
    sim, post = tiny
    theta = sim.prior.sample(7, seed=2)
    x_o = sim.simulate(theta[0], seed=3)
    lp = post.log_prob(theta, x_o)
    ll = post.log_likelihood(theta, x_o)
    assert lp.shape == ll.shape == (7,)
    torch.testing.assert_close(lp, ll + sim.prior.log_prob(theta), rtol=0, atol=1e-5)
    # Single theta gives a 0-d tensor; outside the support the density is -inf.
    assert post.log_prob(theta[0], x_o).shape == ()
    outside = torch.tensor([[2.0, 0.0], [0.0, -1.5]])
    assert torch.isinf(post.log_prob(outside, x_o)).all()


def test_iid_observations_sum(tiny):
    sim, post = tiny
    theta = sim.prior.sample(5, seed=4)
    xs = sim.simulate(np.repeat(np.array([[0.1, 0.2]]), 3, 0), seed=5)
    total = post.log_likelihood(theta, xs)
    parts = sum(post.log_likelihood(theta, xi) for xi in xs)
    torch.testing.assert_close(total, parts, rtol=1e-5, atol=1e-4)


def test_loss_is_mean_negative_log_likelihood(tiny):
    sim, post = tiny
    theta = sim.prior.sample(6, seed=6)
    x = torch.as_tensor(sim.simulate(theta, seed=7), dtype=torch.float32)
    loss = nle_loss(post.flow, x, theta)
    torch.testing.assert_close(loss, -post.flow.log_prob(x, theta).mean())


# A short chain on purpose (speed): its "shorter than 50 tau" warning is expected.
@pytest.mark.filterwarnings("ignore:the emcee chain")
def test_sample_inside_support_and_repeatable(tiny):
    sim, post = tiny
    x_o = sim.simulate(np.array([0.2, 0.1]), seed=8)
    a = post.sample(200, x=x_o, seed=1, max_steps=600)
    b = post.sample(200, x=x_o, seed=1, max_steps=600)
    assert a.shape == (200, 2)
    assert bool(sim.prior.in_support(a).all())
    assert torch.equal(a, b)


def test_save_load_round_trip(tiny, tmp_path):
    sim, post = tiny
    path = post.save(tmp_path / "nle.pt")
    loaded = sbikit.load(path)
    assert isinstance(loaded, NLEPosterior)
    assert loaded.x_shape == post.x_shape and loaded.theta_names == post.theta_names
    theta = sim.prior.sample(9, seed=9)
    x_o = sim.simulate(theta[0], seed=10)
    torch.testing.assert_close(loaded.log_prob(theta, x_o), post.log_prob(theta, x_o), rtol=0, atol=0)
    assert loaded.info["method"] == "NLE"
    # NPE files still load as FlowPosterior.
    npe = sbikit.NPE(sim.prior, hidden_features=8, num_transforms=1).fit(
        sim.prior.sample(200, seed=0), sim.simulate(sim.prior.sample(200, seed=0), seed=1), max_epochs=1, progress=False
    )
    assert isinstance(sbikit.load(npe.save(tmp_path / "npe.pt")), sbikit.FlowPosterior)


def test_bad_inputs_name_the_shape(tiny):
    sim, post = tiny
    with pytest.raises(ValueError, match=r"x must have shape \(2,\)"):
        post.log_prob(sim.prior.sample(2, seed=0), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        post.log_prob(sim.prior.sample(2, seed=0), np.array([math.nan, 0.0]))
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\)"):
        post.log_prob(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="flow must be one of"):
        sbikit.NLE(sim.prior, flow="glow")
