"""Tests for sbikit.compressors: interface, save/load, PCA, VAE, contrastive losses, regression, NPE embeddings.

Networks are tiny (8 x 8 images, channels (4, 8)) and trained for a few epochs: these tests
check identities and behaviour, not accuracy (benchmarks/compressors.py measures that).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import sbikit
import simulators
from sbikit.compressors import (
    PCA,
    VAE,
    Augment,
    AutoEncoder,
    Compressor,
    Contrastive,
    ConvDecoder,
    ConvEncoder,
    FrozenEmbedding,
    Regression,
    load_compressor,
    nt_xent,
    vicreg,
)

SMALL = (4, 8)
FAST = {"max_epochs": 2, "progress": False, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def grf_data() -> tuple[torch.Tensor, torch.Tensor]:
    sim = simulators.get("grf", size=8)
    theta = sim.prior.sample(256, seed=0)
    return theta, sim.simulate(theta, seed=1)


def _make(name: str) -> Compressor:
    return {
        "pca": lambda: PCA(4),
        "autoencoder": lambda: AutoEncoder(4, channels=SMALL),
        "vae": lambda: VAE(4, channels=SMALL),
        "contrastive": lambda: Contrastive(4, channels=SMALL, projection_features=8),
        "vicreg": lambda: Contrastive(4, loss="vicreg", channels=SMALL, projection_features=8),
        "regression": lambda: Regression(channels=SMALL),
    }[name]()


def _fit(comp: Compressor, x: torch.Tensor, theta: torch.Tensor) -> Compressor:
    if isinstance(comp, PCA):
        return comp.fit(x, device="cpu")
    return comp.fit(x, theta, **FAST)


NAMES = ["pca", "autoencoder", "vae", "contrastive", "vicreg", "regression"]


# -- the common interface ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_interface_shapes_and_save_load(name: str, grf_data, tmp_path) -> None:
    theta, x = grf_data
    comp = _make(name)
    with pytest.raises(RuntimeError, match="not fitted"):
        comp.encode(x)
    _fit(comp, x, theta)
    k = 2 if name == "regression" else 4
    s = comp.encode(x)
    assert s.shape == (len(x), k) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert comp.encode(x[0]).shape == (k,)
    np.testing.assert_allclose(comp.encode(x[:5].numpy()).numpy(), s[:5].numpy(), atol=1e-6)  # numpy input
    # Save and load: a state dict plus JSON config, read with weights_only=True; encodings are identical.
    path = comp.save(tmp_path / f"{name}.pt")
    back = load_compressor(path)
    assert type(back) is type(comp) and back.get_config() == comp.get_config()
    assert torch.equal(back.encode(x), s)
    assert type(Compressor.load(path)) is type(comp)
    other = PCA if name != "pca" else AutoEncoder
    with pytest.raises(TypeError, match="holds a"):
        other.load(path)
    # Clear errors: wrong image shape, NaN input.
    with pytest.raises(ValueError, match=r"x must have shape \(n, 8, 8\)"):
        comp.encode(torch.zeros(3, 9, 8))
    bad = x[:4].clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 4 rows"):
        comp.encode(bad)


def test_load_rejects_foreign_files(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, path)
    with pytest.raises(ValueError, match="not an sbikit compressor"):
        load_compressor(path)
    with pytest.raises(FileNotFoundError):
        load_compressor(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not an sbikit Compressor subclass"):
        FrozenEmbedding({"class": "torch.nn:Linear", "kwargs": {}})


def test_same_seed_same_compressor(grf_data) -> None:
    theta, x = grf_data
    a = AutoEncoder(4, channels=SMALL).fit(x, **FAST).encode(x)
    b = AutoEncoder(4, channels=SMALL).fit(x, **FAST).encode(x)
    assert torch.equal(a, b)


def test_conv_networks_accept_channels_and_odd_sizes() -> None:
    enc = ConvEncoder((3, 10, 7), 5, channels=SMALL)
    assert enc(torch.randn(2, 3, 10, 7)).shape == (2, 5)
    dec = ConvDecoder(5, (3, 10, 7), channels=SMALL)
    assert dec(torch.randn(2, 5)).shape == (2, 3, 10, 7)
    flat = ConvEncoder((10, 7), 5, channels=SMALL, pooling="flatten")
    assert flat(torch.randn(2, 10, 7)).shape == (2, 5)
    with pytest.raises(ValueError, match="images of shape"):
        ConvEncoder((10,), 5)
    with pytest.raises(ValueError, match="pooling must be one of"):
        ConvEncoder((10, 7), 5, pooling="max")


@pytest.mark.parametrize("pooling", ["power", "mean"])
def test_conv_encoder_poolings_shapes_and_gradients(pooling) -> None:
    enc = ConvEncoder((2, 9, 8), 3, channels=SMALL, pooling=pooling)
    assert enc.get_config()["pooling"] == pooling
    width = SMALL[-1] + (2 * sum(SMALL) if pooling == "power" else 0)
    assert enc.head[0].in_features == width
    out = enc(torch.randn(4, 2, 9, 8))
    assert out.shape == (4, 3)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_power_pooling_band_power_shifts_by_twice_the_log_scale() -> None:
    # Exact identity: with pooling="power" the log band power of the first (linear) convolution
    # shifts by exactly 2 log(c) when the image is scaled by c (bias removed to make it exact).
    enc = ConvEncoder((8, 8), 2, channels=SMALL, pooling="power").double()
    conv = enc.features[0]
    torch.nn.init.zeros_(conv.bias)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    band = [torch.log(conv(v).square().mean(dim=(-2, -1))) for v in (x, 3.0 * x)]
    torch.testing.assert_close(band[1] - band[0], torch.full_like(band[0], 2 * math.log(3.0)))


# -- PCA ----------------------------------------------------------------------------------------------


def test_pca_matches_numpy_svd_and_whitens(grf_data) -> None:
    _, x = grf_data
    pca = PCA(5, whiten=True).fit(x, device="cpu")
    flat = x.reshape(len(x), -1).double().numpy()
    centred = flat - flat.mean(0)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    comps = pca.components.double().numpy()
    # Components agree with numpy's up to sign (float32 storage: atol 1e-5).
    for i in range(5):
        sign = np.sign(comps[i] @ vh[i])
        np.testing.assert_allclose(comps[i], sign * vh[i], atol=1e-5)
    np.testing.assert_allclose(pca.component_std.numpy(), s[:5] / math.sqrt(len(x) - 1), rtol=1e-5)
    z = pca.encode(x).double().numpy()
    # Whitened summaries of the training data have zero mean and unit covariance (exact identity).
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(z.T), np.eye(5), atol=1e-4)
    raw = PCA(5, whiten=False).fit(x, device="cpu").encode(x).double().numpy()
    np.testing.assert_allclose(raw, centred @ (comps.T), atol=1e-4)
    # decode is the projection on the components.
    proj = pca.decode(pca.encode(x)).reshape(len(x), -1).double().numpy()
    np.testing.assert_allclose(proj, flat.mean(0) + centred @ comps.T @ comps, atol=1e-4)


def test_pca_errors() -> None:
    with pytest.raises(ValueError, match="num_summaries"):
        PCA(0)
    with pytest.raises(ValueError, match="exceeds the data dimension"):
        PCA(20).fit(torch.randn(50, 4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        PCA(2).fit(torch.randn(1, 4, 4))


# -- VAE ------------------------------------------------------------------------------------------------


def test_vae_elbo_decreases_and_samples(grf_data) -> None:
    _, x = grf_data
    vae = VAE(4, channels=SMALL).fit(x, max_epochs=8, progress=False, device="cpu", seed=0)
    loss = vae.history.train_loss  # negative ELBO per image
    assert loss[-1] < loss[0]
    before = VAE(4, channels=SMALL, x_shape=(8, 8))
    before._set_standardization(x)
    before.fitted.fill_(True)  # untrained weights, for comparison only
    assert float(vae.elbo(x).mean()) > float(before.elbo(x).mean())
    new = vae.sample(7, seed=0)
    assert new.shape == (7, 8, 8) and torch.isfinite(new).all()
    assert torch.equal(new, vae.sample(7, seed=0))
    assert vae.sample(3, seed=1, noise=True).shape == (3, 8, 8)
    assert vae.decode(torch.zeros(2, 4)).shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 4\)"):
        vae.decode(torch.zeros(2, 3))


# -- contrastive ------------------------------------------------------------------------------------------


def _nt_xent_direct(za: torch.Tensor, zb: torch.Tensor, t: float) -> float:
    """SimCLR's loss written out term by term with loops (float64)."""
    z = torch.cat([za, zb]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z)
    b = n // 2
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[p]) / t) / denom)
    return total / n


