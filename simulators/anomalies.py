"""Injected anomalies for galaxy stamps: satellite trails, blends, cosmic rays and rings.

``inject(images, kind, seed=...)`` adds one anomaly of ``kind`` to every image of a batch
``(n, H, W)`` (vectorised, seeded); :func:`anomaly_signal` returns the added images alone.
Amplitudes are in units of the pixel noise ``noise_sigma`` (1 count for
:class:`simulators.sersic.Sersic`, whose galaxies hold 100 to 1000 counts) and are drawn
per image from the ranges below, all multiplied by ``strength`` (default 1). They are
chosen to be plausible and not trivially bright: a few noise sigmas per pixel, so that a
faint example is hard to see by eye.

* ``"trail"``: a satellite trail, a straight line across the stamp at a uniform random angle
  and a perpendicular offset from the centre uniform within +-40% of the stamp side, with a
  Gaussian cross-section of ``sigma = 1`` pixel (a moving point source seen through the
  PSF) and peak brightness ``U[1, 3] noise_sigma`` per pixel (about 80-240 counts over a
  32-pixel stamp, like a galaxy's total flux spread thin).
* ``"blend"``: a second Sersic galaxy drawn from the Sersic prior (flux 100-1000 counts
  times ``strength``, half-light radius 1.5-5 pixels, index 0.5-4, ``|e| <= 0.43``),
  rendered by :class:`~simulators.sersic.Sersic` (same PSF, no noise) and offset from the
  centre by ``U[0.2, 0.4]`` stamp sides in a uniform direction (whole pixels).
* ``"cosmic_ray"``: 1 to 3 hits, each a single hot pixel or a short track of 2-4 adjacent
  pixels in a random direction, ``U[4, 12] noise_sigma`` per pixel, *not* PSF-convolved
  (a cosmic ray deposits charge in the detector, after the optics).
* ``"ring"``: an Einstein-ring-like annulus centred on the stamp, radius ``U[0.2, 0.35]``
  stamp sides, Gaussian radial profile of ``sigma = U[0.7, 1.2]`` pixels and peak
  brightness ``U[1, 2.5] noise_sigma``, modulated around the ring as
  ``(1 + a cos(phi - phi_0)) / (1 + a)`` with ``a ~ U[0, 0.8]`` (from a full ring to arcs).

Numpy in -> numpy float64 out; torch in -> torch float32 out (as the simulators).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simulators.sersic import Sersic

__all__ = ["inject", "anomaly_signal", "ANOMALY_KINDS"]

#: The kinds :func:`inject` knows.
ANOMALY_KINDS: tuple[str, ...] = ("trail", "blend", "cosmic_ray", "ring")

# Amplitude ranges in noise sigmas (before ``strength``), and geometry, as documented above.
TRAIL_PEAK = (1.0, 3.0)
TRAIL_WIDTH = 1.0
TRAIL_MAX_OFFSET = 0.4
BLEND_OFFSET = (0.2, 0.4)
COSMIC_RAY_PEAK = (4.0, 12.0)
COSMIC_RAY_HITS = (1, 3)
COSMIC_RAY_LENGTH = (1, 4)
RING_PEAK = (1.0, 2.5)
RING_RADIUS = (0.2, 0.35)
RING_WIDTH = (0.7, 1.2)
RING_MAX_ASYMMETRY = 0.8


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to the stamp centre, ``(h, w)`` each (x along columns)."""
    yy, xx = np.meshgrid(np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing="ij")
    return yy, xx


