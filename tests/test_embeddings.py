"""The MLP embedding of vector observations and NPE's ``embedding="auto"``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sbikit
import simulators
from sbikit.embeddings import MLP_EMBEDDING_FEATURES, MLPEmbedding
from sbikit.inference.npe import resolve_embedding


def test_mlp_embedding_passes_its_input_through() -> None:
    emb = MLPEmbedding(8, hidden_features=16)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    out = emb(x)
    assert out.shape == (5, 8 + MLP_EMBEDDING_FEATURES) == (5, emb.features)
    assert torch.equal(emb.input_part(out), x)
    # The learned part depends on x (it is not a constant).
    assert not torch.allclose(out[0, 8:], out[1, 8:])
    alone = MLPEmbedding(8, hidden_features=16, out_features=4, pass_input=False)
    assert alone(x).shape == (5, 4) == (5, alone.features)
    with pytest.raises(ValueError, match="does not pass its input through"):
        alone.input_part(alone(x))


def test_mlp_embedding_rejects_bad_shapes_and_settings() -> None:
    with pytest.raises(ValueError, match="expects 8 input features, got 6"):
        MLPEmbedding(8)(torch.zeros(3, 6))
    with pytest.raises(ValueError, match="must be >= 1"):
        MLPEmbedding(0)
    with pytest.raises(ValueError, match="num_layers >= 0"):
        MLPEmbedding(4, num_layers=-1)


def test_mlp_embedding_config_rebuilds_it() -> None:
    emb = MLPEmbedding(3, hidden_features=7, out_features=5, num_layers=1, pass_input=False)
    again = MLPEmbedding(**emb.get_config())
    again.load_state_dict(emb.state_dict())
    x = torch.randn(4, 3)
    assert torch.equal(emb(x), again(x))


def test_auto_embedding_is_the_mlp_for_nsf_on_vectors_only() -> None:
    assert resolve_embedding("auto", "nsf", (8,)) == "mlp"
    assert resolve_embedding("AUTO", "nsf", (2,)) == "mlp"
    assert resolve_embedding("auto", "maf", (8,)) is None
    assert resolve_embedding("auto", "realnvp", (8,)) is None
    assert resolve_embedding("auto", "nsf", (16, 16)) is None  # images: flattened unless asked
    assert resolve_embedding(None, "nsf", (8,)) is None
    assert resolve_embedding("cnn", "nsf", (16, 16)) == "cnn"


def _two_moons(n: int = 300) -> tuple[sbikit.priors.BoxUniform, torch.Tensor, torch.Tensor]:
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(n, seed=0)
    return sim.prior, torch.as_tensor(theta).float(), torch.as_tensor(sim.simulate(theta, seed=1)).float()


def test_npe_default_nsf_reads_x_through_the_mlp_embedding(tmp_path) -> None:
    prior, theta, x = _two_moons()
    post = sbikit.NPE(prior, device="cpu").fit(theta, x, seed=0, max_epochs=2, progress=False)
    assert isinstance(post.flow.embedding, MLPEmbedding)
    assert post.flow.embedding.hidden_features == post.flow.config.hidden_features == 128
    assert post.flow.config.context_features == 2 + MLP_EMBEDDING_FEATURES
    # Controls: MAF and an explicit None flatten x; "mlp" asks for the embedding with MAF.
    maf = sbikit.NPE(prior, flow="maf", device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert isinstance(maf.flow.embedding, nn.Flatten)
    flat = sbikit.NPE(prior, embedding=None, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert isinstance(flat.flow.embedding, nn.Flatten)
    maf_mlp = sbikit.NPE(prior, flow="maf", embedding="mlp", device="cpu").fit(
        theta, x, seed=0, max_epochs=1, progress=False
    )
    assert isinstance(maf_mlp.flow.embedding, MLPEmbedding) and maf_mlp.flow.embedding.hidden_features == 64
    # Saved and loaded, the posterior gives the same draws and densities.
    back = sbikit.load(post.save(tmp_path / "mlp.pt"))
    assert isinstance(back.flow.embedding, MLPEmbedding)
    x_o = x[0]
    assert torch.equal(post.sample(50, x=x_o, seed=3), back.sample(50, x=x_o, seed=3))
    th = post.sample(20, x=x_o, seed=4)
    assert torch.allclose(post.log_prob(th, x=x_o), back.log_prob(th, x=x_o), atol=1e-5)


def test_typicality_rates_the_z_scored_x_with_the_mlp_embedding() -> None:
    """The check sees x itself (as without an embedding), not the 32 learned features, and
    appends no residual statistic (nothing of x is dropped)."""
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(2_000, seed=0)
    x = torch.as_tensor(sim.simulate(theta, seed=1)).float()
    post = sbikit.NPE(sim.prior, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    flat = sbikit.NPE(sim.prior, embedding=None, device="cpu").fit(theta, x, seed=0, max_epochs=1, progress=False)
    assert post.typicality is not None and flat.typicality is not None
    assert post.typicality.residual is None
    assert post.typicality.bank.shape[1] == flat.typicality.bank.shape[1] == 2
    z = (x[:5] - post.flow.c_shift) / post.flow.c_scale
    assert torch.allclose(post._summaries(x[:5]), z, atol=1e-6)
    # Controls: a typical x passes, one far outside the training simulations does not.
    assert post.check_observation(x[:100]).typical.float().mean() > 0.9  # ~0.99 expected at alpha 0.01
    assert not bool(post.check_observation(torch.tensor([5.0, -5.0])).typical.any())