def test_nt_xent_matches_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    za, zb = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    for t in (0.1, 0.5, 1.0):
        assert float(nt_xent(za.double(), zb.double(), t)) == pytest.approx(_nt_xent_direct(za, zb, t), abs=1e-10)


def test_nt_xent_is_lowest_for_identical_pairs() -> None:
    # Orthonormal projections with identical pairs: the positive has similarity 1 and the
    # 2b - 2 negatives 0, so l = -1/t + log(e^(1/t) + 2b - 2) = log(1 + (2b - 2) e^(-1/t)).
    b, t = 4, 0.2
    z = torch.eye(b, 6, dtype=torch.float64)
    expected = math.log(1 + (2 * b - 2) * math.exp(-1 / t))
    assert float(nt_xent(z, z, t)) == pytest.approx(expected, abs=1e-12)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):  # any mismatched pairing scores worse
        other = z[torch.randperm(b, generator=gen)]
        if not torch.equal(other, z):
            assert float(nt_xent(z, other, t)) > expected
    with pytest.raises(ValueError, match="must both have shape"):
        nt_xent(z, z[:, :3])


def test_vicreg_prefers_invariant_spread_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(64, 4, generator=gen)
    shuffled = z[torch.randperm(64, generator=gen)]
    collapsed = torch.zeros(64, 4)
    assert float(vicreg(z, z)) < float(vicreg(z, shuffled))
    # Collapse is penalised by the variance term: 2 views x 25 x relu(1 - 0.01) each.
    assert float(vicreg(collapsed, collapsed)) == pytest.approx(2 * 25 * (1 - 0.01), rel=1e-6)


