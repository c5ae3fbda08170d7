"""sbikit.linear: oneDNN products agree with torch.nn.functional.linear, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sbikit import linear as lin
from sbikit.flows import build_flow


@pytest.fixture
def restore_backend():
    before = lin.onednn_linear_enabled()
    yield
    lin.set_onednn_linear(before)


def _grads(fn, x, w, b):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    out = fn(x, w, b)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    return out.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("shape", [(64, 10), (3, 5, 10), (10,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(shape, with_bias, restore_backend):
    lin.set_onednn_linear(True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(7, 10, generator=gen)
    b = torch.randn(7, generator=gen) if with_bias else None
    got = _grads(lin.linear, x, w, b)
    want = _grads(F.linear, x, w, b)
    for g, e in zip(got, want, strict=True):
        if e is None:
            assert g is None
        else:
            assert g.shape == e.shape
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_linear_noncontiguous_input(restore_backend):
    lin.set_onednn_linear(True)
    x = torch.randn(10, 64).t()  # (64, 10), transposed strides
    w, b = torch.randn(7, 10), torch.randn(7)
    torch.testing.assert_close(lin.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_double_backward(restore_backend):
    """create_graph=True (a gradient penalty) differentiates through the backward products."""
    lin.set_onednn_linear(True)
    w = torch.randn(4, 3, requires_grad=True)
    results = []
    for fn in (lin.linear, F.linear):
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (g,) = torch.autograd.grad(torch.tanh(fn(x, w, None)).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), w)
        results.append(gw)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_fallbacks(restore_backend, monkeypatch):
    """float64 and a disabled backend go through F.linear; so does a failing kernel."""
    lin.set_onednn_linear(True)
    called = []
    real = lin._onednn_op

    def spy():
        called.append(1)
        return real()

    monkeypatch.setattr(lin, "_onednn_op", spy)
    x64, w64 = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(lin.linear(x64, w64), F.linear(x64, w64))
    assert not called
    lin._enabled = False
    lin.linear(torch.randn(5, 3), torch.randn(2, 3))
    assert not called
    lin._enabled = True
    lin.linear(torch.randn(5, 3), torch.randn(2, 3))
    if lin._self_test():
        assert called

    def broken():
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(lin, "_onednn_op", broken)
    lin.set_onednn_linear(True)  # the self-test fails: stays off
    assert not lin.onednn_linear_enabled()
    torch.testing.assert_close(lin.linear(x64.float(), w64.float()), F.linear(x64.float(), w64.float()))


def test_env_var_turns_it_off(restore_backend, monkeypatch):
    monkeypatch.setenv(lin.ENV_VAR, "0")
    lin._enabled = None
    assert not lin.onednn_linear_enabled()


def test_env_var_forces_it_on_where_it_works(restore_backend, monkeypatch):
    monkeypatch.setenv(lin.ENV_VAR, "1")
    monkeypatch.setattr(lin, "prefers_onednn", lambda: False)  # the rule would say no
    lin._enabled = None
    assert lin.onednn_linear_enabled() == lin._self_test()


@pytest.mark.parametrize("prefers", [True, False])
def test_auto_follows_the_cpu_rule(prefers, restore_backend, monkeypatch):
    monkeypatch.delenv(lin.ENV_VAR, raising=False)
    monkeypatch.setattr(lin, "prefers_onednn", lambda: prefers)
    lin._enabled = None
    assert lin.onednn_linear_enabled() == (prefers and lin._self_test())
    assert lin.cpu_description()["linear_backend"] == ("onednn" if lin.onednn_linear_enabled() else "mkl")


def test_bad_env_value_names_the_variable(restore_backend, monkeypatch):
    monkeypatch.setenv(lin.ENV_VAR, "fast")
    lin._enabled = None
    with pytest.raises(ValueError, match="SBIKIT_ONEDNN_LINEAR must be 1, 0 or auto, got 'fast'"):
        lin.onednn_linear_enabled()


@pytest.mark.parametrize(
    ("vendor", "capability", "expected"),
    [
        ("AuthenticAMD", "AVX512", True),  # MKL keeps to AVX2 on AMD; oneDNN uses AVX-512
        ("AuthenticAMD", "AVX2", False),  # measured: oneDNN 1.08-1.50x MKL's time here
        ("GenuineIntel", "AVX512", False),  # MKL uses AVX-512 on Intel
        ("GenuineIntel", "AVX2", False),
        ("", "AVX512", False),  # vendor unknown (not Linux): torch's own path
    ],
)
def test_prefers_onednn_rule(vendor, capability, expected):
    assert lin.prefers_onednn(vendor, capability) is expected


def test_cpu_description_reads_this_machine():
    info = lin.cpu_description()
    assert set(info) == {"vendor", "capability", "linear_backend"}
    assert info["capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert info["linear_backend"] in ("onednn", "mkl")


def test_linear_module_state_dict_is_nn_linear():
    ours, theirs = lin.Linear(4, 3), nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["nsf", "maf"])
def test_flow_same_with_either_backend(kind, restore_backend):
    """A flow's log density and its parameter gradients do not depend on the backend."""
    torch.manual_seed(0)
    flow = build_flow(kind, 3, (4,), hidden_features=32, num_transforms=2, conditional_affine=kind == "nsf")
    y, c = torch.randn(50, 3), torch.randn(50, 4)
    out = []
    for enabled in (True, False):
        lin.set_onednn_linear(enabled)
        flow.zero_grad()
        lp = flow.log_prob(y, c)
        lp.sum().backward()
        out.append((lp.detach(), [p.grad.clone() for p in flow.parameters() if p.grad is not None]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("reduce", ["sum", "one_column"])
def test_broadcast_gradients(reduce, restore_backend):
    """Upstream gradients with zero strides (from ``sum``) or mostly zeros reach oneDNN as they are."""
    lin.set_onednn_linear(True)

    def loss(out):
        return out.sum() if reduce == "sum" else out[:, 2].mean()

    grads = []
    for fn in (lin.linear, F.linear):
        x = torch.randn(50, 10, generator=torch.Generator().manual_seed(3), requires_grad=True)
        w = torch.randn(7, 10, generator=torch.Generator().manual_seed(4), requires_grad=True)
        loss(fn(x, w, None)).backward()
        grads.append((x.grad, w.grad))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mismatched_shapes_name_the_shapes(restore_backend):
    lin.set_onednn_linear(True)
    if not lin.onednn_linear_enabled():
        pytest.skip("oneDNN unavailable here")
    with pytest.raises(ValueError, match=r"inputs \(5, 3\).*weight is \(2, 4\)"):
        lin.linear(torch.randn(5, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"bias \(3,\)"):
        lin.linear(torch.randn(5, 3), torch.randn(2, 3), torch.randn(3))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_activation_matches_activation_of_linear(activation, enabled, with_bias, restore_backend):
    """linear(activation=) is the activation of F.linear with its gradients, on either backend; ReLU's kink included."""
    lin.set_onednn_linear(enabled)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 10, generator=gen)
    w = torch.randn(7, 10, generator=gen)
    b = torch.randn(7, generator=gen) if with_bias else None
    x[:5] = 0.0  # rows whose output is exactly the bias (0 without one): the ReLU's kink
    plain_fn = {"relu": F.relu, "tanh": torch.tanh}[activation]
    got = _grads(lambda *a: lin.linear(*a, activation=activation), x, w, b)
    want = _grads(lambda *a: plain_fn(F.linear(*a)), x, w, b)
    if activation == "relu":
        assert bool((got[0] == 0).any()) and bool((got[0] > 0).any())  # both sides of the kink are exercised
    for g, e in zip(got, want, strict=True):
        if e is None:
            assert g is None
        else:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    # Negative control: without the activation the outputs and the input gradient differ.
    plain = _grads(lin.linear, x, w, b)
    assert not torch.allclose(plain[0], got[0]) and not torch.allclose(plain[1], got[1])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fused_activation_double_backward(activation, restore_backend):
    lin.set_onednn_linear(True)
    w = torch.randn(4, 3, requires_grad=True)
    plain_fn = {"relu": F.relu, "tanh": torch.tanh}[activation]
    results = []
    for fn in (lambda x: lin.linear(x, w, None, activation=activation), lambda x: plain_fn(F.linear(x, w))):
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (g,) = torch.autograd.grad(torch.tanh(fn(x)).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), w)
        results.append(gw)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        lin.linear(torch.randn(3, 2), torch.randn(4, 2), activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        lin.Linear(2, 4, activation="sigmoid")


def test_fusable_activation_names():
    assert lin.fusable_activation(torch.relu) == "relu"
    assert lin.fusable_activation(F.relu) == "relu"
    assert lin.fusable_activation(torch.tanh) == "tanh"
    assert lin.fusable_activation(F.silu) is None  # applied by the caller

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, t):
            return t

    assert lin.fusable_activation(Unhashable()) is None
