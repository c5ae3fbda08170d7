"""Tests for training checkpoints, resuming, and streaming data that stay on disk (sbikit.train)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import sbikit
import simulators
from sbikit.flows import build_flow
from sbikit.inference.npe import npe_loss
from sbikit.train import OverfitRule, StreamingData, fit, running_moments, stream_or_load

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def pairs() -> tuple[Tensor, Tensor]:
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(400, seed=0)
    x = sim.simulate(theta, seed=1)
    return sim.prior.to_unconstrained(theta.double()).float(), x


def new_flow(u: Tensor, x: Tensor) -> nn.Module:
    torch.manual_seed(0)
    flow = build_flow("maf", 2, (2,), hidden_features=8, num_transforms=2)
    flow.set_standardization(u, x)
    return flow


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


FIT = {"seed": 3, "patience": 3, "progress": False, "batch_size": 64}


# -- checkpoints and resume ----------------------------------------------------------------------
def test_resume_after_max_epochs_equals_uninterrupted(pairs, tmp_path):
    u, x = pairs
    full = new_flow(u, x)
    r_full = fit(full, npe_loss, (u, x), max_epochs=7, **FIT)
    ckpt = tmp_path / "run.ckpt"
    part = new_flow(u, x)
    r_part = fit(part, npe_loss, (u, x), max_epochs=3, checkpoint=ckpt, **FIT)
    assert r_part.epochs == 3 and ckpt.is_file()
    resumed = new_flow(u, x)
    r_res = fit(resumed, npe_loss, (u, x), max_epochs=7, checkpoint=ckpt, resume=True, **FIT)
    assert torch.equal(flat(resumed), flat(full))
    assert r_res.train_loss == r_full.train_loss and r_res.val_loss == r_full.val_loss
    assert r_res.learning_rate == r_full.learning_rate
    assert (r_res.epochs, r_res.best_epoch, r_res.stopped_early) == (
        r_full.epochs,
        r_full.best_epoch,
        r_full.stopped_early,
    )
    # Only the checkpoint is left in the folder: the temporary file was renamed over it.
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # loadable without running code
    assert state["epoch"] == 7


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "schedule",
    [
        {},
        {"schedule": "cosine", "warmup_epochs": 1.5},
        {"schedule": "cosine", "ema_decay": 0.9},  # the moving average of the weights is resumed too
    ],
)
def test_resume_after_crash_mid_epoch_equals_uninterrupted(pairs, tmp_path, schedule):
    """A run that dies in the middle of epoch 4 (after 3 checkpoints) resumes to the same result.

    The cosine schedule sets the rate from the epoch and step, so a resumed run follows it too.
    """
    u, x = pairs
    full = new_flow(u, x)
    r_full = fit(full, npe_loss, (u, x), max_epochs=6, **FIT, **schedule)
    steps_per_epoch = math.ceil((len(u) - round(0.1 * len(u))) / FIT["batch_size"])
    calls = 0

    def crashing_loss(model: nn.Module, *batch: Tensor) -> Tensor:
        nonlocal calls
        calls += model.training  # validation calls do not count
        if calls == 3 * steps_per_epoch + 2:
            raise Crash
        return npe_loss(model, *batch)

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        fit(new_flow(u, x), crashing_loss, (u, x), max_epochs=6, checkpoint=ckpt, **FIT, **schedule)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3
    resumed = new_flow(u, x)
    r_res = fit(resumed, npe_loss, (u, x), max_epochs=6, checkpoint=ckpt, resume=True, **FIT, **schedule)
    assert torch.equal(flat(resumed), flat(full))
    assert r_res.val_loss == r_full.val_loss
    assert r_res.learning_rate == r_full.learning_rate


def test_resume_after_the_overfit_rule_fired_equals_uninterrupted(tmp_path):
    """A run killed after its OverfitRule fired resumes with the weight decay and restarted schedule."""
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(150, 3, generator=gen)
    ys = xs @ torch.tensor([-2.0, 0.5, 3.0]) + torch.randn(150, generator=gen)  # noisy: a wide MLP memorises it

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))

    def mse(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
        return ((model(a).squeeze(-1) - b) ** 2).mean()

    kw = dict(
        seed=0,
        schedule="cosine",
        learning_rate=1e-2,
        max_epochs=30,
        batch_size=16,
        patience=1000,
        validation_fraction=0.3,
        ema_decay=0.9,
        on_overfit=OverfitRule(patience=3, weight_decay=1.0, restart_epochs=8, restart_factor=0.5),
        progress=False,
    )
    full = mlp()
    r_full = fit(full, mse, (xs, ys), **kw)
    k = r_full.regularized_from
    assert k is not None and r_full.epochs == k + 8
    steps = math.ceil(105 / 16)
    calls = 0

    def crashing(model: nn.Module, *batch: Tensor) -> Tensor:
        nonlocal calls
        calls += model.training
        if calls == (k + 2) * steps + 1:  # two epochs after the rule fired
            raise Crash
        return mse(model, *batch)

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        fit(mlp(), crashing, (xs, ys), checkpoint=ckpt, **kw)
    assert torch.load(ckpt, weights_only=True)["epoch"] == k + 2
    resumed = mlp()
    r_res = fit(resumed, mse, (xs, ys), checkpoint=ckpt, resume=True, **kw)
    assert torch.equal(flat(resumed), flat(full))
    assert (r_res.val_loss, r_res.learning_rate, r_res.regularized_from) == (
        r_full.val_loss,
        r_full.learning_rate,
        k,
    )


def test_resume_of_a_finished_run_returns_its_best_weights(pairs, tmp_path):
    u, x = pairs
    ckpt = tmp_path / "run.ckpt"
    first = new_flow(u, x)
    # patience 1 and an impossible min_delta: stops after 2 epochs.
    r1 = fit(first, npe_loss, (u, x), max_epochs=50, checkpoint=ckpt, min_delta=1e9, **(FIT | {"patience": 1}))
    assert r1.stopped_early and r1.epochs == 2
    again = new_flow(u, x)
    r2 = fit(
        again, npe_loss, (u, x), max_epochs=50, checkpoint=ckpt, resume=True, min_delta=1e9, **(FIT | {"patience": 1})
    )
    assert r2.epochs == 2 and r2.val_loss == r1.val_loss
    assert torch.equal(flat(again), flat(first))


def test_resume_without_checkpoint_file_starts_afresh(pairs, tmp_path):
    u, x = pairs
    a, b = new_flow(u, x), new_flow(u, x)
    fit(a, npe_loss, (u, x), max_epochs=2, **FIT)
    fit(b, npe_loss, (u, x), max_epochs=2, checkpoint=tmp_path / "new.ckpt", resume=True, **FIT)
    assert torch.equal(flat(a), flat(b))


def test_checkpoint_written_before_the_schedule_option_resumes(pairs, tmp_path):
    """Checkpoints of earlier versions lack the schedule entries; they were plateau runs and resume as such."""
    u, x = pairs
    full = new_flow(u, x)
    fit(full, npe_loss, (u, x), max_epochs=5, **FIT)
    ckpt = tmp_path / "old.ckpt"
    fit(new_flow(u, x), npe_loss, (u, x), max_epochs=2, checkpoint=ckpt, **FIT)
    state = torch.load(ckpt, weights_only=True)
    for key in ("schedule", "warmup_epochs", "max_epochs"):
        del state["fingerprint"][key]
    torch.save(state, ckpt)
    resumed = new_flow(u, x)
    fit(resumed, npe_loss, (u, x), max_epochs=5, checkpoint=ckpt, resume=True, **FIT)
    assert torch.equal(flat(resumed), flat(full))
    with pytest.raises(ValueError, match="schedule"):  # but not as a cosine run
        fit(new_flow(u, x), npe_loss, (u, x), max_epochs=5, checkpoint=ckpt, resume=True, schedule="cosine", **FIT)


def test_resume_with_other_settings_or_data_raises(pairs, tmp_path):
    u, x = pairs
    ckpt = tmp_path / "run.ckpt"
    fit(new_flow(u, x), npe_loss, (u, x), max_epochs=1, checkpoint=ckpt, **FIT)
    with pytest.raises(ValueError, match="different training run.*learning_rate: checkpoint 0.001, now 0.01"):
        fit(new_flow(u, x), npe_loss, (u, x), checkpoint=ckpt, resume=True, learning_rate=1e-2, **FIT)
    with pytest.raises(ValueError, match="different training run.*data"):
        fit(new_flow(u, x), npe_loss, (u, x + 1.0), checkpoint=ckpt, resume=True, **FIT)
    with pytest.raises(ValueError, match="different training run.*seed: checkpoint 3, now 4"):
        fit(new_flow(u, x), npe_loss, (u, x), checkpoint=ckpt, resume=True, **(FIT | {"seed": 4}))
    with pytest.raises(ValueError, match="resume=True needs checkpoint=PATH"):
        fit(new_flow(u, x), npe_loss, (u, x), resume=True, **FIT)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match=r"(?i)pickle|zip|invalid|load"):
        fit(new_flow(u, x), npe_loss, (u, x), checkpoint=tmp_path / "junk.ckpt", resume=True, **FIT)


def test_checkpoint_without_seed_records_the_drawn_seed(pairs, tmp_path):
    u, x = pairs
    ckpt = tmp_path / "run.ckpt"
    kw = FIT | {"seed": None}
    part = new_flow(u, x)
    fit(part, npe_loss, (u, x), max_epochs=2, checkpoint=ckpt, **kw)
    seed = torch.load(ckpt, weights_only=True)["seed"]
    resumed = new_flow(u, x)
    fit(resumed, npe_loss, (u, x), max_epochs=4, checkpoint=ckpt, resume=True, **kw)
    full = new_flow(u, x)
    fit(full, npe_loss, (u, x), max_epochs=4, **(FIT | {"seed": seed}))
    assert torch.equal(flat(resumed), flat(full))


def test_npe_fit_resume_pass_through(tmp_path):
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(300, seed=0)
    x = sim.simulate(theta, seed=1)
    kw = {"seed": 0, "progress": False}
    # A plateau schedule may be extended by a resumed run (raise max_epochs).
    npe = sbikit.NPE(sim.prior, flow="maf", device="cpu", hidden_features=8, num_transforms=1)
    plateau = kw | {"schedule": "plateau"}
    full = npe.fit(theta, x, max_epochs=4, **plateau)
    npe.fit(theta, x, max_epochs=2, checkpoint=tmp_path / "npe.ckpt", **plateau)
    resumed = npe.fit(theta, x, max_epochs=4, checkpoint=tmp_path / "npe.ckpt", resume=True, **plateau)
    assert resumed.info["val_loss"] == full.info["val_loss"]
    x_o = torch.tensor([0.0, 0.1])
    assert torch.equal(resumed.sample(50, x=x_o, seed=1), full.sample(50, x=x_o, seed=1))
    # A cosine schedule (NSF's default) is fixed by max_epochs: another budget is another run.
    nsf = sbikit.NPE(sim.prior, device="cpu", hidden_features=8, num_transforms=1)
    nsf.fit(theta, x, max_epochs=2, checkpoint=tmp_path / "nsf.ckpt", **kw)
    with pytest.raises(ValueError, match="max_epochs"):
        nsf.fit(theta, x, max_epochs=4, checkpoint=tmp_path / "nsf.ckpt", resume=True, **kw)
    nle = sbikit.NLE(sim.prior, device="cpu", hidden_features=8, num_transforms=1)
    nle.fit(theta, x, max_epochs=1, checkpoint=tmp_path / "nle.ckpt", **kw)
    assert nle.fit(theta, x, max_epochs=2, checkpoint=tmp_path / "nle.ckpt", resume=True, **kw).info["epochs"] == 2


# -- streaming ----------------------------------------------------------------------------------------
class RowRecorder(nn.Module):
    """A one-parameter model whose loss records which rows (by an id column) it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[Tensor] = []

    def loss(self, model: nn.Module, ids: Tensor, value: Tensor) -> Tensor:
        if model.training:
            self.seen.append(ids.clone())
        return ((value - model.w) ** 2).mean()