def test_augment_keeps_shapes_and_pixel_values() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 2, 6, 6)
    out = Augment(rotate90=True, flip=True, max_shift=2, noise_std=0.0)(x)
    assert out.shape == x.shape
    # Rotations, flips and circular shifts permute pixels: each image keeps its sorted values.
    torch.testing.assert_close(out.reshape(16, -1).sort(1).values, x.reshape(16, -1).sort(1).values)
    assert not torch.equal(out, x)
    noisy = Augment(rotate90=False, flip=False, noise_std=0.5)(x)
    assert 0.3 < float((noisy - x).std()) < 0.7
    with pytest.raises(ValueError, match="square"):
        Augment()(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="max_shift"):
        Augment(max_shift=-1)


def test_contrastive_with_simulation_pairs(grf_data) -> None:
    theta, x = grf_data
    sim = simulators.get("grf", size=8)
    pair = sim.simulate(theta, seed=2)
    comp = Contrastive(4, augment=None, channels=SMALL, projection_features=8)
    with pytest.raises(ValueError, match="x_pair"):
        comp.fit(x, **FAST)
    comp.fit(x, x_pair=pair, **FAST)
    assert comp.encode(x).shape == (len(x), 4)
    with pytest.raises(ValueError, match="as many rows"):
        Contrastive(4, channels=SMALL).fit(x, x_pair=pair[:10], **FAST)


# -- regression ---------------------------------------------------------------------------------------------


def test_regression_learns_a_linear_image_model() -> None:
    # x = theta * pattern + 0.05 noise: the CNN must recover theta. The noise alone limits the
    # error to about 0.05 / |pattern| ~ 0.006; an untrained net is at the prior std 0.58.
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randn(8, 8, generator=gen)
    theta = torch.rand(1024, 1, generator=gen) * 2 - 1
    x = theta[:, :, None] * pattern + 0.05 * torch.randn(1024, 8, 8, generator=gen)
    reg = Regression(channels=(8, 16), pooling="flatten").fit(
        x[:900], theta[:900], max_epochs=40, progress=False, device="cpu", seed=0, learning_rate=3e-3
    )
    rmse = float(((reg.encode(x[900:]) - theta[900:]) ** 2).mean().sqrt())
    assert rmse < 0.1, rmse
    with pytest.raises(ValueError, match="needs theta"):
        Regression().fit(x)
    with pytest.raises(ValueError, match="same number of rows"):
        Regression(channels=SMALL).fit(x, theta[:10], **FAST)


