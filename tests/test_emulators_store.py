"""Emulators trained from arrays on disk (a simulation store): read into memory or streamed (issue 8)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import sbikit
from sbikit.emulators import ConditionalVAE, ConditionalWGAN

zarr = pytest.importorskip("zarr")

ROWS, CHUNK = 320, 64  # 5 chunks of 64 rows
SIGMA = 0.5  # x | theta ~ N(theta, SIGMA^2 I), theta ~ U[-2, 2]^2
STREAM = {"memory_limit_gb": 0}
KINDS = ("cvae", "wgan")


def _make(kind: str, **kw):
    if kind == "cvae":
        return ConditionalVAE(2, hidden_features=16, channels=(4, 8), **kw)
    return ConditionalWGAN(2, hidden_features=16, channels=(4, 8), **kw)


def _fit_kw(kind: str) -> dict:
    if kind == "cvae":
        return {"seed": 0, "max_epochs": 2, "device": "cpu", "progress": False, "patience": 50}
    return {"seed": 0, "max_epochs": 2, "batch_size": 32, "critic_steps": 2, "device": "cpu", "progress": False}


def _weights(emu) -> list[torch.Tensor]:
    return [v.detach().cpu().clone() for v in emu.state_dict().values()]


def _same(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(_weights(a), _weights(b), strict=True))


def _streamed(caplog) -> bool:
    return any(r.name == "sbikit.train" and "streaming" in r.getMessage() for r in caplog.records)


def _disk(path, values: np.ndarray):
    arr = zarr.create_array(str(path), shape=values.shape, chunks=(CHUNK, *values.shape[1:]), dtype="f4")
    arr[:] = values
    return arr


@pytest.fixture(scope="module")
def vector_store(tmp_path_factory):
    """``theta`` (320, 2) and ``x`` (320, 2) of the known Gaussian problem as zarr arrays, and numpy copies."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(-2, 2, size=(ROWS, 2)).astype(np.float32)
    x = (theta + SIGMA * rng.standard_normal(theta.shape)).astype(np.float32)
    root = tmp_path_factory.mktemp("emu_store")
    return _disk(root / "theta.zarr", theta), _disk(root / "x.zarr", x), theta, x


