"""A Sersic galaxy image: pixel-integrated, PSF-convolved, with Gaussian pixel noise."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

from sbikit.priors import BoxUniform
from simulators.base import ArrayLike, Simulator
from simulators.registry import register

__all__ = ["Sersic"]

# Oversampled pixels rendered at once (bounds the float64 work arrays to ~ 64 MB).
_ELEMENTS_PER_BLOCK = 2_000_000


@register("sersic")
class Sersic(Simulator):
    """An elliptical Sersic galaxy on a ``size x size`` stamp (pixel units, centred).

    ``theta = (log10 flux, r_half, n, e1, e2)`` with prior
    ``BoxUniform([2, 1.5, 0.5, -0.3, -0.3], [3, 5, 4, 0.3, 0.3])``: total flux 100 to 1000
    counts, half-light radius 1.5 to 5 pixels, Sersic index 0.5 to 4, ellipticity
    components with ``|e| <= 0.43``.

    Surface brightness ``I(r) = I_e exp(-b_n ((r / r_half)^(1/n) - 1))`` with
    ``b_n = gammaincinv(2n, 1/2)`` (so ``r_half`` encloses half the light). The ellipse has
    axis ratio ``q = (1 - |e|) / (1 + |e|)`` and position angle ``phi = atan2(e2, e1) / 2``;
    the elliptical radius ``r^2 = q x'^2 + y'^2 / q`` (rotated coordinates) preserves area,
    so the total flux is ``2 pi n I_e r_half^2 e^{b_n} Gamma(2n) / b_n^{2n}`` for every ``q``.

    Rendering: the profile is evaluated at the centres of ``oversample x oversample``
    sub-pixels, convolved with a circular Gaussian PSF (``psf_sigma`` pixels) by FFT on the
    oversampled grid (periodic, flux-conserving) and averaged back to pixels, so a pixel
    holds the flux it receives. The data are ``x = model + noise_sigma * N(0, 1)`` per pixel
    and the likelihood is that Gaussian.

    Args:
        size: stamp side in pixels.
        psf_sigma: PSF standard deviation in pixels (0 turns the PSF off).
        noise_sigma: pixel noise standard deviation (counts).
        oversample: sub-pixels per pixel side.
    """

    def __init__(
        self, size: int = 32, *, psf_sigma: float = 1.0, noise_sigma: float = 1.0, oversample: int = 4
    ) -> None:
        if int(size) < 4:
            raise ValueError(f"size must be an integer >= 4, got {size}")
        if not psf_sigma >= 0:
            raise ValueError(f"psf_sigma must be >= 0, got {psf_sigma}")
        if not noise_sigma > 0:
            raise ValueError(f"noise_sigma must be positive, got {noise_sigma}")
        if int(oversample) < 1:
            raise ValueError(f"oversample must be a positive integer, got {oversample}")
        self.size = int(size)
        self.psf_sigma = float(psf_sigma)
        self.noise_sigma = float(noise_sigma)
        self.oversample = int(oversample)
        self.prior = BoxUniform(torch.tensor([2.0, 1.5, 0.5, -0.3, -0.3]), torch.tensor([3.0, 5.0, 4.0, 0.3, 0.3]))
        self.theta_names = ["log10_flux", "r_half", "sersic_n", "e1", "e2"]
        self.x_shape = (self.size, self.size)
        s, m = self.oversample, self.size * self.oversample
        # Sub-pixel centres relative to the stamp centre, in pixels.
        c = (np.arange(m) + 0.5) / s - self.size / 2
        self._xx, self._yy = np.meshgrid(c, c, indexing="xy")  # (m, m); x along columns
        fy = np.fft.fftfreq(m, d=1.0 / s)  # cycles per pixel
        fx = np.fft.rfftfreq(m, d=1.0 / s)
        # Fourier transform of the unit-flux Gaussian PSF on the rfft2 grid, (m, m // 2 + 1).
        self._psf_ft = np.exp(-2 * math.pi**2 * self.psf_sigma**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))

    # -- model -----------------------------------------------------------------------
    def model_image(self, theta: ArrayLike) -> ArrayLike:
        """Noise-free, PSF-convolved, pixel-integrated images.

        Args:
            theta: ``(n, 5)`` or ``(5,)``.

        Returns:
            ``(n, size, size)`` (``(size, size)`` for one row): numpy float64 for numpy input,
            torch float32 for torch input. Each image sums to the flux that falls on the stamp.
        """
        th, single = self._theta_array(theta)
        img = self._model(th)
        return self._output(img[0] if single else img, theta)

    def _model(self, theta: np.ndarray) -> np.ndarray:
        n, s, size = theta.shape[0], self.oversample, self.size
        out = np.empty((n, size, size))
        block = max(1, _ELEMENTS_PER_BLOCK // self._xx.size)
        for start in range(0, n, block):
            th = theta[start : start + block]
            fine = self._profile(th)  # (b, m, m) surface brightness per pixel area
            if self.psf_sigma > 0:
                fine = np.fft.irfft2(np.fft.rfft2(fine) * self._psf_ft, s=fine.shape[1:])
            out[start : start + block] = fine.reshape(len(th), size, s, size, s).mean(axis=(2, 4))
        return out

    def _profile(self, theta: np.ndarray) -> np.ndarray:
        flux = 10.0 ** theta[:, 0]
        r_half, n_s, e1, e2 = (theta[:, i, None, None] for i in range(1, 5))
        e = np.hypot(e1, e2)
        q = (1 - e) / (1 + e)
        phi = 0.5 * np.arctan2(e2, e1)
        cos, sin = np.cos(phi), np.sin(phi)
        xr = cos * self._xx + sin * self._yy
        yr = -sin * self._xx + cos * self._yy
        r = np.sqrt(q * xr**2 + yr**2 / q)
        n1 = n_s[:, 0, 0]
        b = special.gammaincinv(2 * n1, 0.5)
        # log of the total flux for I_e = 1: log(2 pi n r_half^2) + b + lgamma(2n) - 2n log b
        log_norm = np.log(2 * math.pi * n1 * r_half[:, 0, 0] ** 2) + b + special.gammaln(2 * n1) - 2 * n1 * np.log(b)
        log_ie = np.log(flux) - log_norm
        return np.exp(log_ie[:, None, None] - b[:, None, None] * ((r / r_half) ** (1.0 / n_s) - 1.0))

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        model = self._model(theta)
        return model + self.noise_sigma * rng.standard_normal(model.shape)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        resid = (x - self._model(theta)) / self.noise_sigma
        norm = self.size**2 * (math.log(self.noise_sigma) + 0.5 * math.log(2 * math.pi))
        return -0.5 * (resid**2).sum(axis=(1, 2)) - norm