# -- as NPE embeddings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pca", "regression"])
def test_frozen_compressor_in_npe(name: str, grf_data, tmp_path) -> None:
    theta, x = grf_data
    comp = _fit(_make(name), x, theta)
    before = {k: v.clone() for k, v in comp.state_dict().items()}
    post = sbikit.NPE(simulators.get("grf", size=8).prior, embedding=comp, device="cpu").fit(
        theta, x, seed=0, max_epochs=3, progress=False
    )
    emb = post.flow.embedding
    assert isinstance(emb, FrozenEmbedding)
    assert all(not p.requires_grad for p in emb.parameters())
    assert not emb.compressor.training
    assert all(torch.equal(before[k], v) for k, v in comp.state_dict().items())  # the user's copy is untouched
    assert all(torch.equal(before[k], v) for k, v in emb.compressor.state_dict().items())  # and the trained one
    # NPE passes raw x: the frozen embedding reproduces encode() exactly.
    assert float(post.flow.c_shift.abs().max()) == 0.0 and float(post.flow.c_scale.min()) == 1.0
    torch.testing.assert_close(post.flow.embed(x[:5]), comp.encode(x[:5]))
    # One backward pass gives the flow gradients and the compressor none.
    loss = -post.flow.log_prob(post.prior.to_unconstrained(theta[:8]), x[:8]).mean()
    loss.backward()
    assert all(p.grad is None for p in emb.parameters())
    assert any(p.grad is not None for p in post.flow.transform.parameters())
    path = post.save(tmp_path / "post.pt")
    back = sbikit.load(path)
    torch.testing.assert_close(back.log_prob(theta[:5], x=x[0]), post.log_prob(theta[:5], x=x[0]))


def test_npe_cnn_embedding(grf_data, tmp_path) -> None:
    theta, x = grf_data
    prior = simulators.get("grf", size=8).prior
    post = sbikit.NPE(prior, embedding="cnn", device="cpu").fit(theta, x, seed=0, max_epochs=2, progress=False)
    assert isinstance(post.flow.embedding, ConvEncoder)
    assert post.flow.embedding.out_features == 8
    assert post.flow.embedding.pooling == "power"
    # A jointly trained CNN gets its own defaults (docs/compressors.md); vectors keep NPE's.
    assert post.info["learning_rate"][0] == pytest.approx(sbikit.inference.npe.CONV_LEARNING_RATE)
    assert post.info["recipe"]["schedule"] == "plateau"
    vec = sbikit.NPE(prior, device="cpu").fit(theta, x.reshape(len(x), -1), seed=0, max_epochs=1, progress=False)
    assert vec.info["recipe"]["learning_rate"] == pytest.approx(sbikit.inference.npe.NSF_LEARNING_RATE)
    assert vec.info["recipe"]["schedule"] == "cosine"
    assert post.sample(10, x=x[0], seed=0).shape == (10, 2)
    back = sbikit.load(post.save(tmp_path / "cnn.pt"))
    torch.testing.assert_close(back.log_prob(theta[:5], x=x[0]), post.log_prob(theta[:5], x=x[0]))
    with pytest.raises(ValueError, match="images of shape"):
        sbikit.NPE(prior, embedding="cnn", device="cpu").fit(theta, x.reshape(len(x), -1), max_epochs=1)
    with pytest.raises(ValueError, match="'cnn'"):
        sbikit.NPE(prior, embedding="resnet", device="cpu").fit(theta, x, max_epochs=1)
    with pytest.raises(ValueError, match="fitted on x_shape"):
        sbikit.NPE(prior, embedding=PCA(2).fit(torch.randn(20, 4, 4)), device="cpu").fit(theta, x, max_epochs=1)


def test_nle_on_summaries(grf_data) -> None:
    # NLE has no embedding: its flow models the summaries themselves, so the recipe is to
    # encode x and fit NLE on (theta, summaries), and to encode observations the same way.
    theta, x = grf_data
    pca = PCA(3).fit(x, device="cpu")
    post = sbikit.NLE(simulators.get("grf", size=8).prior, device="cpu").fit(
        theta, pca.encode(x), seed=0, max_epochs=2, progress=False
    )
    ll = post.log_likelihood(theta[:4], pca.encode(x[0]))
    assert ll.shape == (4,) and torch.isfinite(ll).all()


