"""Bad inputs to NPE.fit and to the posterior: each raises (or warns) with a message that names the problem."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sbikit import NPE, BoxUniform, FlowPosterior

TINY = {"hidden_features": 8, "num_transforms": 1, "device": "cpu"}
FAST = {"seed": 0, "max_epochs": 1, "progress": False}


def _prior() -> BoxUniform:
    return BoxUniform([-1.0, -2.0], [1.0, 3.0])


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    theta = _prior().sample(n, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([theta, theta.sum(1, keepdim=True)], 1) + 0.1 * torch.randn(n, 3, generator=gen)
    return theta, x


@pytest.fixture(scope="module")
def posterior() -> FlowPosterior:
    theta, x = _data()
    return NPE(_prior(), **TINY).fit(theta, x, **FAST)


# -- NPE.fit ------------------------------------------------------------------------------


def test_nonfinite_x_rows_are_dropped_with_a_counted_warning() -> None:
    theta, x = _data()
    x[[3, 50, 120], 1] = math.nan
    x[7, 0] = math.inf
    x[9, 2] = -math.inf
    with pytest.warns(UserWarning, match="dropped 5 of 200"):
        post = NPE(_prior(), **TINY).fit(theta, x, **FAST)
    assert post.info["num_simulations"] == 195
    assert post.sample(5, x=x[0], seed=0).shape == (5, 2)


def test_nonfinite_x_rows_are_dropped_from_numpy_input() -> None:
    theta, x = _data()
    x_np = x.numpy().astype(np.float64)
    x_np[0] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 of 200"):
        NPE(_prior(), **TINY).fit(theta.numpy(), x_np, **FAST)


def test_finite_data_gives_no_warning() -> None:
    theta, x = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        posterior = NPE(_prior(), **TINY).fit(theta, x, **FAST)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert posterior.info["num_simulations"] == len(x)  # no row dropped


def test_drop_warning_points_at_the_caller() -> None:
    theta, x = _data()
    x[0] = math.nan
    with pytest.warns(UserWarning, match="dropped 1 of 200") as record:
        NPE(_prior(), **TINY).fit(theta, x, **FAST)
    assert record[0].filename == __file__


def test_all_rows_nonfinite_raises() -> None:
    theta, x = _data(50)
    x[:, 0] = math.nan
    with pytest.raises(ValueError, match="all 50 simulations"):
        NPE(_prior(), **TINY).fit(theta, x, **FAST)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_theta_raises(bad: float) -> None:
    theta, x = _data()
    theta[4, 1] = bad
    with pytest.raises(ValueError, match="theta has 1 row"):
        NPE(_prior(), **TINY).fit(theta, x, **FAST)


@pytest.mark.parametrize("value", [1.5, -1.0, 1.0])  # outside, and exactly on each bound
def test_theta_outside_the_prior_support_names_the_bounds(value: float) -> None:
    theta, x = _data()
    theta[10, 0] = value
    with pytest.raises(ValueError, match=r"outside the prior support") as err:
        NPE(_prior(), **TINY).fit(theta, x, **FAST)
    msg = str(err.value)
    assert "low=[-1.0, -2.0]" in msg and "high=[1.0, 3.0]" in msg
    assert "row 10" in msg


@pytest.mark.parametrize("shape", [(200, 3), (200, 1), (200,), (200, 2, 1)])
def test_theta_of_wrong_width_names_the_expected_shape(shape: tuple[int, ...]) -> None:
    _, x = _data()
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\)"):
        NPE(_prior(), **TINY).fit(torch.zeros(shape), x, **FAST)


def test_mismatched_rows_raise() -> None:
    theta, x = _data()
    with pytest.raises(ValueError, match="same number of rows.*200 and 150"):
        NPE(_prior(), **TINY).fit(theta, x[:150], **FAST)


def test_non_numeric_x_raises_type_error() -> None:
    theta, _ = _data(3)
    with pytest.raises(TypeError, match="x must be"):
        NPE(_prior(), **TINY).fit(theta, [["a", "b", "c"]] * 3, **FAST)


def test_unknown_flow_raises() -> None:
    with pytest.raises(ValueError, match="flow must be one of"):
        NPE(_prior(), flow="glow")


def test_one_dimensional_inputs_are_accepted() -> None:
    prior = BoxUniform([0.0], [1.0])
    theta = prior.sample(100, seed=0)[:, 0]  # (n,)
    x = theta + 0.1 * torch.randn(100)  # (n,)
    post = NPE(prior, **TINY).fit(theta, x, **FAST)
    assert post.x_shape == (1,)
    assert post.sample(4, x=torch.tensor([0.5]), seed=0).shape == (4, 1)


# -- the posterior --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2,), (4,), (3, 2), (1, 3, 1), ()])
def test_sample_with_x_of_wrong_shape_names_the_expected_shape(posterior: FlowPosterior, shape) -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(3,\).*\(m, 3\)"):
        posterior.sample(5, x=torch.zeros(shape))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_sample_with_nonfinite_x_raises(posterior: FlowPosterior, bad: float) -> None:
    x_o = torch.zeros(3)
    x_o[1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        posterior.sample(5, x=x_o)
    with pytest.raises(ValueError, match="NaN or inf"):
        posterior.sample(5, x=torch.stack([torch.zeros(3), x_o]))
    with pytest.raises(ValueError, match="NaN or inf"):
        posterior.log_prob(torch.zeros(1, 2), x=x_o)


def test_x_none_raises(posterior: FlowPosterior) -> None:
    with pytest.raises(ValueError, match=r"x is required.*\(3,\)"):
        posterior.sample(5, x=None)
    with pytest.raises(ValueError, match="x is required"):
        posterior.log_prob(torch.zeros(1, 2), x=None)
    with pytest.raises(ValueError, match="x is required"):
        posterior.map(None)


def test_auto_flow_picks_nsf_up_to_five_parameters_and_maf_above() -> None:
    from sbikit.inference.npe import AUTO_NSF_MAX_DIM

    for dim, kind, width in ((1, "nsf", 128), (AUTO_NSF_MAX_DIM, "nsf", 128), (AUTO_NSF_MAX_DIM + 1, "maf", 64)):
        npe = NPE(BoxUniform(-torch.ones(dim), torch.ones(dim)), device="cpu")
        assert (npe.flow_kind, npe.hidden_features) == (kind, width)
    # An explicit choice is kept, whatever the dimension; so is an explicit width.
    assert NPE(_prior(), flow="MAF", hidden_features=16, device="cpu").flow_kind == "maf"
    assert NPE(_prior(), flow="maf", hidden_features=16, device="cpu").hidden_features == 16


def test_default_batch_and_learning_rate_follow_the_flow(monkeypatch) -> None:
    # NSF and MAF train with batches of up to 512 on a cosine schedule peaking at 1e-2 and 3e-3
    # and stop after 12 epochs without a gain, RealNVP with up to 128 at 1e-3 halved on
    # plateaus and a patience of 20 (docs/defaults.md).
    import sbikit.inference.npe as npe_module

    seen: dict[str, tuple] = {}
    real_fit = npe_module.fit

    def spy(model, loss_fn, data, **kwargs):
        seen[model.config.kind] = tuple(kwargs[k] for k in ("batch_size", "learning_rate", "schedule", "patience"))
        return real_fit(model, loss_fn, data, **kwargs)

    monkeypatch.setattr(npe_module, "fit", spy)
    theta = _prior().sample(20_000, seed=0)
    x = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1))
    for flow in ("nsf", "maf", "realnvp"):
        NPE(_prior(), flow=flow, hidden_features=8, num_transforms=1, device="cpu").fit(
            theta, x, seed=0, max_epochs=1, progress=False
        )
    assert seen == {
        "nsf": (512, 1e-2, "cosine", 12),
        "maf": (512, 3e-3, "cosine", 12),
        "realnvp": (128, 1e-3, "plateau", 20),
    }
    # The shorter patience belongs to the averaged cosine recipe: the plateau schedule keeps
    # 20, and an explicit patience is always kept.
    npe = NPE(_prior(), flow="nsf", hidden_features=8, num_transforms=1, device="cpu")
    posterior = npe.fit(theta, x, seed=0, max_epochs=1, schedule="plateau", progress=False)
    assert seen["nsf"][2:] == ("plateau", 20) and posterior.info["recipe"]["patience"] == 20
    npe.fit(theta, x, seed=0, max_epochs=1, patience=3, progress=False)
    assert seen["nsf"][2:] == ("cosine", 3)


def test_cosine_epochs_give_small_sets_more_passes() -> None:
    from sbikit.inference.npe import cosine_epochs, default_recipe

    assert cosine_epochs(9_000) == 60 and cosine_epochs(90_000) == 60
    assert cosine_epochs(900) == 167 and cosine_epochs(100) == 200
    recipe = default_recipe("nsf", 9_000)
    assert (recipe.schedule, recipe.max_epochs, recipe.warmup_epochs, recipe.patience) == ("cosine", 60, 3.0, 12)
    # Without the weight average (FlowDensity) the patience stays 20.
    raw = default_recipe("nsf", 9_000, weight_average=False)
    assert (raw.max_epochs, raw.patience) == (60, 20)
    assert default_recipe("nsf", 900, weight_average=False).max_epochs == 167
    # The full 3-epoch warm-up from the default 60 epochs on (2.5 in a 50-epoch run cost slcp
    # 0.025 C2ST), proportionally shorter for shorter budgets so that the peak is reached.
    from sbikit.inference.npe import cosine_warmup

    assert cosine_warmup(60) == cosine_warmup(167) == 3.0 and cosine_warmup(10) == pytest.approx(0.5)
    assert default_recipe("nsf", 9_000, conv_embedding=True).schedule == "plateau"
