"""Context embeddings for vector data, trained jointly with a flow.

:class:`MLPEmbedding` is NPE's default embedding of vector observations for the spline flow
(``NPE(embedding="auto")``): one MLP of the z-scored ``x`` whose features every flow layer
reads, next to ``x`` itself. Without it each of the flow's conditioners learns its own
features of ``x`` from its first linear layer; sharing one feature network lowered slcp's
held-out loss by ~0.2 nats at the same cost (docs/defaults.md, sixth round).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MLPEmbedding", "MLP_EMBEDDING_FEATURES"]

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
        layers: list[nn.Module] = []
        width = self.in_features
        for _ in range(self.num_layers):
            layers += [nn.Linear(width, self.hidden_features), nn.ReLU()]
            width = self.hidden_features
        layers.append(nn.Linear(width, self.out_features))
        self.net = nn.Sequential(*layers)
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