def test_frozen_embedding_needs_a_fitted_compressor() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).as_embedding()
    with pytest.raises(TypeError, match="Compressor"):
        FrozenEmbedding(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


@pytest.mark.gpu
def test_compressor_trains_and_encodes_on_cuda(grf_data) -> None:
    theta, x = grf_data
    reg = Regression(channels=SMALL).fit(x, theta, max_epochs=2, progress=False, device="cuda", seed=0)
    assert reg.device.type == "cuda"
    s = reg.encode(x)
    assert s.device.type == "cpu"
    torch.testing.assert_close(reg.to_device("cpu").encode(x), s, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["autoencoder", "vae", "contrastive", "regression"])
def test_compressor_fit_resumes_from_a_checkpoint(name, grf_data, tmp_path, caplog) -> None:
    # A fit stopped after 1 epoch and resumed to 2 must equal an uninterrupted 2-epoch fit:
    # weights, optimiser, batch order and the torch RNG (augmentations, VAE noise) are restored.
    theta, x = grf_data
    kw = {**FAST, "max_epochs": 2}
    full = _make(name).fit(x, theta, **kw)
    ckpt = tmp_path / f"{name}.ckpt"
    _make(name).fit(x, theta, **{**kw, "max_epochs": 1}, checkpoint=ckpt)
    with caplog.at_level(logging.INFO, logger="sbikit.train"):
        resumed = _make(name).fit(x, theta, **kw, checkpoint=ckpt, resume=True)
    # It really continued (a fresh 2-epoch fit would also match `full`): fit logs the resume.
    assert any("resuming from" in r.getMessage() and "after epoch 1" in r.getMessage() for r in caplog.records)
    assert resumed.history.val_loss == full.history.val_loss
    assert torch.equal(resumed.encode(x[:16]), full.encode(x[:16]))


# -- training from a simulation store (arrays on disk, streamed beyond memory) ------------------------------

# 16 x 16 GRF images in a store of 5 chunks of 64 rows; memory_limit_gb=0 streams them.
STORE_ROWS, STORE_CHUNK = 320, 64
STREAM = {**FAST, "memory_limit_gb": 0}


@pytest.fixture(scope="module")
def zarr():
    return pytest.importorskip("zarr")


def _grf_store(path, zarr):
    return sbikit.simulate(
        "grf", STORE_ROWS, store=path, chunk_size=STORE_CHUNK, seed=0, simulator_kwargs={"size": 16}, progress=False
    )


@pytest.fixture(scope="module")
def grf_store(tmp_path_factory, zarr):
    return _grf_store(tmp_path_factory.mktemp("store") / "grf.zarr", zarr)


def _make16(name: str) -> Compressor:
    return {
        "autoencoder": lambda: AutoEncoder(4, channels=SMALL),
        "vae": lambda: VAE(4, channels=SMALL),
        "contrastive": lambda: Contrastive(4, channels=SMALL, projection_features=8),
        "regression": lambda: Regression(channels=SMALL),
    }[name]()


def _weights(comp: Compressor) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in comp.state_dict().items()}


def _streamed(caplog) -> bool:
    return any(r.name == "sbikit.train" and "streaming" in r.getMessage() for r in caplog.records)


def test_streamed_pca_equals_in_memory_pca(grf_store, monkeypatch, caplog) -> None:
    x = grf_store.x
    x_mem = np.asarray(x[:])
    with caplog.at_level(logging.INFO, logger="sbikit"):
        streamed = PCA(6).fit(x, device="cpu", memory_limit_gb=0)
    assert _streamed(caplog) and any("PCA (streamed, 320 rows)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sbikit"):
        loaded = PCA(6).fit(x, device="cpu")  # 0.3 MB < the default 4 GB: read into memory
    assert not _streamed(caplog)
    ref = PCA(6).fit(x_mem, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(_weights(loaded).values(), _weights(ref).values(), strict=True))
    # Same data, two float64 routes (eigenvectors of the streamed scatter matrix vs the SVD):
    # they agree to float32 storage rounding, far inside 1e-5; components compared up to sign.
    for i in range(6):
        a, b = streamed.components[i], ref.components[i]
        sign = torch.sign(a @ b)
        torch.testing.assert_close(a, sign * b, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.component_std, ref.component_std, atol=0, rtol=1e-5)
    torch.testing.assert_close(streamed.mean, ref.mean, atol=1e-6, rtol=0)
    # Negative control: PCA of half the rows differs by far more than the tolerance.
    half = PCA(6).fit(x_mem[:160], device="cpu")
    assert float((half.components.abs() - ref.components.abs()).abs().max()) > 1e-2
    # encode reads an array on disk a few chunks at a time (5 reads of 64 rows here).
    monkeypatch.setattr("sbikit.compressors.base._ENCODE_CHUNK", 100)
    z = streamed.encode(x)
    assert z.shape == (STORE_ROWS, 6)
    torch.testing.assert_close(z, streamed.encode(x_mem), atol=1e-5, rtol=0)
    assert streamed.encode(x[3]).shape == (6,)  # one data set read from disk


