"""Dense layers of the flows, with MKL's or oneDNN's matrix products on the CPU.

PyTorch's CPU build multiplies ``float32`` matrices with MKL, and also ships oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's compiler uses for fused linear
layers). Which is faster depends on the CPU. MKL runs its AVX2 kernels on AMD processors
whatever they support, while oneDNN dispatches on the instruction set alone. On the
eleventh round's host ("AMD EPYC"; its instruction set was not recorded, but oneDNN's
~185 GFLOP/s on one thread is more than an AVX2 core reaches, so it had AVX-512), oneDNN's
products of the shapes a flow's conditioner uses (512 x 128 by 128 x 128, one thread) took
0.50-0.65 of MKL's time (benchmarks/RESULTS.md); on an AMD host with AVX2 only (EPYC family
25 model 1) they took 1.08-1.50 of MKL's time, and a default NSF training step 1.21-1.32 of it
(fifteenth round). :func:`linear` computes ``inputs @ weight.T +
bias`` with oneDNN, forward and backward (the three products of a training step), when
:func:`onednn_linear_enabled` says so, and with :func:`torch.nn.functional.linear` otherwise
(CUDA, ``float64``, when oneDNN is missing or fails a self-test at first use, or is off).

By default (``auto``) oneDNN is on where :func:`prefers_onednn` holds: an AMD CPU on which
PyTorch reports AVX-512. The rule is a fixed property of the machine, not a timing taken at
run time, so that a seeded fit gives the same numbers in every process on the same machine
(the two backends round differently). ``benchmarks/linear_backend.py`` compares both on the
machine at hand; Intel CPUs with AVX-512 keep MKL (not measured: MKL uses AVX-512 there).

A ReLU or tanh after the product can be fused into the same oneDNN call (``activation=``),
which saves an operation and an autograd node per layer. The result is the same to
rounding. The kernel is a private PyTorch operator; if a PyTorch release drops or changes
it, the self-test fails and :func:`torch.nn.functional.linear` is used.

Choose with the environment variable ``SBIKIT_ONEDNN_LINEAR`` (read once, at the first
call): ``1`` on wherever the kernel works, ``0`` off, ``auto`` (or unset) the rule above;
or with :func:`set_onednn_linear`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "Linear",
    "cpu_description",
    "fusable_activation",
    "linear",
    "onednn_linear_enabled",
    "prefers_onednn",
    "set_onednn_linear",
]

logger = logging.getLogger(__name__)

#: Environment variable for the CPU products: ``1`` oneDNN, ``0`` MKL, ``auto`` (default) by :func:`prefers_onednn`.
ENV_VAR = "SBIKIT_ONEDNN_LINEAR"
_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")

#: Activations :func:`linear` can apply after the product (fused on the oneDNN path), with
#: their plain PyTorch form for the other path.
ACTIVATIONS: dict[str | None, Any] = {None: lambda t: t, "relu": F.relu, "tanh": torch.tanh}
#: The functions a caller may hold for those activations, by the name :func:`linear` takes.
_FUSABLE_FUNCTIONS: dict[Any, str] = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh"}


def fusable_activation(function: Any) -> str | None:
    """The ``activation=`` name of :func:`linear` for an activation function, or ``None``.

    Args:
        function: an activation such as :func:`torch.relu`, :func:`torch.nn.functional.relu`
            or :func:`torch.tanh`.

    Returns:
        ``"relu"`` or ``"tanh"`` when :func:`linear` can apply ``function`` itself (fused on
        the oneDNN path), else ``None`` (the caller applies it).
    """
    try:
        return _FUSABLE_FUNCTIONS.get(function)
    except TypeError:  # an unhashable callable
        return None


def _check_activation(activation: str | None, where: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")


_enabled: bool | None = None  # None: not decided yet (decided at the first call)


def _onednn_op() -> Any:
    return torch.ops.mkldnn._linear_pointwise


def _self_test() -> bool:
    """Whether oneDNN's linear kernel exists here and agrees with plain products (one with strided operands)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(7, 5, generator=gen)
        w = torch.randn(3, 5, generator=gen)
        b = torch.randn(3, generator=gen)
        got = _onednn_op()(x, w, b, "none", [], "")
        grad_w = _onednn_op()(x.t(), x.t(), None, "none", [], "")  # strided operands, as in backward
    except Exception as error:  # noqa: BLE001  (any failure means: use F.linear)
        logger.debug("oneDNN linear unavailable (%s); using torch.nn.functional.linear", error)
        return False
    return bool(torch.allclose(got, F.linear(x, w, b), atol=1e-5) and torch.allclose(grad_w, x.t() @ x, atol=1e-4))


