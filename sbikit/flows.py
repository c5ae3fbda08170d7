"""Conditional normalizing flows built from nflows transforms.

A :class:`ConditionalFlow` models a density ``q(y | c)`` over ``y`` of shape ``(features,)``
given a context ``c`` of any shape. Both are standardised with statistics taken from the
training data (stored as buffers, so they travel with ``state_dict``): the flow sees
``(y - y_shift) / y_scale`` and an embedding of ``(c - c_shift) / c_scale``.

Three families are available through :func:`build_flow`:

* ``"maf"``: masked affine autoregressive transforms (MADE with the context as extra
  input), with random permutations between layers;
* ``"realnvp"``: affine coupling layers with alternating masks whose networks take the
  context;
* ``"nsf"``: masked autoregressive rational-quadratic splines with linear tails.

Sampling inverts the autoregressive layers with :meth:`ConditionalMADE.invert`, one pass of
the network per layer instead of nflows' one pass per feature.

Any family can start (on the data side) with a :class:`ConditionalAffine` layer
(``conditional_affine=True``): an elementwise shift and scale of ``y`` computed from the
context alone, which puts each conditional density at the origin with unit width before
the other layers see it.

:class:`MLPEmbedding` is a context embedding for vector contexts, ``c -> [c, MLP(c)]``,
trained jointly with the flow: every layer then reads the same learned features of the
context (NPE's default for NSF on vector data, ``NPE(embedding="auto")``).

The autoregressive families use :class:`ConditionalMADE` as their conditioner, not nflows'
``MADE``: in nflows' MADE the context reaches only hidden units that the output mask hides
from the first feature, so in every layer the first feature's transform ignores the
context (bayesiains/nflows pull request 85). Files saved before this fix record
``conditioner="nflows_made"`` (filled in by :meth:`FlowConfig.from_dict`) and load as
they were trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    RandomPermutation,
    Transform,
)
from nflows.transforms.autoregressive import AutoregressiveTransform
from torch import Tensor, nn

from sbikit.linear import Linear, fusable_activation, linear
from sbikit.splines import rational_quadratic_spline

__all__ = [
    "FlowConfig",
    "ConditionalFlow",
    "ConditionalMADE",
    "ConditionalAffine",
    "MLPEmbedding",
    "MLP_EMBEDDING_FEATURES",
    "build_flow",
    "FLOW_KINDS",
    "CONDITIONERS",
]

FlowKind = Literal["maf", "realnvp", "nsf"]
FLOW_KINDS: tuple[str, ...] = ("maf", "realnvp", "nsf")
#: Conditioners of the autoregressive layers: sbikit's (every output sees the context) and
#: nflows' original MADE (kept only to load files saved before the fix).
CONDITIONERS: tuple[str, ...] = ("context_made", "nflows_made")
_LOG_2PI = math.log(2 * math.pi)
#: In-place forms of activations, for sampling without autograd.
_IN_PLACE: dict[Any, Callable[[Tensor], Tensor]] = {torch.relu: torch.relu_, torch.tanh: torch.tanh_}
#: ``(i, z_i (n,), params_i (n, m)) -> (y_i (n,), log |d y_i / d z_i| (n,))``: one feature's inverse.
FeatureInverse = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class FlowConfig:
    """Everything needed to rebuild a flow's architecture (JSON-able).

    Attributes:
        kind: ``"maf"``, ``"realnvp"`` or ``"nsf"``.
        features: dimension of ``y``.
        context_features: dimension of the (embedded) context fed to the transforms.
        hidden_features: width of the conditioner networks.
        num_transforms: number of flow layers.
        num_blocks: hidden layers (or residual blocks) per conditioner.
        num_bins: spline bins (``nsf`` only).
        tail_bound: splines act on ``[-tail_bound, tail_bound]``, linear outside (``nsf`` only).
        conditioner: ``"context_made"`` (:class:`ConditionalMADE`) or ``"nflows_made"``
            (nflows' MADE, whose first feature ignores the context; old files only).
        conditional_affine: start with a :class:`ConditionalAffine` layer (files saved
            before it existed have none).
    """

    kind: str = "maf"
    features: int = 2
    context_features: int = 2
    hidden_features: int = 64
    num_transforms: int = 5
    num_blocks: int = 2
    num_bins: int = 8
    tail_bound: float = 5.0
    conditioner: str = "context_made"
    conditional_affine: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowConfig:
        """Rebuild a saved config; one saved before ``conditioner`` existed used nflows' MADE."""
        return cls(**{"conditioner": "nflows_made", **data})


class _MaskedLinear(Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, inputs: Tensor) -> Tensor:
        return linear(inputs, self.weight * self.mask, self.bias)


class ConditionalMADE(nn.Module):
    """Masked autoencoder (MADE) for conditional autoregressive flows.

    Features get degrees ``1..D``; hidden units get degrees ``0..D-1`` in turn, and a unit
    of degree ``k`` sees the features of degree ``<= k`` and the whole context. Output
    ``i`` reads hidden units of degree ``< i``, so it depends on features ``< i`` (the
    autoregressive property) and, through the degree-0 units, always on the context:
    the first feature too, unlike nflows' MADE, whose hidden degrees start at 1.

    Args:
        features: ``D``, the autoregressive dimension.
        hidden_features: width of every hidden layer.
        context_features: width of the context (fed unmasked to the first hidden layer).
        num_blocks: hidden-to-hidden layers after the first hidden layer (as in nflows' MADE).
        output_multiplier: outputs per feature; outputs come grouped by feature,
            ``(n, D * output_multiplier)`` with feature ``i``'s block at
            ``[i * m, (i + 1) * m)``, the layout nflows' autoregressive transforms expect.
        activation: elementwise nonlinearity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        context_features: int,
        *,
        num_blocks: int,
        output_multiplier: int,
        activation: Any = torch.relu,
    ) -> None:
        super().__init__()
        in_degrees = torch.arange(1, features + 1)
        hidden_degrees = torch.arange(hidden_features) % features
        out_degrees = in_degrees.repeat_interleave(output_multiplier)
        self.activation = activation
        self.initial_layer = _MaskedLinear(hidden_degrees[:, None] >= in_degrees[None, :])
        self.context_layer = Linear(context_features, hidden_features)
        #: Fuse a ReLU or tanh ``activation`` into the layers' products (``False``: apply it
        #: separately; the same function, for comparisons).
        self.fuse_activation = True
        self.blocks = nn.ModuleList(
            _MaskedLinear(hidden_degrees[:, None] >= hidden_degrees[None, :]) for _ in range(num_blocks)
        )
        self.final_layer = _MaskedLinear(out_degrees[:, None] > hidden_degrees[None, :])
        # For :meth:`invert`: the hidden units sorted by degree, and where each degree's run ends.
        self.register_buffer("degree_order", torch.argsort(hidden_degrees, stable=True), persistent=False)
        self.degree_ends: tuple[int, ...] = tuple(torch.bincount(hidden_degrees, minlength=features).cumsum(0).tolist())

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Autoregressive parameters ``(n, D * output_multiplier)`` of inputs ``(n, D)`` and context ``(n, C)``."""
        if context is None:
            raise ValueError("ConditionalMADE needs a context")
        # The activation is looked up at each call, so that assigning another one takes effect.
        fused = fusable_activation(self.activation) if self.fuse_activation else None
        # One product for the features and the context: [y, c] times [W_y * mask, W_c].
        weight = torch.cat([self.initial_layer.weight * self.initial_layer.mask, self.context_layer.weight], dim=1)
        bias = self.initial_layer.bias + self.context_layer.bias
        h = linear(torch.cat([inputs, context], dim=1), weight, bias, activation=fused)
        if fused is None:
            h = self.activation(h)
        for block in self.blocks:
            h = linear(h, block.weight * block.mask, block.bias, activation=fused)
            if fused is None:
                h = self.activation(h)
        return self.final_layer(h)

    def invert(self, inputs: Tensor, context: Tensor, invert_feature: FeatureInverse) -> tuple[Tensor, Tensor]:
        """Invert an autoregressive transform feature by feature in one pass of the network.

        Inverting ``y -> z`` means solving for ``y_i`` given ``z_i`` and the parameters of
        feature ``i``, which depend on ``y_{<i}``. nflows re-runs the whole network once per
        feature (``D`` passes). Here each hidden unit is computed once, as soon as its inputs
        are known: a unit of degree ``k`` depends on ``y_{<k}`` (and on units of degree
        ``<= k``), and feature ``i``'s parameters read units of degree ``<= i``. Step ``i``
        computes the units of degree ``i`` in every layer, then feature ``i``'s parameters,
        then ``y_i``. Ordering the hidden units by degree makes "degree ``<= i``" a prefix,
        so every step is one matrix product per layer on unmasked sub-blocks of the weights.
        Same result as ``D`` full passes up to the order of floating-point sums.

        Args:
            inputs: ``z`` ``(n, D)``.
            context: ``(n, C)``.
            invert_feature: ``(i, z_i (n,), params_i (n, output_multiplier))`` ->
                ``(y_i (n,), log |d y_i / d z_i| (n,))``.

        Returns:
            ``y`` ``(n, D)`` and the summed log-determinant ``(n,)``.
        """
        n, features = inputs.shape
        multiplier = self.final_layer.out_features // features
        order, ends = self.degree_order, self.degree_ends
        # Weights with the hidden units in degree order; the sub-blocks used below lie
        # entirely inside the masks, so they need no masking. Hidden units are kept as
        # (units, n), so each step's new units are a block of rows.
        initial = self.initial_layer.weight[order]
        blocks = [(b.weight[order][:, order], b.bias[order, None]) for b in self.blocks]
        final = self.final_layer.weight[:, order]
        final_bias = self.final_layer.bias[:, None]
        context_bias = (self.context_layer.bias + self.initial_layer.bias)[order, None]
        from_context = torch.addmm(context_bias, self.context_layer.weight[order], context.T)
        # Without autograd, units and outputs are written into preallocated tensors and
        # activated in place; with it, they are concatenated step by step.
        in_place = not torch.is_grad_enabled() and self.activation in _IN_PLACE
        rows_so_far = len(order) if in_place else 0
        hidden = [inputs.new_empty(rows_so_far, n) for _ in range(len(blocks) + 1)]
        outputs = inputs.new_empty(features if in_place else 0, n)
        logabsdet = inputs.new_zeros(n)

        def layer_units(layer: int, bias: Tensor, weight: Tensor, below: Tensor, start: int, end: int) -> None:
            if in_place:
                units = hidden[layer][start:end]
                _IN_PLACE[self.activation](torch.addmm(bias, weight, below, out=units))
            else:
                hidden[layer] = torch.cat([hidden[layer], self.activation(torch.addmm(bias, weight, below))])

        start = 0
        for i in range(features):
            end = ends[i]
            # Layer 0: units of degree i see y_{<i} and the context.
            layer_units(0, from_context[start:end], initial[start:end, :i], outputs[:i], start, end)
            for layer, (weight, bias) in enumerate(blocks, start=1):
                layer_units(layer, bias[start:end], weight[start:end, :end], hidden[layer - 1][:end], start, end)
            rows = slice(i * multiplier, (i + 1) * multiplier)
            params = torch.addmm(final_bias[rows], final[rows, :end], hidden[-1][:end]).T
            y_i, logabsdet_i = invert_feature(i, inputs[:, i], params)
            if in_place:
                outputs[i] = y_i
            else:
                outputs = torch.cat([outputs, y_i[None]])
            logabsdet = logabsdet + logabsdet_i
            start = end
        return outputs.T.contiguous(), logabsdet


class _OnePassInverse:
    """Mixin for nflows autoregressive transforms: with a :class:`ConditionalMADE`
    conditioner, :meth:`inverse` (sampling) runs the network once
    (:meth:`ConditionalMADE.invert`) instead of once per feature, and inverts one feature
    per step instead of all of them ``D`` times. Other conditioners keep nflows' loop.
    """

    autoregressive_net: nn.Module

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if isinstance(self.autoregressive_net, ConditionalMADE) and context is not None and inputs.ndim == 2:
            return self.autoregressive_net.invert(inputs, context, self._invert_feature)
        return super().inverse(inputs, context)  # type: ignore[misc]

    def _invert_feature(self, index: int, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class AffineAutoregressive(_OnePassInverse, MaskedAffineAutoregressiveTransform):
    """nflows' masked affine autoregressive layer (``y = softplus(s) + eps`` times ``z`` plus
    shift, in nflows 0.14) with the one-pass inverse of :class:`_OnePassInverse`."""

    def _invert_feature(self, index: int, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale = nn.functional.softplus(params[:, 0]) + self._epsilon
        return (inputs - params[:, 1]) / scale, -torch.log(scale)


class SplineAutoregressive(_OnePassInverse, MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
    """nflows' autoregressive rational-quadratic spline layer (linear tails), evaluated by
    :func:`sbikit.splines.rational_quadratic_spline`, with the one-pass inverse of
    :class:`_OnePassInverse`.

    The same function as nflows' layer (tested to rounding); nflows evaluates it through
    boolean indexing, in-place edits and one gather per quantity, which on the small
    tensors of NPE makes the spline cost more than the conditioner network.
    """

    def _spline(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The layer's spline on inputs ``(...)`` with parameters ``(..., 3 K - 1)``, elementwise."""
        return rational_quadratic_spline(
            inputs,
            params,
            bound=self.tail_bound,
            inverse=inverse,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )

    def _invert_feature(self, index: int, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(inputs, params, inverse=True)

    def _elementwise(
        self, inputs: Tensor, autoregressive_params: Tensor, inverse: bool = False
    ) -> tuple[Tensor, Tensor]:
        batch, features = inputs.shape[0], inputs.shape[1]
        params = autoregressive_params.view(batch, features, self._output_dim_multiplier())
        outputs, logabsdet = self._spline(inputs, params, inverse)
        return outputs, logabsdet.sum(-1)


def _relu_mlp(in_features: int, hidden_features: int, out_features: int, *, num_hidden: int) -> nn.Sequential:
    """``num_hidden`` ReLU layers of ``hidden_features`` units, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_hidden):
        layers += [Linear(width, hidden_features), nn.ReLU()]
        width = hidden_features
    layers.append(Linear(width, out_features))
    return nn.Sequential(*layers)


class ConditionalAffine(Transform):
    """Elementwise affine layer whose shift and scale are functions of the context only.

    Data to noise: ``z = (y - m(c)) / s(c)``, with ``m`` and ``s = softplus(.) + 1e-3``
    given by an MLP of the embedded context (two hidden ReLU layers). As the first layer on
    the data side it moves each conditional density (a posterior, for NPE) to the origin
    with unit width, so that the spline bins on ``[-tail_bound, tail_bound]`` are spent on
    its shape rather than on finding it; without it a posterior much narrower than the
    prior has to be found and stretched by the splines themselves. The output layer starts
    at zero, so the layer starts as the identity.

    Args:
        features: ``D``.
        context_features: width of the embedded context.
        hidden_features: width of the two hidden layers.
    """

    _MIN_SCALE = 1e-3
    #: ``softplus(_OFFSET) + _MIN_SCALE = 1``: the scale is exactly 1 at zero output.
    _OFFSET = math.log(math.expm1(1.0 - _MIN_SCALE))

    def __init__(self, features: int, context_features: int, hidden_features: int) -> None:
        super().__init__()
        self.features = features
        self.net = _relu_mlp(context_features, hidden_features, 2 * features, num_hidden=2)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_and_scale(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("ConditionalAffine needs a context")
        params = self.net(context)
        shift, unconstrained = params[:, : self.features], params[:, self.features :]
        return shift, nn.functional.softplus(unconstrained + self._OFFSET) + self._MIN_SCALE

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y`` ``(n, D)`` -> ``z`` ``(n, D)`` and ``log |dz/dy|`` ``(n,)``."""
        shift, scale = self._shift_and_scale(context)
        return (inputs - shift) / scale, -torch.log(scale).sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` ``(n, D)`` -> ``y`` ``(n, D)`` and ``log |dy/dz|`` ``(n,)``."""
        shift, scale = self._shift_and_scale(context)
        return inputs * scale + shift, torch.log(scale).sum(-1)


def _autoregressive(cls: type[AutoregressiveTransform], cfg: FlowConfig, activation: Any, **kwargs: Any) -> Transform:
    """An nflows autoregressive transform ``cls`` whose conditioner is ``cfg.conditioner``."""
    if cfg.conditioner not in CONDITIONERS:
        raise ValueError(f"conditioner must be one of {CONDITIONERS}, got {cfg.conditioner!r}")
    common = dict(features=cfg.features, context_features=cfg.context_features, use_residual_blocks=False, **kwargs)
    if cfg.conditioner == "nflows_made":
        return cls(hidden_features=cfg.hidden_features, num_blocks=cfg.num_blocks, activation=activation, **common)
    # Build nflows' transform with a throw-away one-unit MADE, then give it the conditional one.
    transform = cls(hidden_features=1, num_blocks=0, **common)
    transform.autoregressive_net = ConditionalMADE(
        cfg.features,
        cfg.hidden_features,
        cfg.context_features,
        num_blocks=cfg.num_blocks,
        output_multiplier=transform._output_dim_multiplier(),
        activation=activation,
    )
    return transform


def _build_transform(cfg: FlowConfig) -> Transform:
    if cfg.kind not in FLOW_KINDS:
        raise ValueError(f"flow must be one of {FLOW_KINDS}, got {cfg.kind!r}")
    if cfg.kind == "realnvp" and cfg.features < 2:
        raise ValueError("flow='realnvp' needs at least 2 parameters (coupling splits them); use 'maf' or 'nsf'")
    layers: list[Transform] = []
    if cfg.conditional_affine:
        layers.append(ConditionalAffine(cfg.features, cfg.context_features, cfg.hidden_features))
    for i in range(cfg.num_transforms):
        if cfg.kind == "maf":
            layers.append(_autoregressive(AffineAutoregressive, cfg, torch.tanh))
            if cfg.features > 1:
                layers.append(RandomPermutation(cfg.features))
        elif cfg.kind == "nsf":
            layers.append(
                _autoregressive(
                    SplineAutoregressive,
                    cfg,
                    torch.relu,
                    num_bins=cfg.num_bins,
                    tails="linear",
                    tail_bound=cfg.tail_bound,
                )
            )
            if cfg.features > 1:
                layers.append(RandomPermutation(cfg.features))
        else:  # realnvp
            mask = torch.zeros(cfg.features, dtype=torch.long)
            mask[i % 2 :: 2] = 1
            layers.append(
                SoftplusAffineCoupling(
                    mask=mask,
                    transform_net_create_fn=lambda n_in, n_out: ResidualNet(
                        in_features=n_in,
                        out_features=n_out,
                        hidden_features=cfg.hidden_features,
                        context_features=cfg.context_features,
                        num_blocks=cfg.num_blocks,
                        activation=torch.relu,
                    ),
                )
            )
    return CompositeTransform(layers)


class SoftplusAffineCoupling(AffineCouplingTransform):
    """Affine coupling whose scale is ``softplus(s + log(e - 1)) + 1e-3``.

    nflows' ``AffineCouplingTransform`` uses ``sigmoid(s + 2) + 1e-3``, a scale below 1.001
    that can only contract in the data-to-noise direction; a posterior much narrower than
    its standardised prior then cannot be fitted. The softplus scale is unbounded above
    and equals 1 at ``s = 0``, so layers start near the identity.
    """

    _OFFSET = math.log(math.e - 1.0)

    def _scale_and_shift(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        unconstrained_scale = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        scale = nn.functional.softplus(unconstrained_scale + self._OFFSET) + 1e-3
        return scale, shift


class ConditionalFlow(nn.Module):
    """Conditional density ``q(y | c)`` with built-in standardisation.

    Args:
        config: architecture.
        context_shape: shape of one raw context (before embedding), e.g. ``(8,)`` or ``(1, 32, 32)``.
        embedding: optional network mapping standardised contexts ``(n, *context_shape)``
            to ``(n, config.context_features)``; ``None`` flattens the context.
    """

    def __init__(
        self,
        config: FlowConfig,
        context_shape: tuple[int, ...],
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.context_shape = tuple(int(s) for s in context_shape)
        self.embedding = embedding if embedding is not None else nn.Flatten()
        self.transform = _build_transform(config)
        self.register_buffer("y_shift", torch.zeros(config.features))
        self.register_buffer("y_scale", torch.ones(config.features))
        self.register_buffer("c_shift", torch.zeros(self.context_shape))
        self.register_buffer("c_scale", torch.ones(self.context_shape))

    # -- standardisation ------------------------------------------------------------
    @torch.no_grad()
    def set_standardization(self, y: Tensor, context: Tensor, *, min_scale: float = 1e-8) -> None:
        """Set z-scoring statistics from training data.

        ``y`` ``(n, features)`` is z-scored per feature. A vector context ``(n, k)`` is
        z-scored per entry; a multi-dimensional context (e.g. images) by one global mean
        and standard deviation so that spatial structure is kept. Constant entries get
        scale 1.
        """
        self.y_shift.copy_(y.mean(0))
        self.y_scale.copy_(_safe_std(y, 0, min_scale))
        if context.ndim == 2:
            self.c_shift.copy_(context.mean(0))
            self.c_scale.copy_(_safe_std(context, 0, min_scale))
        else:
            self.c_shift.fill_(float(context.mean()))
            self.c_scale.fill_(float(_safe_std(context.reshape(-1), 0, min_scale)))

    def embed(self, context: Tensor) -> Tensor:
        """Standardise and embed contexts ``(n, *context_shape)`` -> ``(n, context_features)``."""
        return self.embedding((context - self.c_shift) / self.c_scale)

    def _pass_through_embedding(self) -> MLPEmbedding | None:
        """The embedding when it is an :class:`MLPEmbedding` that passes its input through."""
        emb = self.embedding
        return emb if isinstance(emb, MLPEmbedding) and emb.pass_input else None

    @property
    def embedding_passes_x(self) -> bool:
        """Whether the embedded context holds the whole z-scored context: no embedding, or an
        :class:`MLPEmbedding` that passes its input through."""
        return isinstance(self.embedding, nn.Flatten) or self._pass_through_embedding() is not None

    def typicality_summaries(self, embedded: Tensor) -> Tensor:
        """What a typicality check rates of an embedded context ``(n, context_features)``.

        The embedding's output, except behind an :class:`MLPEmbedding` that passes its input
        through: then only that input, the z-scored ``x`` ``(n, prod(context_shape))``, as
        without an embedding (the learned features add dimensions, not information, to it).
        """
        emb = self._pass_through_embedding()
        return embedded if emb is None else emb.input_part(embedded)

    # -- density ---------------------------------------------------------------------
    def log_prob(self, y: Tensor, context: Tensor) -> Tensor:
        """``log q(y | c)`` for paired rows.

        Args:
            y: ``(n, features)``.
            context: ``(n, *context_shape)``.

        Returns:
            ``(n,)``.
        """
        return self.log_prob_embedded(y, self.embed(context))

    def log_prob_embedded(self, y: Tensor, embedded: Tensor) -> Tensor:
        """As :meth:`log_prob` with an already embedded context ``(n, context_features)``."""
        z, logdet = self.transform((y - self.y_shift) / self.y_scale, context=embedded)
        base = -0.5 * (z**2).sum(-1) - 0.5 * self.config.features * _LOG_2PI
        return base + logdet - torch.log(self.y_scale).sum()

    def forward(self, y: Tensor, context: Tensor) -> Tensor:
        """Alias of :meth:`log_prob` so that the module can be called directly."""
        return self.log_prob(y, context)

    # -- sampling --------------------------------------------------------------------
    def sample_embedded(self, num_samples: int, embedded: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` for each embedded context.

        Args:
            num_samples: draws per context.
            embedded: ``(m, context_features)``.
            generator: torch generator on the flow's device.

        Returns:
            ``(m, num_samples, features)``.
        """
        m = embedded.shape[0]
        noise = torch.randn(
            m * num_samples, self.config.features, generator=generator, device=embedded.device, dtype=embedded.dtype
        )
        ctx = embedded.repeat_interleave(num_samples, dim=0)
        y, _ = self.transform.inverse(noise, context=ctx)
        y = y * self.y_scale + self.y_shift
        return y.reshape(m, num_samples, self.config.features)

    def sample(self, num_samples: int, context: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` for each context ``(m, *context_shape)`` -> ``(m, num_samples, features)``."""
        return self.sample_embedded(num_samples, self.embed(context), generator)


#: Learned features of :class:`MLPEmbedding` when ``out_features`` is not given.
MLP_EMBEDDING_FEATURES = 32


class MLPEmbedding(nn.Module):
    """``x -> [x, MLP(x)]``: the input and learned features of it, for vectors ``(n, k)``.

    Args:
        in_features: ``k``, the length of one (flattened) observation.
        hidden_features: width of the hidden layers.
        out_features: learned features appended to the input.
        num_layers: hidden layers (ReLU).
        pass_input: keep ``x`` in the output (``[x, MLP(x)]``, ``k + out_features``
            columns); ``False`` gives ``MLP(x)`` alone.

    Attributes:
        features: output width, ``k + out_features`` (or ``out_features``).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int = 128,
        out_features: int = MLP_EMBEDDING_FEATURES,
        num_layers: int = 2,
        pass_input: bool = True,
    ) -> None:
        super().__init__()
        if min(in_features, hidden_features, out_features) < 1 or num_layers < 0:
            raise ValueError(
                "in_features, hidden_features and out_features must be >= 1 and num_layers >= 0, got "
                f"{in_features}, {hidden_features}, {out_features}, {num_layers}"
            )
        self.in_features = int(in_features)
        self.hidden_features = int(hidden_features)
        self.out_features = int(out_features)
        self.num_layers = int(num_layers)
        self.pass_input = bool(pass_input)
        self.net = _relu_mlp(self.in_features, self.hidden_features, self.out_features, num_hidden=self.num_layers)
        self.features = self.out_features + (self.in_features if self.pass_input else 0)

    def forward(self, x: Tensor) -> Tensor:
        """``(n, *x_shape)`` with ``prod(x_shape) = in_features`` -> ``(n, features)``."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"MLPEmbedding expects {self.in_features} input features, got {flat.shape[1]}")
        learned = self.net(flat)
        return torch.cat([flat, learned], dim=1) if self.pass_input else learned

    def input_part(self, embedded: Tensor) -> Tensor:
        """The columns of an output ``(n, features)`` that hold the input ``(n, in_features)``.

        Raises:
            ValueError: when the embedding does not pass its input through.
        """
        if not self.pass_input:
            raise ValueError("this MLPEmbedding does not pass its input through (pass_input=False)")
        return embedded[:, : self.in_features]

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments, so a saved posterior can rebuild this embedding."""
        return {
            "in_features": self.in_features,
            "hidden_features": self.hidden_features,
            "out_features": self.out_features,
            "num_layers": self.num_layers,
            "pass_input": self.pass_input,
        }


def _safe_std(t: Tensor, dim: int, min_scale: float) -> Tensor:
    std = t.std(dim) if t.shape[dim] > 1 else torch.ones_like(t.mean(dim))
    return torch.where(std > min_scale, std, torch.ones_like(std))


def build_flow(
    kind: str,
    features: int,
    context_shape: tuple[int, ...],
    *,
    embedding: nn.Module | None = None,
    context_features: int | None = None,
    hidden_features: int = 64,
    num_transforms: int = 5,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    conditional_affine: bool = False,
) -> ConditionalFlow:
    """Build a :class:`ConditionalFlow`.

    Args:
        kind: ``"maf"``, ``"realnvp"`` or ``"nsf"``.
        features: dimension of ``y``.
        context_shape: shape of one raw context.
        embedding: optional context embedding; then ``context_features`` is its output
            width (inferred by a dry run when not given).
        context_features: width of the embedded context.
        hidden_features: conditioner width.
        num_transforms: number of layers.
        num_blocks: layers per conditioner.
        num_bins: spline bins for ``nsf``.
        tail_bound: spline interval half-width (in standardised units) for ``nsf``.
        conditional_affine: start with a :class:`ConditionalAffine` layer.

    Returns:
        The flow, with identity standardisation until :meth:`ConditionalFlow.set_standardization`.
    """
    kind = kind.lower()
    if features < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    if context_features is None:
        if embedding is None:
            context_features = int(math.prod(context_shape))
        else:
            with torch.no_grad():
                was_training = embedding.training
                embedding.eval()
                probe = torch.zeros(2, *context_shape, device=next(iter(embedding.parameters()), torch.zeros(0)).device)
                context_features = int(embedding(probe).shape[-1])
                embedding.train(was_training)
    cfg = FlowConfig(
        kind=kind,
        features=int(features),
        context_features=int(context_features),
        hidden_features=int(hidden_features),
        num_transforms=int(num_transforms),
        num_blocks=int(num_blocks),
        num_bins=int(num_bins),
        tail_bound=float(tail_bound),
        conditional_affine=bool(conditional_affine),
    )
    return ConditionalFlow(cfg, tuple(context_shape), embedding)