def _trail(n: int, h: int, w: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    yy, xx = _grid(h, w)
    angle = rng.uniform(0.0, math.pi, n)[:, None, None]
    offset = rng.uniform(-TRAIL_MAX_OFFSET, TRAIL_MAX_OFFSET, n)[:, None, None] * min(h, w)
    peak = amp * rng.uniform(*TRAIL_PEAK, n)[:, None, None]
    dist = xx * np.cos(angle) + yy * np.sin(angle) - offset  # signed distance to the line
    return peak * np.exp(-0.5 * (dist / TRAIL_WIDTH) ** 2)


def _blend(n: int, h: int, w: int, rng: np.random.Generator, strength: float, psf_sigma: float) -> np.ndarray:
    side = max(h, w)
    pad = int(math.ceil(BLEND_OFFSET[1] * side)) + 1
    big = Sersic(side + 2 * pad, psf_sigma=psf_sigma)
    low, high = big.prior.low.double().numpy(), big.prior.high.double().numpy()
    theta = low + (high - low) * rng.uniform(size=(n, len(low)))
    if strength > 0:
        theta[:, 0] += math.log10(strength)
    r = rng.uniform(*BLEND_OFFSET, n) * side
    phi = rng.uniform(0.0, 2 * math.pi, n)
    dy, dx = np.rint(r * np.sin(phi)).astype(int), np.rint(r * np.cos(phi)).astype(int)
    stamps = big.model_image(theta) if strength > 0 else np.zeros((n, big.size, big.size))
    r0 = (big.size - h) // 2 - dy  # crop so that the big stamp's centre lands at (h/2 + dy, w/2 + dx)
    c0 = (big.size - w) // 2 - dx
    rows = r0[:, None] + np.arange(h)[None, :]  # (n, h)
    cols = c0[:, None] + np.arange(w)[None, :]  # (n, w)
    return stamps[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _cosmic_ray(n: int, h: int, w: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    out = np.zeros((n, h, w))
    steps = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
    hits = rng.integers(COSMIC_RAY_HITS[0], COSMIC_RAY_HITS[1] + 1, n)
    idx = np.arange(n)
    for k in range(COSMIC_RAY_HITS[1]):
        active = hits > k
        length = rng.integers(COSMIC_RAY_LENGTH[0], COSMIC_RAY_LENGTH[1] + 1, n)
        y, x = rng.integers(0, h, n), rng.integers(0, w, n)
        direction = steps[rng.integers(0, len(steps), n)]
        for j in range(COSMIC_RAY_LENGTH[1]):
            on = active & (length > j)
            if j > 0:  # a straight track: one step in its direction per pixel
                y = np.clip(y + direction[:, 0], 0, h - 1)
                x = np.clip(x + direction[:, 1], 0, w - 1)
            value = amp * rng.uniform(*COSMIC_RAY_PEAK, n)
            np.add.at(out, (idx[on], y[on], x[on]), value[on])
    return out


def _ring(n: int, h: int, w: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    yy, xx = _grid(h, w)
    side = min(h, w)
    radius = (rng.uniform(*RING_RADIUS, n) * side)[:, None, None]
    width = rng.uniform(*RING_WIDTH, n)[:, None, None]
    peak = amp * rng.uniform(*RING_PEAK, n)[:, None, None]
    a = rng.uniform(0.0, RING_MAX_ASYMMETRY, n)[:, None, None]
    phi0 = rng.uniform(0.0, 2 * math.pi, n)[:, None, None]
    r = np.hypot(xx, yy)
    modulation = (1 + a * np.cos(np.arctan2(yy, xx) - phi0)) / (1 + a)
    return peak * modulation * np.exp(-0.5 * ((r - radius) / width) ** 2)


def anomaly_signal(
    kind: str,
    n: int,
    shape: tuple[int, int],
    *,
    seed: int | None = None,
    strength: float = 1.0,
    noise_sigma: float = 1.0,
    psf_sigma: float = 1.0,
) -> np.ndarray:
    """The images that :func:`inject` adds: ``n`` anomalies of ``kind`` on stamps of ``shape``.

    Args:
        kind: one of :data:`ANOMALY_KINDS`.
        n: number of images.
        shape: ``(H, W)``.
        seed: seed of a ``np.random.default_rng``; the same seed gives the same anomalies.
        strength: multiplies every amplitude (the companion's flux for ``"blend"``); ``0``
            adds nothing.
        noise_sigma: the pixel noise the amplitudes are measured in (counts).
        psf_sigma: the PSF of the companion galaxy (``"blend"``), in pixels.

    Returns:
        ``(n, H, W)`` float64.

    Raises:
        ValueError: for an unknown kind, a bad shape, or a negative strength.
    """
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"kind must be one of {ANOMALY_KINDS}, got {kind!r}")
    if len(shape) != 2 or min(int(s) for s in shape) < 4:
        raise ValueError(f"anomalies are drawn on (H, W) stamps with H, W >= 4, got shape {tuple(shape)}")
    if not float(strength) >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if not float(noise_sigma) > 0:
        raise ValueError(f"noise_sigma must be positive, got {noise_sigma}")
    n, (h, w) = int(n), (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    amp = float(strength) * float(noise_sigma)
    if kind == "trail":
        return _trail(n, h, w, rng, amp)
    if kind == "blend":
        return _blend(n, h, w, rng, float(strength), float(psf_sigma))
    if kind == "cosmic_ray":
        return _cosmic_ray(n, h, w, rng, amp)
    return _ring(n, h, w, rng, amp)


def inject(
    images: Any,
    kind: str,
    *,
    seed: int | None = None,
    strength: float = 1.0,
    noise_sigma: float = 1.0,
    psf_sigma: float = 1.0,
) -> np.ndarray | Tensor:
    """Add one anomaly of ``kind`` to every image.

    Args:
        images: ``(n, H, W)`` or one image ``(H, W)``; numpy or torch.
        kind: ``"trail"``, ``"blend"``, ``"cosmic_ray"`` or ``"ring"`` (:data:`ANOMALY_KINDS`).
        seed: seed for the anomalies' random geometry and amplitudes.
        strength: multiplies the documented amplitudes (module docstring).
        noise_sigma: pixel noise of the images (counts); amplitudes are in its units.
        psf_sigma: PSF of the companion galaxy of ``"blend"`` (pixels).

    Returns:
        The images with the anomalies, same shape: numpy float64 for numpy input, torch
        float32 (on the input's device) for torch input.

    Raises:
        ValueError: for an unknown kind, images that are not ``(n, H, W)``, or NaN in them.
    """
    is_torch = isinstance(images, Tensor)
    arr = images.detach().cpu().double().numpy() if is_torch else np.asarray(images, dtype=np.float64)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W) or (H, W), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("images hold NaN or inf")
    out = arr + anomaly_signal(
        kind, len(arr), arr.shape[1:], seed=seed, strength=strength, noise_sigma=noise_sigma, psf_sigma=psf_sigma
    )
    if single:
        out = out[0]
    if is_torch:
        return torch.as_tensor(out, dtype=torch.float32).to(images.device)
    return out
