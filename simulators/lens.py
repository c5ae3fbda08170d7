"""Strong lensing: a singular isothermal ellipsoid lensing a Gaussian source, with pixel noise."""

from __future__ import annotations

import math

import numpy as np
import torch

from sbikit.priors import BoxUniform
from simulators.base import ArrayLike, Simulator
from simulators.registry import register

__all__ = ["Lens"]

_ELEMENTS_PER_BLOCK = 2_000_000


@register("lens")
class Lens(Simulator):
    """A singular isothermal ellipsoid (SIE) lens and a circular Gaussian source.

    ``theta = (theta_E, q, x_s, y_s)``: Einstein radius (arcsec), lens axis ratio, source
    offset in x and y (arcsec); prior ``BoxUniform([0.8, 0.5, -0.3, -0.3], [1.6, 0.95, 0.3, 0.3])``.
    The lens is centred with its major axis along x. Image-plane positions ``t`` map to the
    source plane by the lens equation ``beta = t - alpha(t)`` with the SIE deflection of
    Keeton (2001, no core), ``psi = sqrt(q^2 x^2 + y^2)``,
    ``alpha_x = b q / sqrt(1 - q^2) atan(sqrt(1 - q^2) x / psi)``,
    ``alpha_y = b q / sqrt(1 - q^2) atanh(sqrt(1 - q^2) y / psi)``, normalised by
    ``b = theta_E / sqrt(q)``: the convergence is ``kappa = b q / (2 psi)`` and its
    ``kappa = 1/2`` contour (the tangential critical curve of an SIE) encloses the area of a
    circle of radius ``theta_E``. The source has surface brightness
    ``amplitude * exp(-|beta - (x_s, y_s)|^2 / (2 source_sigma^2))``; lensing conserves
    surface brightness. Pixels (``pixel_scale`` arcsec, ``size x size``, centred) are the
    mean of ``oversample x oversample`` sub-pixel samples. The data are
    ``model + noise_sigma * N(0, 1)`` and the likelihood is that Gaussian.

    Args:
        size: image side in pixels.
        pixel_scale: arcsec per pixel.
        source_sigma: source width in arcsec.
        amplitude: peak source surface brightness (image units).
        noise_sigma: pixel noise standard deviation.
        oversample: sub-pixels per pixel side.
    """

    def __init__(
        self,
        size: int = 64,
        *,
        pixel_scale: float = 0.06,
        source_sigma: float = 0.1,
        amplitude: float = 1.0,
        noise_sigma: float = 0.1,
        oversample: int = 2,
    ) -> None:
        if int(size) < 4:
            raise ValueError(f"size must be an integer >= 4, got {size}")
        for name, value in (
            ("pixel_scale", pixel_scale),
            ("source_sigma", source_sigma),
            ("noise_sigma", noise_sigma),
            ("amplitude", amplitude),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if int(oversample) < 1:
            raise ValueError(f"oversample must be a positive integer, got {oversample}")
        self.size = int(size)
        self.pixel_scale = float(pixel_scale)
        self.source_sigma = float(source_sigma)
        self.amplitude = float(amplitude)
        self.noise_sigma = float(noise_sigma)
        self.oversample = int(oversample)
        self.prior = BoxUniform(torch.tensor([0.8, 0.5, -0.3, -0.3]), torch.tensor([1.6, 0.95, 0.3, 0.3]))
        self.theta_names = ["theta_E", "q", "x_s", "y_s"]
        self.x_shape = (self.size, self.size)
        m = self.size * self.oversample
        c = ((np.arange(m) + 0.5) / self.oversample - self.size / 2) * self.pixel_scale
        self._xx, self._yy = np.meshgrid(c, c, indexing="xy")  # (m, m) arcsec; x along columns

    # -- model -----------------------------------------------------------------------
    @staticmethod
    def deflection(x: np.ndarray, y: np.ndarray, theta_e: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SIE deflection ``(alpha_x, alpha_y)`` at image positions ``(x, y)`` (broadcasting, arcsec)."""
        s = np.sqrt(np.maximum(1.0 - q**2, 1e-12))
        b = theta_e / np.sqrt(q)
        psi = np.maximum(np.sqrt(q**2 * x**2 + y**2), 1e-12)
        ax = b * q / s * np.arctan(s * x / psi)
        ay = b * q / s * np.arctanh(np.clip(s * y / psi, -1 + 1e-15, 1 - 1e-15))
        return ax, ay

    def model_image(self, theta: ArrayLike) -> ArrayLike:
        """Noise-free lensed images.

        Args:
            theta: ``(n, 4)`` or ``(4,)``.

        Returns:
            ``(n, size, size)`` (``(size, size)`` for one row): numpy float64 for numpy input,
            torch float32 for torch input.
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
            te, q, xs, ys = (th[:, i, None, None] for i in range(4))
            ax, ay = self.deflection(self._xx, self._yy, te, q)
            bx, by = self._xx - ax - xs, self._yy - ay - ys
            fine = self.amplitude * np.exp(-(bx**2 + by**2) / (2 * self.source_sigma**2))
            out[start : start + block] = fine.reshape(len(th), size, s, size, s).mean(axis=(2, 4))
        return out

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        model = self._model(theta)
        return model + self.noise_sigma * rng.standard_normal(model.shape)

    def _log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        resid = (x - self._model(theta)) / self.noise_sigma
        norm = self.size**2 * (math.log(self.noise_sigma) + 0.5 * math.log(2 * math.pi))
        return -0.5 * (resid**2).sum(axis=(1, 2)) - norm