def _proc_cpuinfo() -> dict[str, str]:
    """The first CPU's entries of ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ...); ``{}`` where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:  # the blank line after the first CPU's block
                        break
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_vendor() -> str:
    """The CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``) from ``/proc/cpuinfo``, or ``""``."""
    return _proc_cpuinfo().get("vendor_id", "")


def _cpu_capability() -> str:
    """PyTorch's vector instruction set on this CPU (``"AVX2"``, ``"AVX512"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001  (an older or unusual build: unknown)
        return ""


def cpu_description() -> dict[str, str]:
    """What decides the CPU backend, for benchmark records.

    Returns:
        ``vendor`` (``/proc/cpuinfo``'s ``vendor_id``, ``""`` where unknown), ``capability``
        (PyTorch's vector instruction set) and ``linear_backend`` (``"onednn"`` or ``"mkl"``,
        what :func:`linear` uses for CPU ``float32`` products now).
    """
    return {
        "vendor": _cpu_vendor(),
        "capability": _cpu_capability(),
        "linear_backend": "onednn" if onednn_linear_enabled() else "mkl",
    }


def prefers_onednn(vendor: str | None = None, capability: str | None = None) -> bool:
    """Whether oneDNN's products are expected to beat MKL's on this CPU: AMD with AVX-512.

    MKL runs AVX2 kernels on AMD CPUs; oneDNN uses AVX-512 where the CPU has it, and was
    measured at 0.50-0.65 of MKL's time on a host that (by its speed) had AVX-512 and at
    1.08-1.50 of it on an AMD host with AVX2 only (module docstring).

    Args:
        vendor: the CPU vendor string; ``None`` reads this machine's.
        capability: PyTorch's vector instruction set; ``None`` reads this machine's.

    Returns:
        ``True`` for an ``AuthenticAMD`` CPU with an ``AVX512`` capability.
    """
    vendor = _cpu_vendor() if vendor is None else vendor
    capability = _cpu_capability() if capability is None else capability
    return vendor == "AuthenticAMD" and capability.upper().startswith("AVX512")


def onednn_linear_enabled() -> bool:
    """Whether :func:`linear` uses oneDNN for CPU ``float32`` products (decided at the first call).

    Raises:
        ValueError: ``SBIKIT_ONEDNN_LINEAR`` is set to something other than ``1``, ``0`` or ``auto``.
    """
    global _enabled
    if _enabled is None:
        setting = os.environ.get(ENV_VAR, "auto").strip().lower()
        if setting in _ON:
            wanted = True
        elif setting in _OFF:
            wanted = False
        elif setting in ("auto", ""):
            wanted = prefers_onednn()
        else:
            raise ValueError(f"{ENV_VAR} must be 1, 0 or auto, got {os.environ[ENV_VAR]!r}")
        _enabled = wanted and _self_test()
        logger.debug("oneDNN linear layers %s (%s=%s)", "on" if _enabled else "off", ENV_VAR, setting or "auto")
    return _enabled


def set_onednn_linear(enabled: bool) -> None:
    """Turn the oneDNN path of :func:`linear` on or off for this process.

    Args:
        enabled: ``True`` uses oneDNN where it is available (it stays off where the kernel is
            missing), ``False`` always uses :func:`torch.nn.functional.linear`.
    """
    global _enabled
    _enabled = bool(enabled) and _self_test()