@pytest.mark.parametrize("name", ["autoencoder", "vae", "contrastive", "regression"])
def test_streamed_fit_standardises_like_memory_and_repeats(name, grf_store, caplog) -> None:
    x, theta = grf_store.x, grf_store.theta
    with caplog.at_level(logging.INFO, logger="sbikit.train"):
        a = _make16(name).fit(x, theta, **STREAM)
    assert _streamed(caplog)
    assert a.is_fitted and a.history.epochs == 2 and math.isfinite(a.history.best_val_loss)
    b = _make16(name).fit(x, theta, **STREAM)
    # Same seed, same stream (split, block order, batches): identical weights. Control: another seed differs.
    assert all(torch.equal(u, v) for u, v in zip(_weights(a).values(), _weights(b).values(), strict=True))
    other = _make16(name).fit(x, theta, **{**STREAM, "seed": 1})
    assert not all(torch.equal(u, v) for u, v in zip(_weights(a).values(), _weights(other).values(), strict=True))
    # The streaming pass (float64) gives the in-memory standardisation (float32 reductions): 1e-5.
    mem = _make16(name).fit(np.asarray(x[:]), np.asarray(theta[:]), **FAST)
    names = ["x_shift", "x_scale"] + (["theta_shift", "theta_scale"] if name == "regression" else [])
    for key in names:
        torch.testing.assert_close(getattr(a, key), getattr(mem, key), atol=1e-5, rtol=1e-5)
    z = a.encode(x)
    assert z.shape == (STORE_ROWS, 2 if name == "regression" else 4) and torch.isfinite(z).all()
    # Read into memory (below memory_limit_gb), an array on disk trains exactly like numpy input.
    loaded = _make16(name).fit(x, theta, **FAST)
    assert all(torch.equal(u, v) for u, v in zip(_weights(loaded).values(), _weights(mem).values(), strict=True))


def test_streamed_contrastive_with_pairs_on_disk(grf_store, zarr, tmp_path) -> None:
    x, theta = grf_store.x, grf_store.theta
    pair_np = simulators.get("grf", size=16).simulate(np.asarray(theta[:]), seed=2).astype(np.float32)
    pair = zarr.create_array(str(tmp_path / "pair.zarr"), shape=pair_np.shape, chunks=(64, 16, 16), dtype="f4")
    pair[:] = pair_np
    comp = Contrastive(4, augment=None, channels=SMALL, projection_features=8)
    comp.fit(x, x_pair=pair, **STREAM)
    assert comp.is_fitted and comp.encode(pair).shape == (STORE_ROWS, 4)
    # One mean and scale for x and x_pair together, as in memory (float64 pooling vs float32: 1e-5).
    both = torch.cat([torch.as_tensor(np.asarray(x[:])), torch.as_tensor(pair_np)])
    assert float(comp.x_shift) == pytest.approx(float(both.mean()), abs=1e-5)
    assert float(comp.x_scale) == pytest.approx(float(both.std()), rel=1e-5)
    # Control: the scale of x alone differs (the pairs have other noise), so the test can tell.
    assert float(both[:STORE_ROWS].std()) != pytest.approx(float(both.std()), rel=1e-5)
    with pytest.raises(ValueError, match=r"x_pair must have shape \(n, 16, 16\)"):
        Contrastive(4, augment=None, channels=SMALL).fit(x, x_pair=np.zeros((STORE_ROWS, 8, 8)), **STREAM)