def test_streaming_visits_every_training_row_once_per_epoch():
    n = 1003
    ids = np.arange(n, dtype=np.float32)
    value = np.random.default_rng(0).normal(2.0, 1.0, n).astype(np.float32)
    data = StreamingData([ids, value], block_rows=50, buffer_blocks=3)
    model = RowRecorder()
    fit(
        model,
        model.loss,
        data,
        seed=0,
        batch_size=32,
        max_epochs=2,
        patience=5,
        progress=False,
        learning_rate=0.1,
        validation_fraction=0.2,
    )
    n_val = round(0.2 * n)
    epochs = [torch.cat(model.seen[: len(model.seen) // 2]), torch.cat(model.seen[len(model.seen) // 2 :])]
    for rows in epochs:
        assert len(rows) == n - n_val
        assert len(torch.unique(rows)) == n - n_val  # no row twice
    assert torch.equal(torch.sort(epochs[0]).values, torch.sort(epochs[1]).values)  # the same training rows
    assert not torch.equal(epochs[0], epochs[1])  # in another order
    sizes = [len(b) for b in model.seen[: len(model.seen) // 2]]
    assert set(sizes[:-1]) == {32}  # full batches across block and buffer boundaries
    # The fitted constant approaches the mean of the data (a sanity check that it trains).
    assert abs(float(model.w.detach()) - float(value.mean())) < 0.5


def test_running_moments_match_whole_data():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 2.0, (517, 3))
    b = rng.normal(-1.0, 0.5, (517, 2, 4, 4))
    data = StreamingData([a, b], block_rows=40)
    (ma, sa, na), (mb, sb, nb) = running_moments(data, global_entries=[False, True])
    ta, tb = torch.as_tensor(a, dtype=torch.float32).double(), torch.as_tensor(b, dtype=torch.float32).double()
    # Float64 accumulation of float32 data: agreement to float64 rounding, far below 1e-10.
    torch.testing.assert_close(ma, ta.mean(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(sa, ta.std(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(mb, tb.mean(), atol=1e-10, rtol=0)
    torch.testing.assert_close(sb, tb.reshape(-1).std(), atol=1e-10, rtol=0)
    assert na == nb == 517


def test_streaming_resume_equals_uninterrupted(pairs, tmp_path):
    u, x = pairs

    def stream() -> StreamingData:
        return StreamingData([u.numpy(), x.numpy()], block_rows=30, buffer_blocks=2)

    full = new_flow(u, x)
    r_full = fit(full, npe_loss, stream(), max_epochs=4, **FIT)
    part = new_flow(u, x)
    fit(part, npe_loss, stream(), max_epochs=2, checkpoint=tmp_path / "s.ckpt", **FIT)
    resumed = new_flow(u, x)
    r_res = fit(resumed, npe_loss, stream(), max_epochs=4, checkpoint=tmp_path / "s.ckpt", resume=True, **FIT)
    assert torch.equal(flat(resumed), flat(full)) and r_res.val_loss == r_full.val_loss


def test_stream_or_load_decides_by_size(tmp_path):
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(100, 5), chunks=(10, 5), dtype="f4")
    arr[:] = 1.0
    loaded, streamed = stream_or_load([arr], memory_limit_gb=1.0)
    assert not streamed and isinstance(loaded[0], np.ndarray)
    kept, streamed = stream_or_load([arr], memory_limit_gb=0)
    assert streamed and kept[0] is arr
    plain = np.ones((3, 2))
    assert stream_or_load([plain], memory_limit_gb=0) == ([plain], False)


def test_npe_and_nle_from_a_store_streamed_and_in_memory(tmp_path):
    sim = simulators.get("two_moons")
    store = sbikit.simulate(sim, 2000, store=tmp_path / "s.zarr", chunk_size=200, seed=0, progress=False)
    kw = {"seed": 0, "max_epochs": 5, "progress": False}
    npe = sbikit.NPE(sim.prior, device="cpu", hidden_features=16, num_transforms=2)
    streamed = npe.fit(store.theta, store.x, memory_limit_gb=0, **kw)
    loaded = npe.fit(store.theta, store.x, **kw)
    # The streamed z-scoring equals the in-memory one (float64 vs float32 accumulation).
    for name in ("y_shift", "y_scale", "c_shift", "c_scale"):
        torch.testing.assert_close(getattr(streamed.flow, name), getattr(loaded.flow, name), atol=1e-5, rtol=1e-5)
    assert streamed.info["num_simulations"] == loaded.info["num_simulations"] == 2000
    # Both learn from x: the loss (nats, in the prior's unconstrained coordinates, where
    # U(-1, 1) becomes a logistic distribution of entropy 2 nats per parameter) falls
    # below the prior's 4.0. It reaches 3.2-3.6 in 5 epochs for seeds 0-2, and its Monte
    # Carlo error on 200 validation rows is about 0.1.
    for post in (streamed, loaded):
        assert post.info["best_val_loss"] < 4.0
    samples = streamed.sample(200, x=torch.tensor([0.0, 0.1]), seed=0)
    assert samples.shape == (200, 2) and bool(sim.prior.in_support(samples).all())
    nle = sbikit.NLE(sim.prior, device="cpu", hidden_features=16, num_transforms=2)
    post = nle.fit(store.theta, store.x, memory_limit_gb=0, **kw)
    assert post.info["num_simulations"] == 2000 and math.isfinite(post.info["best_val_loss"])


def test_streaming_drops_nan_rows_with_a_warning(tmp_path):
    sim = simulators.get("two_moons")
    store = sbikit.simulate(sim, 600, store=tmp_path / "s.zarr", chunk_size=100, seed=0, progress=False)
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["x"][10:17] = np.nan
    npe = sbikit.NPE(sim.prior, device="cpu", hidden_features=8, num_transforms=1)
    with pytest.warns(UserWarning, match="dropped 7 of 600 rows whose theta or x holds NaN or inf"):
        post = npe.fit(store.theta, store.x, memory_limit_gb=0, seed=0, max_epochs=1, progress=False)
    assert post.info["num_simulations"] == 593


@pytest.mark.gpu
def test_cuda_in_memory_and_streamed(tmp_path):
    sim = simulators.get("two_moons")
    store = sbikit.simulate(sim, 2000, store=tmp_path / "s.zarr", chunk_size=200, seed=0, progress=False)
    npe = sbikit.NPE(sim.prior, device="cuda", hidden_features=16, num_transforms=2)
    for limit in (None, 0):
        post = npe.fit(
            store.theta,
            store.x,
            memory_limit_gb=limit,
            seed=0,
            max_epochs=2,
            progress=False,
            checkpoint=tmp_path / f"c{limit}.ckpt",
        )
        assert post.device.type == "cuda" and math.isfinite(post.info["best_val_loss"])
        resumed = npe.fit(
            store.theta,
            store.x,
            memory_limit_gb=limit,
            seed=0,
            max_epochs=3,
            progress=False,
            checkpoint=tmp_path / f"c{limit}.ckpt",
            resume=True,
        )
        assert resumed.info["epochs"] == 3
