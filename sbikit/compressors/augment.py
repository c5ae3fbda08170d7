"""Random image augmentations for contrastive learning: 90-degree rotations, flips, shifts, noise.

Each transformation is drawn independently per image from torch's global generator (seeded by
the compressor's ``fit``), works on ``(b, H, W)`` or ``(b, C, H, W)`` batches on any device, and
keeps the image shape. Choose only symmetries of your data: rotations, flips and circular
shifts leave the statistics of a periodic, isotropic field (the GRF) unchanged, but not those
of a galaxy with a preferred orientation; added noise changes a field's power spectrum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Augment"]


@dataclass
class Augment:
    """A random augmentation of a batch of images.

    Attributes:
        rotate90: rotate each image by a random multiple of 90 degrees (square images only).
        flip: flip each image horizontally with probability 1/2 (with ``rotate90`` this gives
            all 8 symmetries of the square).
        max_shift: shift each image circularly by up to this many pixels along each axis
            (a crop of the periodically extended image); 0 turns it off.
        noise_std: add Gaussian noise of this standard deviation (in standardised units).
    """

    rotate90: bool = True
    flip: bool = True
    max_shift: int = 0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if int(self.max_shift) < 0 or not self.noise_std >= 0:
            raise ValueError(f"max_shift and noise_std must be >= 0, got {self.max_shift} and {self.noise_std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, x: Tensor) -> Tensor:
        """Augment ``x`` ``(b, H, W)`` or ``(b, C, H, W)`` -> same shape."""
        h, w = x.shape[-2], x.shape[-1]
        b = x.shape[0]
        if self.rotate90:
            if h != w:
                raise ValueError(f"rotate90 needs square images, got {h} x {w}; set rotate90=False")
            k = torch.randint(0, 4, (b,), device=x.device)
            out = x.clone()
            for r in range(1, 4):
                sel = k == r
                if bool(sel.any()):
                    out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
            x = out
        if self.flip:
            sel = (torch.rand(b, device=x.device) < 0.5).reshape(b, *([1] * (x.ndim - 1)))
            x = torch.where(sel, x.flip(-1), x)
        if self.max_shift > 0:
            s = int(self.max_shift)
            dy = torch.randint(-s, s + 1, (b,), device=x.device)
            dx = torch.randint(-s, s + 1, (b,), device=x.device)
            rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None]) % h  # (b, H)
            cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None]) % w  # (b, W)
            lead = x.shape[1:-2]
            flat = x.reshape(b, -1, h, w)
            idx_r = rows[:, None, :, None].expand(b, flat.shape[1], h, w)
            flat = flat.gather(2, idx_r)
            idx_c = cols[:, None, None, :].expand(b, flat.shape[1], h, w)
            x = flat.gather(3, idx_c).reshape(b, *lead, h, w)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x