def test_nan_rows_of_a_store_are_dropped_with_one_warning(zarr, tmp_path) -> None:
    store = _grf_store(tmp_path / "nan.zarr", zarr)
    zarr.open_group(str(tmp_path / "nan.zarr"), mode="r+")["x"][10:17] = np.nan
    finite = np.asarray(store.x[:])[np.r_[0:10, 17:STORE_ROWS]]
    message = "dropped 7 of 320 rows whose x holds NaN or inf"
    ref = AutoEncoder(4, channels=SMALL).fit(finite, **FAST)
    for kw in (STREAM, FAST):  # streamed, and read into memory: the same rows go
        with pytest.warns(UserWarning, match=message) as record:
            ae = AutoEncoder(4, channels=SMALL).fit(store.x, **kw)
        assert len(record) == 1 and record[0].filename == __file__  # one warning, at the user's call
        torch.testing.assert_close(ae.x_shift, ref.x_shift, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ae.x_scale, ref.x_scale, atol=1e-5, rtol=1e-5)
    with pytest.warns(UserWarning, match=message) as record:
        pca = PCA(4).fit(store.x, device="cpu", memory_limit_gb=0)
    assert len(record) == 1 and record[0].filename == __file__
    torch.testing.assert_close(pca.mean, PCA(4).fit(finite, device="cpu").mean, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="dropped 7 of 320 rows whose x or theta holds NaN or inf"):
        Regression(channels=SMALL).fit(store.x, store.theta, **STREAM)
    # encode does not drop rows: it names the rows it cannot encode.
    with pytest.raises(ValueError, match="NaN or inf in 7 of its rows 0 to 319"):
        pca.encode(store.x)
    # Numpy input keeps its strict check (nothing is dropped silently from data in memory).
    with pytest.raises(ValueError, match="NaN or inf in 7 of 320 rows"):
        AutoEncoder(4, channels=SMALL).fit(np.asarray(store.x[:]), **FAST)


@pytest.mark.parametrize("name", ["autoencoder", "contrastive", "regression"])
def test_streamed_fit_resumes_from_a_checkpoint(name, grf_store, tmp_path, caplog) -> None:
    # Streamed: stopped after 1 epoch and resumed to 2 equals an uninterrupted 2-epoch fit.
    x, theta = grf_store.x, grf_store.theta
    full = _make16(name).fit(x, theta, **STREAM)
    ckpt = tmp_path / f"{name}.ckpt"
    _make16(name).fit(x, theta, **{**STREAM, "max_epochs": 1}, checkpoint=ckpt)
    with caplog.at_level(logging.INFO, logger="sbikit.train"):
        resumed = _make16(name).fit(x, theta, **STREAM, checkpoint=ckpt, resume=True)
    assert any("resuming from" in r.getMessage() and "after epoch 1" in r.getMessage() for r in caplog.records)
    assert resumed.history.val_loss == full.history.val_loss
    assert all(torch.equal(u, v) for u, v in zip(_weights(resumed).values(), _weights(full).values(), strict=True))
    # The checkpoint records a streamed run: resuming it with the data in memory is refused.
    with pytest.raises(ValueError, match="different training run"):
        _make16(name).fit(x, theta, **FAST, checkpoint=ckpt, resume=True)


