"""Stationary, isotropic linear filters on images: the pieces of the CVAE's ``decoder="spectral"``.

A real filter whose transfer function ``t(|k|)`` depends only on the length of the wave
vector is a circulant (periodic) convolution ``L = F^H diag(t) F`` with ``F`` the
orthonormal 2-d DFT (``norm="ortho"``). ``t(k) = t(-k)`` makes ``L`` real and symmetric, so
for white noise ``w ~ N(0, I)`` the field ``L w`` is Gaussian, stationary and isotropic with
covariance ``F^H diag(t^2) F``: the variance of each orthonormal Fourier coefficient is
``t(|k|)^2``, its power spectrum. ``|k|`` takes few distinct values on a grid (153 on
32 x 32), so a network evaluates ``t`` once per distinct value and the results are gathered
onto the grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["radial_frequencies", "filter_fields"]


def radial_frequencies(height: int, width: int) -> tuple[Tensor, Tensor]:
    """The distinct wave numbers of an ``height x width`` FFT grid, as network inputs, and where each lies.

    ``|k| = 2 pi hypot(f_y, f_x)`` with numpy's ``fftfreq`` on each axis (cycles per pixel).

    Returns:
        ``(features, index)``: ``features`` float32 ``(U, 2)``, one row per distinct ``|k|``
        (ascending): ``log |k|`` standardised over the distinct non-zero values (``0`` for
        ``k = 0``) and an indicator of ``k = 0``; ``index`` int64 ``(height * width,)``, the
        row of ``features`` of each grid point in row-major order.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"the grid needs positive sizes, got {height} x {width}")
    k = 2 * math.pi * np.hypot(np.fft.fftfreq(int(height))[:, None], np.fft.fftfreq(int(width))[None, :])
    values, index = np.unique(np.round(k, 12).ravel(), return_inverse=True)
    log_k = np.zeros_like(values)
    positive = values > 0
    if positive.sum() > 1:
        lk = np.log(values[positive])
        log_k[positive] = (lk - lk.mean()) / lk.std()
    features = np.stack([log_k, (~positive).astype(float)], axis=1)
    return torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(index.ravel(), dtype=torch.int64)


def filter_fields(fields: Tensor, transfer: Tensor) -> Tensor:
    """Apply the stationary filters ``F^H diag(transfer) F`` to fields, over the last two dimensions.

    Args:
        fields: real ``(..., H, W)``.
        transfer: real ``(..., H, W)`` (broadcast against ``fields``), even under ``k -> -k``
            (a function of ``|k|``), so the result is real.

    Returns:
        Real ``(..., H, W)``: the filtered fields.
    """
    spectrum = torch.fft.fft2(fields, norm="ortho")
    return torch.fft.ifft2(transfer * spectrum, norm="ortho").real