class _OneDNNLinear(torch.autograd.Function):
    """``inputs @ weight.T + bias`` (then an activation), 2-D CPU ``float32``, all three products by oneDNN."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
        out = _onednn_op()(inputs, weight, bias, activation or "none", [], "")
        ctx.save_for_backward(inputs, weight, out if activation else None)
        ctx.has_bias = bias is not None
        ctx.activation = activation
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        inputs, weight, out = ctx.saved_tensors
        need_inputs, need_weight, need_bias, _ = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiable products
            if ctx.activation == "relu":
                grad = grad * (out > 0).to(grad.dtype)
            elif ctx.activation == "tanh":
                grad = grad * (1.0 - out * out)
            grad_inputs = grad @ weight if need_inputs else None
            grad_weight = grad.t() @ inputs if need_weight else None
        else:
            # The activation's gradient from its output: grad where out > 0 (ReLU), grad (1 - out^2) (tanh).
            if ctx.activation == "relu":
                grad = torch.ops.aten.threshold_backward(grad, out, 0.0)
            elif ctx.activation == "tanh":
                grad = torch.ops.aten.tanh_backward(grad, out)
            op = _onednn_op()
            # oneDNN reads the transposed views by their strides: no copies.
            grad_inputs = op(grad, weight.t(), None, "none", [], "") if need_inputs else None
            grad_weight = op(grad.t(), inputs.t(), None, "none", [], "") if need_weight else None
        grad_bias = grad.sum(0) if ctx.has_bias and need_bias else None
        return grad_inputs, grad_weight, grad_bias, None


def _use_onednn(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        inputs.device.type == "cpu"
        and inputs.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and inputs.numel() > 0
        and weight.numel() > 0
        and onednn_linear_enabled()
    )


def linear(inputs: Tensor, weight: Tensor, bias: Tensor | None = None, *, activation: str | None = None) -> Tensor:
    """``inputs @ weight.T + bias``, as :func:`torch.nn.functional.linear`, optionally followed by an activation.

    Args:
        inputs: ``(..., in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.
        activation: ``None``, ``"relu"`` or ``"tanh"``, applied to the result. On the oneDNN
            path it is fused into the product (one kernel, one autograd node instead of two).

    Returns:
        ``(..., out_features)``.

    Raises:
        ValueError: for an unknown ``activation``; on the oneDNN path, when the shapes do not fit together (the
            :func:`torch.nn.functional.linear` path raises PyTorch's own error).
    """
    _check_activation(activation, "linear")
    if not _use_onednn(inputs, weight, bias):
        out = F.linear(inputs, weight, bias)
        return ACTIVATIONS[activation](out)
    # oneDNN's own error for mismatched shapes names no shapes; say which.
    if weight.dim() != 2 or inputs.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: inputs {tuple(inputs.shape)} need a last dimension equal to the weight's "
            f"in_features; weight is {tuple(weight.shape)} (out_features, in_features)"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias {tuple(bias.shape)} must be (out_features,) = ({weight.shape[0]},)")
    flat = inputs.reshape(-1, inputs.shape[-1])
    tracked = inputs.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and tracked:
        out = _OneDNNLinear.apply(flat, weight, bias, activation)
    else:
        out = _onednn_op()(flat, weight, bias, activation or "none", [], "")
    return out.reshape(*inputs.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """:class:`torch.nn.Linear` computed by :func:`linear` (same parameters and state dict).

    Args:
        in_features: input width.
        out_features: output width.
        bias: learn an additive bias.
        activation: ``None``, ``"relu"`` or ``"tanh"``, applied after the product (fused into
            it on the oneDNN path).
        device: where the parameters live.
        dtype: their dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _check_activation(activation, "Linear")
        self.activation = activation

    def forward(self, inputs: Tensor) -> Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        return linear(inputs, self.weight, self.bias, activation=self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation!r}" if self.activation else "")
