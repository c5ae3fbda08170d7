"""Tests for sbikit.flows: exact identities (inversion, log-det, normalisation), conditioning, gradients, shapes.

Every identity is checked in float64 on flows whose weights were randomly perturbed (so no
layer is the identity) and whose standardisation is non-trivial (so the shift/scale terms
of the density are exercised).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from sbikit.flows import (
    FLOW_KINDS,
    MLP_EMBEDDING_FEATURES,
    ConditionalAffine,
    ConditionalFlow,
    FlowConfig,
    MLPEmbedding,
    SoftplusAffineCoupling,
    build_flow,
)

F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


def _perturb(flow: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    """Add N(0, scale^2) noise to every parameter so that no layer is (near) the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _data(n: int, features: int, context_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-like data with non-zero means and unequal scales per column."""
    gen = torch.Generator().manual_seed(seed)
    y_scale = torch.linspace(0.5, 3.0, features, dtype=F64)
    y = torch.randn(n, features, generator=gen, dtype=F64) * y_scale + torch.linspace(-2.0, 4.0, features, dtype=F64)
    c_scale = torch.linspace(0.2, 5.0, context_dim, dtype=F64)
    c = torch.randn(n, context_dim, generator=gen, dtype=F64) * c_scale + torch.linspace(
        3.0, -1.0, context_dim, dtype=F64
    )
    return y, c


def _flow(
    kind: str, features: int = 3, context_dim: int = 2, *, perturb: float = 0.1, affine: bool = False
) -> tuple[ConditionalFlow, ...]:
    """A small float64 flow with standardisation set from data and perturbed weights, plus the data."""
    flow = build_flow(
        kind, features, (context_dim,), hidden_features=8, num_transforms=2, num_blocks=1, conditional_affine=affine
    ).double()
    y, c = _data(400, features, context_dim)
    flow.set_standardization(y, c)
    assert not torch.allclose(flow.y_shift, torch.zeros_like(flow.y_shift))
    assert not torch.allclose(flow.c_scale, torch.ones_like(flow.c_scale))
    _perturb(flow, perturb)
    flow.eval()
    return flow, y, c


def _zero_context_weights(flow: ConditionalFlow) -> None:
    """Remove every path from the context into the transforms (MADE, ResidualNet and its blocks)."""
    k = flow.config.context_features
    zeroed = 0
    with torch.no_grad():
        for name, module in flow.transform.named_modules():
            if name.endswith("context_layer"):  # MADE and residual blocks
                module.weight.zero_()
                zeroed += 1
            elif name.endswith("transform_net.initial_layer"):
                # ResidualNet concatenates (inputs, context) into its first linear layer.
                module.weight[:, -k:] = 0.0
                zeroed += 1
    assert zeroed > 0


@pytest.mark.parametrize("affine", [False, True], ids=["", "affine"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_inverse_of_forward_is_identity(kind: str, affine: bool) -> None:
    flow, y, c = _flow(kind, affine=affine)
    # Include rows far in the tails (beyond the spline interval of nsf) as well as typical rows.
    y = torch.cat([y[:20], flow.y_shift + 8.0 * flow.y_scale * torch.tensor([[1.0, -1.0, 0.5]], dtype=F64)])
    c = torch.cat([c[:20], c[:1]])
    with torch.no_grad():
        emb = flow.embed(c)
        ys = (y - flow.y_shift) / flow.y_scale
        z, logdet = flow.transform(ys, context=emb)
        back, inv_logdet = flow.transform.inverse(z, context=emb)
    assert not torch.allclose(z, ys, atol=1e-3), "perturbed flow should not be the identity"
    torch.testing.assert_close(back, ys, atol=1e-5, rtol=0)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-5, rtol=0)


@pytest.mark.parametrize("affine", [False, True], ids=["", "affine"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_sample_embedded_maps_back_to_noise(kind: str, affine: bool) -> None:
    flow, _, c = _flow(kind, affine=affine)
    m, n, d = 3, 50, flow.config.features
    with torch.no_grad():
        emb = flow.embed(c[:m])
        y = flow.sample_embedded(n, emb, generator=torch.Generator().manual_seed(7))
        # The same generator state reproduces the base noise: (m * n, d), rows grouped by context.
        noise = torch.randn(m * n, d, generator=torch.Generator().manual_seed(7), dtype=F64)
        ys = (y.reshape(m * n, d) - flow.y_shift) / flow.y_scale
        z, _ = flow.transform(ys, context=emb.repeat_interleave(n, dim=0))
    assert y.shape == (m, n, d)
    torch.testing.assert_close(z, noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("affine", [False, True], ids=["", "affine"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_log_prob_matches_autograd_jacobian(kind: str, affine: bool) -> None:
    flow, y, c = _flow(kind, affine=affine)
    y = torch.cat([y[:6], flow.y_shift + 7.0 * flow.y_scale * torch.tensor([[-1.0, 0.3, 1.0]], dtype=F64)])
    c = c[:7]
    lp = flow.log_prob(y, c).detach()
    d = flow.config.features
    for i in range(len(y)):
        emb_i = flow.embed(c[i : i + 1]).detach()

        def full_map(row: torch.Tensor, emb_i: torch.Tensor = emb_i) -> torch.Tensor:
            z, _ = flow.transform(((row - flow.y_shift) / flow.y_scale)[None], context=emb_i)
            return z[0]

        jac = jacobian(full_map, y[i])
        z = full_map(y[i]).detach()
        expected = -0.5 * (z**2).sum() - 0.5 * d * _LOG_2PI + torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(lp[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("affine", [False, True], ids=["", "affine"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_density_integrates_to_one(kind: str, affine: bool) -> None:
    """Midpoint rule over a box that covers all of 10k samples with a margin.

    Tolerance: for exchangeable draws, a new draw falls beyond the largest (or smallest) of n
    draws in one coordinate with probability 1/(n+1), so the mass outside the samples'
    bounding box is at most 4/(n+1) = 4e-4 in 2-d (less with the margin). The midpoint rule's
    error is O(h^2): the change when halving the spacing estimates it (the fine grid's error
    is about a third of that change), and we require that change to be small too. The sum
    of both is far below the 5e-3 allowed; a density off by a constant factor (e.g. a
    dropped ``log y_scale`` term: a factor prod(y_scale) ~ 1.5 here) fails clearly.
    """
    flow, y, c = _flow(kind, features=2, context_dim=2, affine=affine)
    ctx = c[:1]
    with torch.no_grad():
        s = flow.sample(10_000, ctx, generator=torch.Generator().manual_seed(3))[0]
        lo = s.min(0).values - s.std(0)
        hi = s.max(0).values + s.std(0)
        integrals = []
        for num in (100, 200):
            axes = [lo[i] + (hi[i] - lo[i]) * (torch.arange(num, dtype=F64) + 0.5) / num for i in range(2)]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
            lp = flow.log_prob(grid, ctx.expand(len(grid), -1))
            integrals.append(float(lp.exp().sum() * ((hi - lo) / num).prod()))
    coarse, fine = integrals
    assert abs(fine - coarse) < 2e-3, f"grid not converged: {integrals}"
    assert abs(fine - 1.0) < 5e-3, f"integral of the density is {fine} (coarse grid {coarse})"


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_context_changes_density_and_zeroed_context_does_not(kind: str) -> None:
    flow, y, c = _flow(kind)
    y = y[:32]
    c1 = c[:1].expand(32, -1)
    c2 = c[1:2].expand(32, -1)
    with torch.no_grad():
        lp1, lp2 = flow.log_prob(y, c1), flow.log_prob(y, c2)
    assert (lp1 - lp2).abs().max() > 1e-3
    # Negative control: with every context weight zeroed the context cannot matter.
    _zero_context_weights(flow)
    with torch.no_grad():
        lp1, lp2 = flow.log_prob(y, c1), flow.log_prob(y, c2)
    torch.testing.assert_close(lp1, lp2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_every_parameter_gets_a_gradient(kind: str) -> None:
    embedding = nn.Sequential(nn.Linear(2, 4), nn.Tanh())
    flow = build_flow(kind, 3, (2,), embedding=embedding, hidden_features=8, num_transforms=2, num_blocks=1)
    assert flow.config.context_features == 4
    y, c = _data(64, 3, 2)
    y, c = y.float(), c.float()
    flow.set_standardization(y, c)
    _perturb(flow, 0.05)
    loss = -flow.log_prob(y, c).mean()
    loss.backward()
    names = [name for name, _ in flow.named_parameters()]
    assert any(name.startswith("embedding.") for name in names)
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_shapes(kind: str) -> None:
    flow = build_flow(kind, 3, (2,), hidden_features=8, num_transforms=2, num_blocks=1)
    c = torch.randn(4, 2)
    s = flow.sample(5, c)
    assert s.shape == (4, 5, 3) and s.dtype == torch.float32
    assert flow.log_prob(torch.randn(7, 3), torch.randn(7, 2)).shape == (7,)
    assert flow(torch.randn(7, 3), torch.randn(7, 2)).shape == (7,)
    assert flow.sample(0, c).shape == (4, 0, 3)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_image_context_shapes(kind: str) -> None:
    flow = build_flow(kind, 2, (1, 8, 8), hidden_features=8, num_transforms=2, num_blocks=1)
    assert flow.config.context_features == 64
    c = torch.randn(6, 1, 8, 8)
    flow.set_standardization(torch.randn(6, 2), c)
    assert flow.log_prob(torch.randn(6, 2), c).shape == (6,)
    assert flow.sample(3, c[:2]).shape == (2, 3, 2)


@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_one_feature_works(kind: str) -> None:
    flow = build_flow(kind, 1, (2,), hidden_features=8, num_transforms=2, num_blocks=1).double()
    y, c = _data(100, 1, 2)
    flow.set_standardization(y, c)
    _perturb(flow, 0.1)
    assert flow.sample(5, c[:3]).shape == (3, 5, 1)
    lp = flow.log_prob(y, c)
    assert lp.shape == (100,) and torch.isfinite(lp).all()
    with torch.no_grad():
        emb = flow.embed(c)
        ys = (y - flow.y_shift) / flow.y_scale
        z, _ = flow.transform(ys, context=emb)
        back, _ = flow.transform.inverse(z, context=emb)
    torch.testing.assert_close(back, ys, atol=1e-5, rtol=0)


def test_realnvp_with_one_feature_raises() -> None:
    with pytest.raises(ValueError, match="realnvp"):
        build_flow("realnvp", 1, (2,))


@pytest.mark.parametrize("kind", ["glow", "", "MAF2"])
def test_unknown_kind_raises(kind: str) -> None:
    with pytest.raises(ValueError, match="flow must be one of"):
        build_flow(kind, 2, (2,))


def test_kind_is_case_insensitive_and_features_checked() -> None:
    assert build_flow("MAF", 2, (2,), hidden_features=4, num_transforms=1).config.kind == "maf"
    with pytest.raises(ValueError, match="features"):
        build_flow("maf", 0, (2,))


def test_realnvp_uses_softplus_coupling() -> None:
    flow = build_flow("realnvp", 3, (2,), hidden_features=4, num_transforms=2)
    layers = list(flow.transform._transforms)
    assert len(layers) == 2 and all(isinstance(t, SoftplusAffineCoupling) for t in layers)
    # Zero conditioner output -> scale softplus(log(e - 1)) + 1e-3 = 1 + 1e-3.
    scale, shift = layers[0]._scale_and_shift(torch.zeros(1, 4))
    torch.testing.assert_close(scale, torch.full_like(scale, 1.001))
    torch.testing.assert_close(shift, torch.zeros_like(shift))


# -- standardisation ------------------------------------------------------------------------


def test_set_standardization_vector_context_per_entry() -> None:
    flow = build_flow("maf", 3, (4,), hidden_features=4, num_transforms=1)
    y, c = _data(500, 3, 4)
    y, c = y.float(), c.float()
    flow.set_standardization(y, c)
    torch.testing.assert_close(flow.y_shift, y.mean(0))
    torch.testing.assert_close(flow.y_scale, y.std(0))
    torch.testing.assert_close(flow.c_shift, c.mean(0))
    torch.testing.assert_close(flow.c_scale, c.std(0))
    # The scales differ per entry (the data were built with different scales).
    assert flow.c_scale.max() / flow.c_scale.min() > 5
    # The statistics are buffers, so they travel with the state dict.
    state = flow.state_dict()
    assert {"y_shift", "y_scale", "c_shift", "c_scale"} <= set(state)
    other = build_flow("maf", 3, (4,), hidden_features=4, num_transforms=1)
    other.load_state_dict(state)
    torch.testing.assert_close(other.log_prob(y[:5], c[:5]), flow.log_prob(y[:5], c[:5]))


def test_set_standardization_image_context_is_global() -> None:
    flow = build_flow("maf", 2, (1, 8, 8), hidden_features=4, num_transforms=1)
    gen = torch.Generator().manual_seed(0)
    c = 3.0 + 2.0 * torch.randn(50, 1, 8, 8, generator=gen)
    c[:, :, :4] *= 5.0  # spatially varying scale must still get one global statistic
    flow.set_standardization(torch.randn(50, 2, generator=gen), c)
    assert flow.c_shift.shape == (1, 8, 8) and flow.c_scale.shape == (1, 8, 8)
    torch.testing.assert_close(flow.c_shift, torch.full((1, 8, 8), float(c.mean())))
    torch.testing.assert_close(flow.c_scale, torch.full((1, 8, 8), float(c.reshape(-1).std())))


def test_constant_columns_get_scale_one() -> None:
    flow = build_flow("maf", 2, (3,), hidden_features=4, num_transforms=1)
    y = torch.randn(100, 2)
    y[:, 1] = 4.0
    c = torch.randn(100, 3) * 2
    c[:, 0] = -7.0
    flow.set_standardization(y, c)
    assert flow.y_scale[1] == 1.0 and flow.c_scale[0] == 1.0
    assert flow.y_shift[1] == 4.0 and flow.c_shift[0] == -7.0
    assert torch.isfinite(flow.log_prob(y, c)).all()
    # A constant image and a single row also give scale 1 rather than 0 or NaN.
    img = build_flow("maf", 2, (1, 4, 4), hidden_features=4, num_transforms=1)
    img.set_standardization(torch.randn(1, 2), torch.full((1, 1, 4, 4), 2.5))
    assert torch.equal(img.c_scale, torch.ones(1, 4, 4)) and torch.equal(img.y_scale, torch.ones(2))


def test_flow_config_round_trip() -> None:
    flow = build_flow("nsf", 2, (3,), hidden_features=4, num_transforms=1, num_bins=4, tail_bound=3.0)
    cfg = flow.config.to_dict()
    rebuilt = ConditionalFlow(FlowConfig(**cfg), (3,))
    rebuilt.load_state_dict(flow.state_dict())
    y, c = torch.randn(5, 2), torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(y, c), flow.log_prob(y, c))


# -- the conditioner: every feature sees the context ---------------------------------------------


def _autoregressive_layers(flow: ConditionalFlow) -> list[nn.Module]:
    return [t for t in flow.transform._transforms if hasattr(t, "autoregressive_net")]


@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_every_feature_of_every_layer_depends_on_the_context(kind: str) -> None:
    """Each autoregressive layer's output, at a fixed input, must move with the context in every column.

    Negative control: nflows' MADE (``conditioner="nflows_made"``) leaves the first feature's
    transform a constant of the context (its outputs for feature 1 are only a bias).
    """
    for conditioner, expect_all in (("context_made", True), ("nflows_made", False)):
        # 32 units: ~10 see only the context, so not all of them are dead ReLUs at a random draw.
        flow = build_flow(kind, 3, (2,), hidden_features=32, num_transforms=2, num_blocks=1)
        flow = ConditionalFlow(FlowConfig(**{**flow.config.to_dict(), "conditioner": conditioner}), (2,)).double()
        _perturb(flow, 0.5)
        y = torch.randn(1, 3, dtype=F64).expand(16, -1)
        c = torch.randn(16, 2, dtype=F64)
        for layer in _autoregressive_layers(flow):
            with torch.no_grad():
                z, _ = layer(y, context=c)
            spread = z.std(0)
            if expect_all:
                assert (spread > 1e-6).all(), f"{conditioner}: a feature ignores the context: {spread}"
            else:
                assert spread[0] < 1e-12 and (spread[1:] > 1e-6).all(), f"{conditioner}: {spread}"


def test_conditional_made_is_autoregressive() -> None:
    """Output block i (features in degree order) depends on inputs < i only: a strictly lower-triangular Jacobian."""
    from sbikit.flows import ConditionalMADE

    # tanh: no dead units, so every allowed connection shows in the Jacobian.
    made = ConditionalMADE(4, 12, 3, num_blocks=2, output_multiplier=5, activation=torch.tanh).double()
    _perturb(made, 0.3)
    x, c = torch.randn(4, dtype=F64), torch.randn(1, 3, dtype=F64)
    jac = jacobian(lambda row: made(row[None], c)[0], x).reshape(4, 5, 4)  # (output feature, multiplier, input)
    dependence = jac.abs().sum(1) > 0
    assert torch.equal(dependence, torch.ones(4, 4).tril(-1).bool()), dependence
    jac_c = jacobian(lambda ctx: made(x[None], ctx[None])[0], c[0]).reshape(4, 5, 3)
    assert (jac_c.abs().sum((1, 2)) > 0).all(), "some output block does not see the context"


@pytest.mark.parametrize("activation", [torch.relu, torch.tanh])
@pytest.mark.parametrize("dtype", [torch.float32, F64])  # oneDNN's path and F.linear's
def test_conditional_made_fused_activation_equals_unfused(dtype: torch.dtype, activation: Any) -> None:
    """With ReLU or tanh, the MADE's layers fuse it into their products (the first layer reads
    [y, c] in one product): same outputs, gradients and autoregressive structure as separately."""
    from sbikit.flows import ConditionalMADE

    torch.manual_seed(0)
    made = ConditionalMADE(3, 16, 4, num_blocks=2, output_multiplier=5, activation=activation).to(dtype)
    _perturb(made, 0.3)
    y = torch.randn(200, 3, dtype=dtype, requires_grad=True)
    c = torch.randn(200, 4, dtype=dtype, requires_grad=True)
    weights = torch.randn(200, 15, dtype=dtype)

    results = []
    for fused in (True, False):
        made.fuse_activation = fused
        made.zero_grad()
        out = made(y, c)
        grads = torch.autograd.grad((out * weights).sum(), [y, c, *made.parameters()])
        results.append((out.detach(), grads))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the network written out layer by layer, from the layers' own parameters
        h = activation(made.initial_layer(y) + made.context_layer(c))
        for block in made.blocks:
            h = activation(nn.functional.linear(h, block.weight * block.mask, block.bias))
        final = made.final_layer
        reference = nn.functional.linear(h, final.weight * final.mask, final.bias)
    torch.testing.assert_close(results[0][0], reference, **tol)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, **tol)
    made.fuse_activation = True
    jac = jacobian(lambda row: made(row[None], c[:1].detach())[0], y[0].detach()).reshape(3, 5, 3)
    dependence = jac.abs().sum(1) > 0
    assert not bool((dependence & ~torch.ones(3, 3).tril(-1).bool()).any()), dependence  # nothing on or above
    if activation is torch.tanh:  # no dead units: every allowed connection shows
        assert torch.equal(dependence, torch.ones(3, 3).tril(-1).bool()), dependence


def test_spline_layer_equals_nflows_spline_layer() -> None:
    """SplineAutoregressive (no boolean indexing) computes nflows' function, inside and beyond the tails."""
    from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform

    from sbikit.flows import SplineAutoregressive

    kw = dict(features=3, hidden_features=16, context_features=2, num_bins=6, tails="linear", tail_bound=2.0)
    torch.manual_seed(0)
    ref = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(**kw).double()
    ours = SplineAutoregressive(**kw).double()
    _perturb(ref, 0.3)
    ours.load_state_dict(ref.state_dict())
    y, c = 2.0 * torch.randn(300, 3, dtype=F64), torch.randn(300, 2, dtype=F64)
    assert ((y.abs() > 2.0).any(1)).sum() > 50  # many rows in the linear tails
    with torch.no_grad():
        for direction in ("forward", "inverse"):
            a, la = getattr(ref, direction)(y, context=c)
            b, lb = getattr(ours, direction)(y, context=c)
            torch.testing.assert_close(b, a, atol=1e-10, rtol=0)
            torch.testing.assert_close(lb, la, atol=1e-10, rtol=0)