@pytest.fixture(scope="module")
def grf_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("emu_grf") / "grf.zarr"
    return sbikit.simulate(
        "grf", ROWS, store=path, chunk_size=CHUNK, seed=0, simulator_kwargs={"size": 16}, progress=False
    )


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_fit_standardises_like_memory_and_repeats(kind, vector_store, caplog) -> None:
    theta_d, x_d, theta, x = vector_store
    with caplog.at_level(logging.INFO, logger="sbikit.train"):
        a = _make(kind).fit(theta_d, x_d, **STREAM, **_fit_kw(kind))
    assert _streamed(caplog)
    assert a.is_fitted and a.x_shape == (2,) and a.theta_dim == 2
    # Same seed, same stream (split, chunk order, batches): identical weights; another seed differs.
    assert _same(a, _make(kind).fit(theta_d, x_d, **STREAM, **_fit_kw(kind)))
    assert not _same(a, _make(kind).fit(theta_d, x_d, **STREAM, **{**_fit_kw(kind), "seed": 1}))
    # One float64 streaming pass gives the in-memory float32 statistics to 1e-5.
    mem = _make(kind).fit(theta, x, **_fit_kw(kind))
    for key in ("theta_shift", "theta_scale", "x_shift", "x_scale"):
        torch.testing.assert_close(getattr(a, key), getattr(mem, key), atol=1e-5, rtol=1e-5)
    # Control: the statistics of half the rows differ by far more than that tolerance.
    assert float((torch.as_tensor(x[:160]).std(0) - mem.x_scale).abs().max()) > 1e-3
    out = a.simulate(theta[:5].astype(np.float64), seed=0)
    assert out.shape == (5, 2) and np.isfinite(out).all()
    # Below memory_limit_gb (default 4 GB) arrays on disk are read and train exactly like numpy input.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sbikit.train"):
        loaded = _make(kind).fit(theta_d, x_d, **_fit_kw(kind))
    assert not _streamed(caplog) and _same(loaded, mem)
    # Mixed: theta in memory, x on disk, streamed.
    assert _same(a, _make(kind).fit(theta, x_d, **STREAM, **_fit_kw(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_images_from_a_simulation_store(kind, grf_store) -> None:
    emu = _make(kind).fit(grf_store.theta, grf_store.x, **STREAM, **_fit_kw(kind))
    x_mem = torch.as_tensor(np.asarray(grf_store.x[:]))
    # Images: one pooled mean and scale (float64 pass vs float32 reduction: 1e-5).
    assert emu.x_shape == (16, 16) and emu.x_shift.shape == (16, 16)
    torch.testing.assert_close(emu.x_shift, torch.full((16, 16), float(x_mem.mean())), atol=1e-5, rtol=0)
    torch.testing.assert_close(emu.x_scale, torch.full((16, 16), float(x_mem.std())), atol=0, rtol=1e-5)
    out = emu.simulate(np.asarray(grf_store.theta[:3], dtype=np.float64), seed=1)
    assert out.shape == (3, 16, 16) and np.isfinite(out).all()


def test_unconditional_wgan_from_disk(vector_store) -> None:
    _, x_d, _, x = vector_store
    emu = ConditionalWGAN(2, hidden_features=16).fit(None, x_d, **STREAM, **_fit_kw("wgan"))
    assert not emu.conditional and emu.sample(7, seed=0).shape == (7, 2)
    torch.testing.assert_close(emu.x_shift, torch.as_tensor(x).mean(0), atol=1e-5, rtol=0)
    assert emu.history.epochs == 2 and all(math.isfinite(v) for v in emu.history.val_wasserstein)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_rows_of_a_store_are_dropped_with_one_warning(kind, vector_store, tmp_path) -> None:
    _, _, theta, x = vector_store
    x_nan = x.copy()
    x_nan[10:17] = np.nan
    theta_nan = theta.copy()
    theta_nan[300:] = np.nan  # a chunk not simulated yet: theta NaN too
    theta_d, x_d = _disk(tmp_path / "theta.zarr", theta_nan), _disk(tmp_path / "x.zarr", x_nan)
    keep = np.r_[0:10, 17:300]
    ref = _make(kind).fit(theta[keep], x[keep], **_fit_kw(kind))
    for kw in (STREAM, {}):  # streamed, and read into memory: the same rows go
        with pytest.warns(UserWarning, match="dropped 27 of 320 rows whose x or theta holds NaN or inf") as rec:
            emu = _make(kind).fit(theta_d, x_d, **kw, **_fit_kw(kind))
        assert len(rec) == 1 and rec[0].filename == __file__  # one warning, at the user's call
        for key in ("theta_shift", "theta_scale", "x_shift", "x_scale"):
            torch.testing.assert_close(getattr(emu, key), getattr(ref, key), atol=1e-5, rtol=1e-5)
    # Data in memory keep their strict check: nothing is dropped silently.
    with pytest.raises(ValueError, match="x holds NaN or inf in 7 of 320 rows"):
        _make(kind).fit(theta, x_nan, **_fit_kw(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_fit_resumes_from_a_checkpoint(kind, vector_store, tmp_path, caplog) -> None:
    theta_d, x_d, theta, x = vector_store
    kw = {**_fit_kw(kind), "max_epochs": 3}
    full = _make(kind).fit(theta_d, x_d, **STREAM, **kw)
    ckpt = tmp_path / f"{kind}.ckpt"
    _make(kind).fit(theta_d, x_d, **STREAM, **{**kw, "max_epochs": 1}, checkpoint=ckpt)  # "killed" after epoch 1
    with caplog.at_level(logging.INFO, logger="sbikit"):
        resumed = _make(kind).fit(theta_d, x_d, **STREAM, **kw, checkpoint=ckpt, resume=True)
    assert any("resuming from" in r.getMessage() and "after epoch 1" in r.getMessage() for r in caplog.records)
    assert _same(resumed, full)
    # The checkpoint records a streamed run: resuming it with the data in memory is refused.
    with pytest.raises(ValueError, match="different training run"):
        _make(kind).fit(theta, x, **kw, checkpoint=ckpt, resume=True)


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_fit_errors(kind, vector_store, tmp_path) -> None:
    theta_d, x_d, theta, x = vector_store
    kw = _fit_kw(kind)
    for limit in (STREAM, {}):
        with pytest.raises(ValueError, match="x and theta need the same number of rows, got 320 and 300"):
            _make(kind).fit(theta[:300], x_d, **limit, **kw)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 3\)"):
        _make(kind, theta_dim=3).fit(theta_d, x_d, **STREAM, **kw)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 5\)"):
        _make(kind, x_shape=(5,)).fit(theta_d, x_d, **STREAM, **kw)
    one = np.full((8, 2), np.nan, dtype=np.float32)
    one[3] = 1.0
    with pytest.warns(UserWarning, match="dropped 7 of 8"), pytest.raises(ValueError, match="got 1 of 8"):
        _make(kind).fit(_disk(tmp_path / "t1.zarr", one), _disk(tmp_path / "x1.zarr", one), **STREAM, **kw)
    nan = np.full((8, 2), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="every one of the 8 rows holds NaN or inf"):
        _make(kind).fit(theta[:8], _disk(tmp_path / "x8.zarr", nan), **kw)


def test_streamed_cvae_learns_the_known_gaussian(tmp_path) -> None:
    # Streaming changes how rows reach the optimiser, not what is learnt: a CVAE streamed from
    # 3,000 simulations in chunks of 64 (buffers of 16 chunks) matches the moments of
    # x | theta ~ N(theta, 0.25 I) within the allowances of the in-memory test (test_emulators:
    # 0.1 in the mean, 10% in the standard deviation, plus 4 Monte Carlo standard errors).
    rng = np.random.default_rng(5)
    theta = rng.uniform(-2, 2, size=(3000, 2)).astype(np.float32)
    x = (theta + SIGMA * rng.standard_normal(theta.shape)).astype(np.float32)
    emu = ConditionalVAE(4, hidden_features=64).fit(
        _disk(tmp_path / "t.zarr", theta),
        _disk(tmp_path / "x.zarr", x),
        seed=0,
        max_epochs=40,
        device="cpu",
        progress=False,
        **STREAM,
    )
    n = 4000
    mean_se, std_se = SIGMA / math.sqrt(n), SIGMA / math.sqrt(2 * (n - 1))
    for i, th in enumerate(([0.0, 0.0], [1.5, -1.0], [-1.0, 1.2])):
        s = emu.sample(n, theta=th, seed=10 + i)
        assert bool(((s.mean(0) - torch.tensor(th)).abs() <= 4 * mean_se + 0.1).all())
        assert bool(((s.std(0) - SIGMA).abs() <= 4 * std_se + 0.1 * SIGMA).all())
    # Control: the same check against a wrong noise level (2 SIGMA) fails.
    s = emu.sample(n, theta=[0.0, 0.0], seed=20)
    assert not bool(((s.std(0) - 2 * SIGMA).abs() <= 4 * std_se + 0.1 * 2 * SIGMA).all())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_fit_on_cuda(kind, grf_store) -> None:
    emu = _make(kind).fit(grf_store.theta, grf_store.x, **STREAM, **{**_fit_kw(kind), "device": "cuda"})
    assert emu.device.type == "cuda"
    out = emu.simulate(torch.as_tensor(np.asarray(grf_store.theta[:4])).cuda(), seed=0)
    assert out.device.type == "cuda" and out.shape == (4, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["cvae", "wgan"])
def test_streamed_pca_basis_equals_in_memory(kind, grf_store) -> None:
    # The CVAE's decoder="pca" and the WGAN's generator="pca" build their basis from the
    # training images: streamed, from one pass over the store's blocks (float64 scatter
    # matrix), it equals the in-memory basis up to sign.
    kw = {**_fit_kw(kind), "max_epochs": 1}
    option = {"decoder": "pca"} if kind == "cvae" else {"generator": "pca"}

    def make():
        return _make(kind, num_components=6, **option)

    streamed = make().fit(grf_store.theta, grf_store.x, **STREAM, **kw)
    mem = make().fit(np.asarray(grf_store.theta[:]), np.asarray(grf_store.x[:]), **kw)
    torch.testing.assert_close(streamed.pca_mean, mem.pca_mean, atol=1e-5, rtol=0)
    overlap = (streamed.pca_basis @ mem.pca_basis.T).abs()
    torch.testing.assert_close(overlap.diagonal(), torch.ones(6), atol=1e-3, rtol=0)
    # Control: a basis from half the images differs by far more than that.
    half = make().fit(np.asarray(grf_store.theta[:160]), np.asarray(grf_store.x[:160]), **kw)
    assert float((half.pca_basis @ mem.pca_basis.T).abs().diagonal().min()) < 0.99