def test_streamed_fit_errors(grf_store, zarr, tmp_path) -> None:
    x, theta = grf_store.x, grf_store.theta
    for kw in (STREAM, FAST):
        with pytest.raises(ValueError, match="x and theta need the same number of rows, got 320 and 300"):
            Regression(channels=SMALL).fit(x, np.asarray(theta[:300]), **kw)
    with pytest.raises(ValueError, match="x and x_pair need the same number of rows"):
        Contrastive(4, channels=SMALL).fit(x, x_pair=np.zeros((10, 16, 16)), **STREAM)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, d\)"):
        Regression(channels=SMALL).fit(x, np.zeros((STORE_ROWS, 2, 1)), **STREAM)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 8, 8\)"):
        AutoEncoder(4, channels=SMALL, x_shape=(8, 8)).fit(x, **STREAM)

    def disk(name: str, values: np.ndarray):
        arr = zarr.create_array(str(tmp_path / name), shape=values.shape, chunks=(4, *values.shape[1:]), dtype="f4")
        arr[:] = values
        return arr

    with pytest.raises(ValueError, match="at least 2 data sets, got 1"):
        AutoEncoder(4, channels=SMALL).fit(disk("one.zarr", np.ones((1, 16, 16))), **STREAM)
    one_finite = np.full((8, 16, 16), np.nan)
    one_finite[3] = 1.0
    with pytest.warns(UserWarning, match="dropped 7 of 8"), pytest.raises(ValueError, match="got 1 of 8"):
        AutoEncoder(4, channels=SMALL).fit(disk("nan1.zarr", one_finite), **STREAM)
    with pytest.raises(ValueError, match="every one of the 8 rows holds NaN or inf"):
        AutoEncoder(4, channels=SMALL).fit(disk("nan.zarr", np.full((8, 16, 16), np.nan)), **STREAM)
    # PCA streams at most 64 x 64 = 4096 features; a 65 x 65 store must be fitted in memory.
    rng = np.random.default_rng(0)
    big = disk("big.zarr", rng.normal(size=(8, 65, 65)))
    with pytest.raises(ValueError, match=r"PCA cannot stream data of 4225 features.*memory_limit_gb=None"):
        PCA(3).fit(big, device="cpu", memory_limit_gb=0)
    assert PCA(3).fit(big, device="cpu", memory_limit_gb=None).is_fitted  # the control: in memory it fits
    # Rank 2 data: a third streamed component is a rounding-level eigenvalue and is refused.
    rank2 = disk("rank2.zarr", (rng.normal(size=(40, 2)) @ rng.normal(size=(2, 16))).reshape(40, 4, 4))
    with pytest.raises(ValueError, match="fewer non-constant directions"):
        PCA(3).fit(rank2, device="cpu", memory_limit_gb=0)
    assert PCA(2).fit(rank2, device="cpu", memory_limit_gb=0).is_fitted  # the control
    with pytest.raises(ValueError, match="needs at least 5 data sets"):
        PCA(4).fit(disk("few.zarr", rng.normal(size=(4, 4, 4))), device="cpu", memory_limit_gb=0)


@pytest.mark.gpu
def test_streamed_fits_on_cuda(grf_store, tmp_path) -> None:
    x, theta = grf_store.x, grf_store.theta
    kw = {**STREAM, "device": "cuda"}
    reg = Regression(channels=SMALL).fit(x, theta, **kw, checkpoint=tmp_path / "r.ckpt")
    assert reg.device.type == "cuda" and math.isfinite(reg.history.best_val_loss)
    resumed = Regression(channels=SMALL).fit(
        x, theta, **{**kw, "max_epochs": 3}, checkpoint=tmp_path / "r.ckpt", resume=True
    )
    assert resumed.history.epochs == 3
    z = reg.encode(x)
    assert z.device.type == "cpu" and z.shape == (STORE_ROWS, 2)
    pca = PCA(6).fit(x, device="cuda", memory_limit_gb=0)
    ref = PCA(6).fit(np.asarray(x[:]), device="cpu")
    assert pca.device.type == "cuda"
    for i in range(6):  # float64 on both devices: float32 storage rounding, as on the CPU
        sign = torch.sign(pca.components[i].cpu() @ ref.components[i])
        torch.testing.assert_close(pca.components[i].cpu(), sign * ref.components[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.encode(x), ref.encode(x), atol=1e-4, rtol=1e-4)


def test_encode_passes_at_most_encode_elements_per_batch(grf_store, monkeypatch) -> None:
    # encode reads up to 4096 rows at a time but feeds the network batches of at most
    # _ENCODE_ELEMENTS input entries (bounded activations for large images); the summaries do
    # not depend on the batching beyond float32 rounding.
    x_mem = np.asarray(grf_store.x[:])
    ae = AutoEncoder(4, channels=SMALL).fit(x_mem, **FAST)
    whole = ae.encode(x_mem)
    monkeypatch.setattr("sbikit.compressors.base._ENCODE_ELEMENTS", 16 * 16 * 10)  # 10 rows of 16 x 16
    sizes: list[int] = []
    network = ae._encode
    monkeypatch.setattr(ae, "_encode", lambda xs: (sizes.append(len(xs)), network(xs))[1])
    for source in (x_mem, grf_store.x):  # in memory, and read from disk
        sizes.clear()
        batched = ae.encode(source)
        assert max(sizes) == 10 and sum(sizes) == STORE_ROWS
        torch.testing.assert_close(batched, whole, atol=1e-5, rtol=0)