def test_config_saved_before_the_conditioner_field_loads_nflows_made() -> None:
    old = build_flow("nsf", 2, (3,), hidden_features=4, num_transforms=1, num_bins=4)
    old = ConditionalFlow(FlowConfig(**{**old.config.to_dict(), "conditioner": "nflows_made"}), (3,))
    saved = old.config.to_dict()
    del saved["conditioner"]  # what files written before the fix hold
    cfg = FlowConfig.from_dict(saved)
    assert cfg.conditioner == "nflows_made"
    rebuilt = ConditionalFlow(cfg, (3,))
    rebuilt.load_state_dict(old.state_dict())
    y, c = torch.randn(5, 2), torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(y, c), old.log_prob(y, c))
    assert FlowConfig.from_dict(build_flow("nsf", 2, (3,)).config.to_dict()).conditioner == "context_made"
    with pytest.raises(ValueError, match="conditioner"):
        ConditionalFlow(FlowConfig(kind="maf", conditioner="made2"), (2,))


@pytest.mark.parametrize("min_sizes", [(1e-3, 1e-3), (1e-2, 1e-3)])
def test_rational_quadratic_spline_equals_nflows_and_inverts(min_sizes: tuple[float, float]) -> None:
    """sbikit.splines against nflows' unconstrained spline (float64), both ways, tails included."""
    from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

    from sbikit.splines import rational_quadratic_spline

    gen = torch.Generator().manual_seed(0)
    k, bound = 7, 3.0
    x = 2.5 * torch.randn(2000, 3, generator=gen, dtype=F64)
    x[:5, 0] = torch.tensor([-bound, bound, -bound - 1e-9, bound + 1e-9, 0.0], dtype=F64)  # the edges
    params = 2.0 * torch.randn(2000, 3, 3 * k - 1, generator=gen, dtype=F64)
    kw = dict(min_bin_width=min_sizes[0], min_bin_height=min_sizes[1], min_derivative=1e-3)
    for inverse in (False, True):
        ours, lad = rational_quadratic_spline(x, params, bound=bound, inverse=inverse, **kw)
        ref, ref_lad = unconstrained_rational_quadratic_spline(
            x, params[..., :k], params[..., k : 2 * k], params[..., 2 * k :], inverse=inverse,
            tails="linear", tail_bound=bound, **kw,
        )  # fmt: skip
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(lad, ref_lad, atol=1e-10, rtol=0)
    y, lad = rational_quadratic_spline(x, params, bound=bound, **kw)
    back, inv_lad = rational_quadratic_spline(y, params, bound=bound, inverse=True, **kw)
    torch.testing.assert_close(back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(inv_lad, -lad, atol=1e-9, rtol=0)
    outside = x.abs() > bound
    assert outside.sum() > 100 and torch.equal(y[outside], x[outside]) and bool((lad[outside] == 0).all())
    with pytest.raises(ValueError, match="3 K - 1"):
        rational_quadratic_spline(x, params[..., :-2], bound=bound)


@pytest.mark.parametrize("inverse", [False, True])
def test_rational_quadratic_spline_gradients_equal_nflows(inverse: bool) -> None:
    """Gradients w.r.t. inputs and parameters (what training uses) equal nflows' (float64)."""
    from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

    from sbikit.splines import rational_quadratic_spline

    gen = torch.Generator().manual_seed(1)
    k, bound = 6, 3.0
    x = (2.5 * torch.randn(1000, 2, generator=gen, dtype=F64)).requires_grad_()
    params = (2.0 * torch.randn(1000, 2, 3 * k - 1, generator=gen, dtype=F64)).requires_grad_()
    weights = torch.randn(2, 1000, 2, generator=gen, dtype=F64)  # a random linear functional of both outputs

    def grads(out: Tensor, lad: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad((weights[0] * out).sum() + (weights[1] * lad).sum(), [x, params])

    ours = grads(*rational_quadratic_spline(x, params, bound=bound, inverse=inverse))
    ref = grads(
        *unconstrained_rational_quadratic_spline(
            x, params[..., :k], params[..., k : 2 * k], params[..., 2 * k :], inverse=inverse,
            tails="linear", tail_bound=bound,
        )
    )  # fmt: skip
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9 * float(b.abs().max()), rtol=1e-9)
    outside = (x.abs() > bound).detach()
    assert outside.sum() > 50  # the tails: identity, so d out / d x = 1 there and the knots get nothing
    assert bool((ours[1][outside] == 0).all())
    assert bool((ours[1][~outside].abs().sum(-1) > 0).all())


# -- one-pass inverse (sampling) ------------------------------------------------------------------


def _loop_inverse(flow: ConditionalFlow, z: Tensor, embedded: Tensor) -> tuple[Tensor, Tensor]:
    """The flow's inverse with nflows' own loop (one network pass per feature), for reference."""
    from nflows.transforms.autoregressive import AutoregressiveTransform

    y, total = z, torch.zeros(len(z), dtype=z.dtype)
    for layer in flow.transform._transforms[::-1]:
        if hasattr(layer, "autoregressive_net"):
            y, logabsdet = AutoregressiveTransform.inverse(layer, y, embedded)
        else:
            y, logabsdet = layer.inverse(y, embedded)
        total = total + logabsdet
    return y, total


@pytest.mark.parametrize("kind", ["maf", "nsf"])
@pytest.mark.parametrize("features,hidden", [(1, 8), (2, 16), (3, 2), (5, 32), (9, 40)])
@pytest.mark.parametrize("grad", [False, True])
def test_one_pass_inverse_equals_nflows_loop(kind: str, features: int, hidden: int, grad: bool) -> None:
    """The one-pass inverse (in place without autograd, concatenating with it) is nflows' loop.

    Float64, perturbed weights so that every unit matters; ``hidden < features`` leaves some
    degrees without units. Exact up to the order of floating-point sums.
    """
    flow = build_flow(kind, features, (4,), hidden_features=hidden, num_transforms=3, num_blocks=2).double()
    _perturb(flow, 0.3)
    z, c = torch.randn(300, features, dtype=F64), torch.randn(300, 4, dtype=F64)
    with torch.set_grad_enabled(grad):
        embedded = flow.embed(c)
        y, logabsdet = flow.transform.inverse(z, context=embedded)
    with torch.no_grad():
        y_ref, logabsdet_ref = _loop_inverse(flow, z, embedded)
        z_back, forward_logabsdet = flow.transform(y, context=embedded)
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(logabsdet, logabsdet_ref, atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(z_back, z, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(forward_logabsdet, -logabsdet, atol=1e-8, rtol=1e-9)
    if grad:
        (y.sum() + logabsdet.sum()).backward()
        for name, p in flow.named_parameters():
            if "autoregressive_net" in name and p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_one_pass_inverse_runs_no_full_network_pass() -> None:
    """Sampling never calls the conditioner's forward (nflows' loop calls it D times per layer).

    Control: a flow with nflows' MADE (old files) keeps the loop, D passes per layer.
    """
    calls = {"context_made": 0, "nflows_made": 0}
    for conditioner in calls:
        base = build_flow("nsf", 3, (2,), hidden_features=8, num_transforms=2, num_blocks=1)
        flow = ConditionalFlow(FlowConfig(**{**base.config.to_dict(), "conditioner": conditioner}), (2,))

        def count(*_: object, key: str = conditioner) -> None:
            calls[key] += 1

        for layer in _autoregressive_layers(flow):
            layer.autoregressive_net.register_forward_hook(count)
        with torch.no_grad():
            assert flow.sample(4, torch.randn(2, 2)).shape == (2, 4, 3)
    assert calls == {"context_made": 0, "nflows_made": 2 * 3}


def test_one_pass_inverse_with_custom_activation_falls_back_to_concatenation() -> None:
    """An activation without a known in-place form still inverts exactly (the autograd-safe path)."""
    flow = build_flow("maf", 3, (2,), hidden_features=12, num_transforms=2).double()
    _perturb(flow, 0.3)
    for layer in _autoregressive_layers(flow):
        layer.autoregressive_net.activation = nn.functional.silu
    z, c = torch.randn(50, 3, dtype=F64), torch.randn(50, 2, dtype=F64)
    with torch.no_grad():
        embedded = flow.embed(c)
        y, _ = flow.transform.inverse(z, context=embedded)
        y_ref, _ = _loop_inverse(flow, z, embedded)
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)


# -- the conditional affine layer -------------------------------------------------------------------


def test_conditional_affine_starts_as_identity_and_moves_with_the_context() -> None:
    """Zero-initialised output layer: at construction the layer is the identity; trained
    (perturbed) weights make its shift and scale depend on the context."""
    layer = ConditionalAffine(3, 2, 16).double()
    y, c = torch.randn(20, 3, dtype=F64), torch.randn(20, 2, dtype=F64)
    z, logabsdet = layer(y, context=c)
    torch.testing.assert_close(z, y)
    torch.testing.assert_close(logabsdet, torch.zeros(20, dtype=F64))
    _perturb(layer, 0.5)
    with torch.no_grad():
        z, logabsdet = layer(y[:1].expand(20, -1), context=c)
        back, inverse_logabsdet = layer.inverse(z, context=c)
    assert (z.std(0) > 1e-3).all() and logabsdet.std() > 1e-3
    torch.testing.assert_close(back, y[:1].expand(20, -1))
    torch.testing.assert_close(inverse_logabsdet, -logabsdet)
    with pytest.raises(ValueError, match="context"):
        layer(y)


def test_conditional_affine_is_the_first_layer_and_saved_in_the_config() -> None:
    flow = build_flow("nsf", 2, (3,), hidden_features=8, num_transforms=2, conditional_affine=True)
    assert isinstance(flow.transform._transforms[0], ConditionalAffine)
    assert not any(isinstance(t, ConditionalAffine) for t in build_flow("nsf", 2, (3,)).transform._transforms)
    saved = flow.config.to_dict()
    assert saved["conditional_affine"] is True
    rebuilt = ConditionalFlow(FlowConfig.from_dict(saved), (3,))
    rebuilt.load_state_dict(flow.state_dict())
    _perturb(flow, 0.3)
    rebuilt.load_state_dict(flow.state_dict())
    y, c = torch.randn(5, 2), torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(y, c), flow.log_prob(y, c))
    # A config saved before the field existed has no such layer.
    old = {k: v for k, v in saved.items() if k != "conditional_affine"}
    assert FlowConfig.from_dict(old).conditional_affine is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_one_pass_inverse_on_cuda_equals_the_cpu(kind: str) -> None:
    """The in-place one-pass inverse on a CUDA device gives the CPU's samples (float64)."""
    flow = build_flow(kind, 4, (3,), hidden_features=32, num_transforms=3, conditional_affine=True).double()
    _perturb(flow, 0.3)
    z, c = torch.randn(2000, 4, dtype=F64), torch.randn(2000, 3, dtype=F64)
    with torch.no_grad():
        y_cpu, logabsdet_cpu = flow.transform.inverse(z, context=flow.embed(c))
        flow.cuda()
        y_gpu, logabsdet_gpu = flow.transform.inverse(z.cuda(), context=flow.embed(c.cuda()))
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(logabsdet_gpu.cpu(), logabsdet_cpu, atol=1e-8, rtol=1e-9)


# -- MLPEmbedding ------------------------------------------------------------------------
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
