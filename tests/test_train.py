"""Tests for sbikit.train: the fit loop (convergence, early stopping, best weights, seeds, errors, LR decay)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from sbikit.flows import build_flow
from sbikit.inference.npe import npe_loss
from sbikit.train import FitResult, default_batch_size, evaluate, fit


def _regression(n: int = 400, d: int = 3, noise: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.linspace(-2.0, 3.0, d)
    y = x @ w + 1.5 + noise * torch.randn(n, generator=gen)
    return x, y


def _mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def _model(seed: int = 0, d: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d, 1)


class _Recorder:
    """Wraps a loss; remembers the rows of every call made in eval mode (the validation set)."""

    def __init__(self, loss=_mse) -> None:
        self.loss = loss
        self.val_batches: list[tuple[Tensor, ...]] = []
        self.train_calls = 0

    def __call__(self, model: nn.Module, *batch: Tensor) -> Tensor:
        if model.training:
            self.train_calls += 1
        else:
            self.val_batches.append(tuple(t.clone() for t in batch))
        return self.loss(model, *batch)


def test_loss_decreases() -> None:
    x, y = _regression()
    result = fit(_model(), _mse, (x, y), seed=0, learning_rate=0.05, max_epochs=40, progress=False)
    assert isinstance(result, FitResult)
    # The target's variance is ~14; the noise floor is 0.01.
    assert result.train_loss[-1] < 0.05 * result.train_loss[0]
    assert result.best_val_loss < 0.05
    assert all(math.isfinite(v) for v in result.train_loss + result.val_loss)


def test_early_stopping_and_history_lengths() -> None:
    x, y = _regression()
    result = fit(_model(), _mse, (x, y), seed=0, learning_rate=0.05, max_epochs=500, patience=5, progress=False)
    assert result.stopped_early
    assert 6 <= result.epochs < 500
    # Replay the documented rule: stop once `patience` epochs in a row fail to beat the best
    # validation loss by more than min_delta (1e-3); that must happen exactly at the last epoch.
    best, since, stop_at = math.inf, 0, None
    for epoch, v in enumerate(result.val_loss):
        since = 0 if v < best - 1e-3 else since + 1
        best = min(best, v)
        if since >= 5:
            stop_at = epoch
            break
    assert stop_at == result.epochs - 1
    assert len(result.train_loss) == len(result.val_loss) == len(result.learning_rate) == result.epochs
    assert 0 <= result.best_epoch < result.epochs
    assert result.train_time > 0
    d = result.to_dict()
    assert d["epochs"] == result.epochs and d["best_val_loss"] == result.best_val_loss


def test_no_early_stop_when_max_epochs_reached() -> None:
    x, y = _regression()
    result = fit(_model(), _mse, (x, y), seed=0, learning_rate=1e-3, max_epochs=3, progress=False)
    assert not result.stopped_early
    assert result.epochs == 3
    assert len(result.train_loss) == len(result.val_loss) == len(result.learning_rate) == 3


def test_best_weights_are_restored() -> None:
    # A large learning rate with small batches makes the validation loss fluctuate; with
    # min_delta=0, stopping early means the best epoch lies `patience` epochs before the last,
    # so the final weights are not the best ones and restoring them is not a no-op.
    x, y = _regression(n=300, noise=0.5)
    model = _model()
    rec = _Recorder()
    result = fit(
        model,
        rec,
        (x, y),
        seed=1,
        batch_size=8,
        learning_rate=0.3,
        max_epochs=300,
        patience=8,
        min_delta=0.0,
        clip_norm=None,
        lr_patience=1000,
        progress=False,
    )
    assert result.stopped_early
    assert result.best_epoch == result.epochs - 1 - 8
    assert result.val_loss[-1] > result.best_val_loss
    # best_epoch is the epoch of the smallest validation loss.
    assert result.best_val_loss == min(result.val_loss)
    assert result.val_loss.index(min(result.val_loss)) == result.best_epoch
    # All validation calls saw the same rows: the held-out split.
    val = rec.val_batches[0]
    assert all(torch.equal(b[0], val[0]) for b in rec.val_batches)
    assert len(val[0]) == round(0.1 * len(x))
    assert evaluate(model, _mse, val) == result.val_loss[result.best_epoch]
    assert not model.training


def test_same_seed_same_result_different_seed_different() -> None:
    x, y = _regression()
    kwargs = dict(learning_rate=0.01, max_epochs=5, batch_size=32, progress=False)
    m1, m2, m3 = _model(0), _model(0), _model(0)
    r1 = fit(m1, _mse, (x, y), seed=11, **kwargs)
    r2 = fit(m2, _mse, (x, y), seed=11, **kwargs)
    r3 = fit(m3, _mse, (x, y), seed=12, **kwargs)
    assert r1.train_loss == r2.train_loss and r1.val_loss == r2.val_loss  # bitwise
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert r1.train_loss != r3.train_loss


def test_fit_does_not_touch_the_global_rng() -> None:
    x, y = _regression()
    model = _model()
    state = torch.get_rng_state()
    fit(model, _mse, (x, y), seed=0, max_epochs=2, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_batch_size_sets_steps_per_epoch() -> None:
    x, y = _regression(n=100)
    rec = _Recorder()
    fit(_model(), rec, (x, y), seed=0, batch_size=16, max_epochs=2, validation_fraction=0.2, progress=False)
    # 80 training rows in batches of 16 -> 5 steps per epoch.
    assert rec.train_calls == 2 * 5
    assert all(len(b[0]) == 20 for b in rec.val_batches)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param((torch.randn(10, 3), torch.randn(9)), id="mismatched-rows"),
        pytest.param((torch.randn(1, 3), torch.randn(1)), id="n=1"),
        pytest.param((), id="no-data"),
    ],
)
def test_bad_data_raises(data: tuple[Tensor, ...]) -> None:
    with pytest.raises(ValueError):
        fit(_model(), _mse, data, max_epochs=1, progress=False)


def test_mismatched_rows_message_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"same number of rows.*\(10, 3\).*\(9,\)"):
        fit(_model(), _mse, (torch.randn(10, 3), torch.randn(9)), max_epochs=1, progress=False)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_validation_fraction_raises(fraction: float) -> None:
    x, y = _regression(n=50)
    with pytest.raises(ValueError, match="validation_fraction"):
        fit(_model(), _mse, (x, y), validation_fraction=fraction, max_epochs=1, progress=False)


@pytest.mark.parametrize("kwargs", [{"patience": 0}, {"max_epochs": 0}])
def test_bad_patience_or_epochs_raises(kwargs: dict) -> None:
    x, y = _regression(n=50)
    with pytest.raises(ValueError, match="patience and max_epochs"):
        fit(_model(), _mse, (x, y), progress=False, **{"max_epochs": 1, **kwargs})


def test_model_without_parameters_raises() -> None:
    x, y = _regression(n=50)
    model = nn.Linear(3, 1)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, _mse, (x, y), max_epochs=1, progress=False)


def test_learning_rate_decays_on_plateaus() -> None:
    x, y = _regression()
    result = fit(
        _model(),
        _mse,
        (x, y),
        seed=0,
        learning_rate=0.05,
        max_epochs=40,
        patience=1000,
        lr_patience=2,
        lr_factor=0.5,
        min_learning_rate=1e-4,
        progress=False,
    )
    lrs = result.learning_rate
    assert lrs[0] == 0.05
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < lrs[0]
    assert min(lrs) >= 1e-4
    # Each change is one multiplication by lr_factor (or a clamp to the floor).
    for a, b in zip(lrs, lrs[1:], strict=False):
        assert b == a or b == pytest.approx(a * 0.5) or b == 1e-4
    assert not result.stopped_early and result.epochs == 40


def test_cosine_learning_rate_formula() -> None:
    from sbikit.train import cosine_learning_rate as lr_at

    assert lr_at(0.0, 10, 1.0, warmup_epochs=2.0) == pytest.approx(1e-3)  # not zero: the first step moves
    assert lr_at(1.0, 10, 1.0, warmup_epochs=2.0) == pytest.approx(0.5)
    assert lr_at(2.0, 10, 1.0, warmup_epochs=2.0) == pytest.approx(1.0)
    assert lr_at(6.0, 10, 1.0, warmup_epochs=2.0) == pytest.approx(0.5)  # half-way down the cosine
    assert lr_at(10.0, 10, 1.0, min_learning_rate=0.1) == pytest.approx(0.1)
    assert lr_at(12.0, 10, 1.0, min_learning_rate=0.1) == pytest.approx(0.1)
    assert lr_at(0.0, 10, 1.0) == 1.0  # no warm-up


def test_cosine_schedule_warms_up_then_decays_every_step() -> None:
    from sbikit.train import cosine_learning_rate

    x, y = _regression()
    kwargs = dict(seed=0, learning_rate=0.05, max_epochs=12, patience=1000, batch_size=90, progress=False)
    result = fit(_model(), _mse, (x, y), schedule="cosine", warmup_epochs=2.0, min_learning_rate=1e-4, **kwargs)
    steps = math.ceil(360 / 90)  # 400 rows, 40 held out
    # The recorded rate is that of each epoch's last step.
    expected = [
        cosine_learning_rate(e + (steps - 1) / steps, 12, 0.05, min_learning_rate=1e-4, warmup_epochs=2.0)
        for e in range(12)
    ]
    assert result.learning_rate == pytest.approx(expected)
    assert result.learning_rate[0] < result.learning_rate[1]  # warming up
    assert all(b < a for a, b in zip(result.learning_rate[2:], result.learning_rate[3:], strict=False))
    assert result.learning_rate[-1] < 0.05 * 0.01
    # Negative control: the plateau schedule keeps the initial rate while the loss improves.
    plateau = fit(_model(), _mse, (x, y), **kwargs)
    assert plateau.learning_rate[0] == 0.05


@pytest.mark.parametrize("kwargs", [{"schedule": "linear"}, {"schedule": "cosine", "warmup_epochs": 5.0}])
def test_bad_schedule_raises(kwargs: dict) -> None:
    x, y = _regression()
    with pytest.raises(ValueError, match="schedule|warmup_epochs"):
        fit(_model(), _mse, (x, y), max_epochs=5, progress=False, **kwargs)


def test_non_finite_loss_stops_and_keeps_best_weights() -> None:
    x, y = _regression()
    calls = {"n": 0}

    def exploding(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        if model.training:
            calls["n"] += 1
        loss = _mse(model, xb, yb)
        return loss * math.nan if calls["n"] > 30 else loss  # 2 epochs of 15 steps, then NaN

    model = _model()
    result = fit(model, exploding, (x, y), seed=0, batch_size=24, max_epochs=20, progress=False)
    assert result.epochs == 3
    assert math.isnan(result.train_loss[-1])
    assert result.best_epoch in (0, 1)
    assert math.isfinite(result.best_val_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fit_trains_a_flow() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(600, 1, generator=gen)
    u = 2.0 * c + 0.1 * torch.randn(600, 2, generator=gen)
    flow = build_flow("maf", 2, (1,), hidden_features=16, num_transforms=2)
    flow.set_standardization(u, c)
    result = fit(flow, npe_loss, (u, c), seed=0, max_epochs=15, learning_rate=3e-3, progress=False)
    assert result.best_val_loss < result.val_loss[0] - 0.5


# -- default_batch_size ---------------------------------------------------------------------


def test_default_batch_size_properties() -> None:
    sizes = [1, 2, 31, 100, 511, 512, 1000, 4096, 8191, 8192, 10_000, 10**6]
    bs = [default_batch_size(n) for n in sizes]
    cap = default_batch_size(10**6)
    assert 32 <= cap <= 512  # a fixed cap, whatever its value
    assert all(isinstance(b, int) and 32 <= b <= cap for b in bs)
    assert all(b2 >= b1 for b1, b2 in zip(bs, bs[1:], strict=False))  # non-decreasing in n
    assert default_batch_size(100) == 32
    assert default_batch_size(16 * cap) == cap
    for n in range(512, 16 * cap + 1, 97):
        assert n // default_batch_size(n) >= 16  # at least 16 steps per epoch below the cap


# -- OverfitRule and the weight average -------------------------------------------------------------


def _overfitting_setup() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    """A wide MLP on 150 noisy rows: it memorises the training rows within a few epochs."""
    x, y = _regression(n=150, d=3, noise=1.0, seed=1)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)), (x, y)


COSINE = dict(
    seed=0, schedule="cosine", learning_rate=1e-2, max_epochs=60, batch_size=16, patience=1000, progress=False
)


def test_overfit_rule_fires_on_an_overfitting_run_and_regularises() -> None:
    from sbikit.train import OverfitRule

    model, data = _overfitting_setup()
    plain = fit(model, _mse, data, validation_fraction=0.3, **COSINE)
    model, data = _overfitting_setup()
    rule = OverfitRule(patience=3, weight_decay=1.0)
    ruled = fit(model, _mse, data, validation_fraction=0.3, on_overfit=rule, **COSINE)
    assert plain.regularized_from is None
    k = ruled.regularized_from
    assert k is not None and 3 <= k < 60
    # Identical up to the trigger (same split, batches and steps), different after it.
    assert ruled.train_loss[:k] == plain.train_loss[:k]
    assert ruled.val_loss[:k] == plain.val_loss[:k]
    assert ruled.train_loss[k:] != plain.train_loss[k:]
    # It fired because the validation loss stalled for 3 epochs while the training loss fell.
    best = min(range(k), key=lambda e: ruled.val_loss[e])
    assert k - 1 - best >= 3 and ruled.train_loss[k - 1] < ruled.train_loss[best]
    # The weight-decayed continuation fits the training rows less closely than the plain run.
    assert ruled.train_loss[-1] > plain.train_loss[-1]


def test_overfit_rule_does_not_fire_while_validation_improves() -> None:
    """A run whose validation loss keeps falling is unchanged by the rule, to the last bit."""
    from sbikit.train import OverfitRule

    x, y = _regression()
    kwargs = dict(seed=0, schedule="cosine", learning_rate=0.01, max_epochs=8, progress=False)
    a, b = _model(), _model()
    ra = fit(a, _mse, (x, y), **kwargs)
    rb = fit(b, _mse, (x, y), on_overfit=OverfitRule(patience=3, weight_decay=1.0), **kwargs)
    assert rb.regularized_from is None
    assert ra.val_loss == rb.val_loss and ra.train_loss == rb.train_loss
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_overfit_rule_restart_ends_training_after_restart_epochs() -> None:
    from sbikit.train import OverfitRule, cosine_learning_rate

    model, data = _overfitting_setup()
    rule = OverfitRule(patience=3, weight_decay=1.0, restart_epochs=10, restart_factor=0.5)
    result = fit(model, _mse, data, validation_fraction=0.3, on_overfit=rule, **COSINE)
    k = result.regularized_from
    assert k is not None and result.epochs == k + 10 and not result.stopped_early
    peak = 0.5 * cosine_learning_rate(k, 60, 1e-2, min_learning_rate=1e-5)
    assert max(result.learning_rate[k:]) <= peak
    assert result.learning_rate[-1] < 0.05 * peak


def test_weight_average_is_validated_and_returned_with_the_models_buffers() -> None:
    x, y = _regression()
    x = x + 5.0  # batch-norm statistics far from their initial (0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 1))
    result = fit(model, _mse, (x, y), seed=0, learning_rate=0.05, max_epochs=10, ema_decay=0.9, progress=False)
    # The returned model (the average) fits: the target's variance is ~14, its noise 0.01.
    assert math.isfinite(result.best_val_loss) and evaluate(model, _mse, (x, y)) < 0.5 * float(y.var())
    # The running statistics came with it (an average that kept its initial buffers has mean 0).
    assert float(model[0].running_mean.min()) > 2.0


def test_patience_only_decides_when_to_stop() -> None:
    """A run with a shorter patience is a prefix of the longer run, stopped where the rule says.

    This is what lets ``benchmarks/replay_patience.py`` choose NPE's cosine patience from
    recorded validation curves (docs/defaults.md, thirteenth round).
    """
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "replay_patience.py"
    spec = importlib.util.spec_from_file_location("replay_patience", path)
    assert spec is not None and spec.loader is not None
    replay_patience = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("replay_patience", replay_patience)  # its dataclass looks itself up there
    spec.loader.exec_module(replay_patience)

    x, y = _regression(n=300, noise=0.5)
    kwargs = dict(
        seed=1, batch_size=8, learning_rate=0.3, schedule="cosine", warmup_epochs=1.0, ema_decay=0.9, progress=False
    )
    long = fit(_model(), _mse, (x, y), max_epochs=40, patience=1000, **kwargs)
    short_patience = 3
    expected = replay_patience.replay(long.val_loss, short_patience)
    assert expected.epochs < long.epochs  # the rule fires: a real test of the stop
    short = fit(_model(), _mse, (x, y), max_epochs=40, patience=short_patience, **kwargs)
    assert short.stopped_early and short.epochs == expected.epochs
    assert short.val_loss == long.val_loss[: short.epochs]
    assert short.best_epoch == expected.best_epoch and short.best_val_loss == expected.best_val
