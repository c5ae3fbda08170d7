"""How faithful an emulator is to its simulator, at fixed parameters: C2ST, MMD, KS, power spectra, speed.

At each ``theta`` of a test set, :func:`fidelity` draws ``num_samples`` outputs from the
emulator and from the simulator and compares the two samples:

* C2ST (:func:`sbikit.diagnostics.c2st`): accuracy of a classifier telling them apart;
  0.5 is indistinguishable. On ``x`` for vectors, on ``summary(x)`` when a summary (a
  callable or a fitted compressor) is given, and on a cheap image summary otherwise
  (:func:`image_summary`; a flattened 32 x 32 image would need a 10,240-unit classifier).
* MMD: the unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel
  whose bandwidth is the median pairwise distance (:func:`mmd`), on the same features,
  z-scored with the simulated sample's statistics. About 0 (either sign) when the
  distributions agree.
* KS: the two-sample Kolmogorov-Smirnov statistic of all output values pooled (the pixel
  histogram for images) and its p-value (which treats values as independent, so for images
  read it as a rough guide).
* For images, the ratio emulated / simulated of the mean azimuthally averaged power spectrum
  (:func:`power_spectrum`) in each ``k`` bin, with its Monte Carlo error.
* Speed: outputs per second of each at the same batch size (``num_samples`` rows).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbikit.diagnostics.c2st import c2st

__all__ = ["FidelityReport", "fidelity", "mmd", "power_spectrum", "image_summary"]

logger = logging.getLogger(__name__)

# Values per side fed to the KS test (a strided subset beyond this).
_KS_MAX_VALUES = 200_000
# Rows per block of kernel evaluations in mmd (bounds memory at ~ 2048^2 doubles).
_MMD_BLOCK = 2048
# Points used for the median heuristic.
_MEDIAN_POINTS = 2000


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


# -- power spectrum ----------------------------------------------------------------------------------
def _bin_matrix(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Averaging matrix ``(h * w, num_bins)`` over annuli of ``|k|`` and the mean ``|k|`` per annulus."""
    ky = 2 * math.pi * np.fft.fftfreq(h)
    kx = 2 * math.pi * np.fft.fftfreq(w)
    k = np.hypot(ky[:, None], kx[None, :]).ravel()
    dk = 2 * math.pi / min(h, w)
    index = np.rint(k / dk).astype(int)
    num_bins = min(h, w) // 2
    mat = np.zeros((h * w, num_bins))
    centres = np.empty(num_bins)
    for j in range(1, num_bins + 1):
        sel = index == j
        mat[sel, j - 1] = 1.0 / sel.sum()
        centres[j - 1] = k[sel].mean()
    return mat, centres


def power_spectrum(images: Any) -> tuple[Tensor, Tensor]:
    """Azimuthally averaged power spectrum of every image.

    With ``X = FFT2(x)`` (unnormalised) on an ``H x W`` image, the power of mode ``k`` is
    ``|X_k|^2 / (H W)``, the convention of ``simulators.grf`` (a field with power spectrum
    ``P(k)`` has ``E |X_k|^2 / (H W) = P(k)``); ``k = 2 pi sqrt(f_y^2 + f_x^2)`` in radians per
    pixel with ``f = numpy.fft.fftfreq``. Modes are averaged in annuli of width
    ``dk = 2 pi / min(H, W)``: bin ``j = 1 .. min(H, W) // 2`` holds the modes with
    ``round(|k| / dk) = j`` (``k = 0``, the mean, and the corners beyond Nyquist are left out).

    Args:
        images: ``(n, H, W)`` or ``(n, C, H, W)`` (numpy or torch).

    Returns:
        ``(k_centres, P)``: the mean ``|k|`` of the modes in each bin ``(num_bins,)`` and the
        binned power ``(n, num_bins)`` (``(n, C, num_bins)`` for channels), float64 CPU
        tensors. Average ``P`` over rows for the spectrum of a sample.
    """
    x = torch.as_tensor(_to_numpy(images))
    if x.ndim not in (3, 4):
        raise ValueError(f"images must have shape (n, H, W) or (n, C, H, W), got {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if min(h, w) < 2:
        raise ValueError(f"images need at least 2 pixels per side, got {h} x {w}")
    mat, centres = _bin_matrix(h, w)
    power = torch.fft.fft2(x).abs().square() / (h * w)
    binned = power.flatten(-2) @ torch.as_tensor(mat)
    return torch.as_tensor(centres), binned


def image_summary(images: Any) -> np.ndarray:
    """A cheap summary of images for two-sample tests: log power spectrum and a coarse image.

    Per image (and channel): ``log`` of the binned power spectrum (:func:`power_spectrum`;
    texture at every scale) and the image averaged over a 4 x 4 grid of blocks (layout,
    brightness).

    Args:
        images: ``(n, H, W)`` or ``(n, C, H, W)``.

    Returns:
        ``(n, C * (num_bins + 16))`` float64 numpy.
    """
    x = torch.as_tensor(_to_numpy(images))
    _, p = power_spectrum(x)
    x4 = x if x.ndim == 4 else x[:, None]
    coarse = torch.nn.functional.adaptive_avg_pool2d(x4, (min(4, x4.shape[-2]), min(4, x4.shape[-1])))
    logp = torch.log(p.clamp_min(1e-300)).reshape(len(x), -1)
    return torch.cat([logp, coarse.reshape(len(x), -1)], dim=1).numpy()


# -- MMD --------------------------------------------------------------------------------------------
def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    """``sum_ij exp(-gamma ||a_i - b_j||^2)``, in blocks."""
    total = 0.0
    b2 = (b**2).sum(1)
    for i in range(0, len(a), _MMD_BLOCK):
        blk = a[i : i + _MMD_BLOCK]
        d2 = (blk**2).sum(1)[:, None] + b2[None, :] - 2.0 * blk @ b.T
        total += float(np.exp(-gamma * np.maximum(d2, 0.0)).sum())
    return total


def mmd(a: Any, b: Any, *, bandwidth: float | None = None) -> float:
    """Unbiased estimate of the squared MMD between samples with a Gaussian kernel.

    ``MMD^2_u = 1/(m(m-1)) sum_{i != j} k(a_i, a_j) + 1/(n(n-1)) sum_{i != j} k(b_i, b_j)
    - 2/(mn) sum_{i, j} k(a_i, b_j)`` with ``k(x, y) = exp(-||x - y||^2 / (2 h^2))``.

    Args:
        a: ``(m, f)`` samples (numpy or torch; ``(m,)`` is one feature).
        b: ``(n, f)`` samples.
        bandwidth: ``h``; ``None`` takes the median heuristic, the median distance between
            distinct points of the pooled sample (a strided subset of 2,000 points).

    Returns:
        The estimate; its expectation is 0 when ``a`` and ``b`` share a distribution (so it
        can be slightly negative) and positive otherwise.
    """
    xa, xb = _to_numpy(a), _to_numpy(b)
    xa = xa[:, None] if xa.ndim == 1 else xa
    xb = xb[:, None] if xb.ndim == 1 else xb
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a and b must have shapes (m, f) and (n, f), got {xa.shape} and {xb.shape}")
    m, n = len(xa), len(xb)
    if m < 2 or n < 2:
        raise ValueError(f"mmd needs at least 2 samples on each side, got {m} and {n}")
    if bandwidth is None:
        pooled = np.concatenate([xa, xb])
        pooled = pooled[:: max(1, len(pooled) // _MEDIAN_POINTS)]
        sq = (pooled**2).sum(1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T
        iu = np.triu_indices(len(pooled), k=1)
        dist = np.sqrt(np.maximum(d2[iu], 0.0))
        dist = dist[dist > 0]
        bandwidth = float(np.median(dist)) if dist.size else 1.0
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    gamma = 1.0 / (2.0 * bandwidth**2)
    kaa = (_kernel_sum(xa, xa, gamma) - m) / (m * (m - 1))  # the diagonal terms are exp(0) = 1
    kbb = (_kernel_sum(xb, xb, gamma) - n) / (n * (n - 1))
    kab = _kernel_sum(xa, xb, gamma) / (m * n)
    return float(kaa + kbb - 2.0 * kab)


# -- the report ---------------------------------------------------------------------------------------
@dataclass
class FidelityReport:
    """Emulator-vs-simulator comparison at ``m`` parameter values (numpy arrays).

    Attributes:
        theta: the test parameters ``(m, d)``.
        c2st: C2ST accuracy per ``theta`` ``(m,)``; 0.5 = indistinguishable.
        mmd: unbiased squared MMD per ``theta`` ``(m,)``; about 0 when the samples agree.
        ks_statistic: KS distance between the pooled output values ``(m,)``.
        ks_pvalue: its p-value ``(m,)`` (treats all values as independent).
        k: centres of the power-spectrum bins ``(num_bins,)`` (images; else ``None``).
        power_ratio: mean emulated / mean simulated power per bin ``(m, num_bins)``.
        power_ratio_err: Monte Carlo standard error of the ratio ``(m, num_bins)``.
        emulator_rate: emulator outputs per second (batches of ``num_samples``).
        simulator_rate: simulator outputs per second (same batches).
        num_samples: outputs drawn from each per ``theta``.
        features: what C2ST and MMD compared: ``"x"``, ``"summary"`` or ``"image_summary"``.
    """

    theta: np.ndarray
    c2st: np.ndarray
    mmd: np.ndarray
    ks_statistic: np.ndarray
    ks_pvalue: np.ndarray
    k: np.ndarray | None
    power_ratio: np.ndarray | None
    power_ratio_err: np.ndarray | None
    emulator_rate: float
    simulator_rate: float
    num_samples: int
    features: str

    @property
    def speedup(self) -> float:
        """Emulator outputs per second over simulator outputs per second."""
        return self.emulator_rate / self.simulator_rate if self.simulator_rate > 0 else math.inf

    def power_within(self, tolerance: float = 0.05, num_sigma: float = 2.0) -> np.ndarray:
        """Which bins agree: ``|ratio - 1| <= tolerance + num_sigma * err``, boolean ``(m, num_bins)``.

        A bin fails only when its ratio lies outside ``[1 - tolerance, 1 + tolerance]`` by
        more than ``num_sigma`` Monte Carlo standard errors.

        Raises:
            ValueError: for vector outputs (no power spectrum).
        """
        if self.power_ratio is None or self.power_ratio_err is None:
            raise ValueError("the power spectrum is only computed for image outputs")
        return np.abs(self.power_ratio - 1.0) <= tolerance + num_sigma * self.power_ratio_err

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field plus ``speedup``."""

        def arr(v: np.ndarray | None) -> Any:
            return None if v is None else np.asarray(v).tolist()

        return {
            "theta": arr(self.theta),
            "c2st": arr(self.c2st),
            "mmd": arr(self.mmd),
            "ks_statistic": arr(self.ks_statistic),
            "ks_pvalue": arr(self.ks_pvalue),
            "k": arr(self.k),
            "power_ratio": arr(self.power_ratio),
            "power_ratio_err": arr(self.power_ratio_err),
            "emulator_rate": self.emulator_rate,
            "simulator_rate": self.simulator_rate,
            "speedup": self.speedup,
            "num_samples": self.num_samples,
            "features": self.features,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        head = f"Emulator fidelity at {len(self.theta)} parameter values, {self.num_samples} outputs each"
        cols = ["theta", f"C2ST ({self.features})", "MMD^2", "KS D"]
        if self.power_ratio is not None:
            cols += ["P ratio min..max", "bins within 5%"]
        lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        within = self.power_within() if self.power_ratio is not None else None
        for i in range(len(self.theta)):
            th = ", ".join(f"{v:.3g}" for v in np.atleast_1d(self.theta[i]))
            row = [f"({th})", f"{self.c2st[i]:.3f}", f"{self.mmd[i]:.2e}", f"{self.ks_statistic[i]:.4f}"]
            if self.power_ratio is not None and within is not None:
                r = self.power_ratio[i]
                row += [f"{r.min():.3f}..{r.max():.3f}", f"{int(within[i].sum())}/{r.size}"]
            lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            f"speed: emulator {self.emulator_rate:,.0f} outputs/s, simulator {self.simulator_rate:,.0f} outputs/s "
            f"(speed-up {self.speedup:.1f}x at batches of {self.num_samples})",
        ]
        return "\n".join(lines)


def _features(x: np.ndarray, summary: Any, is_image: bool) -> np.ndarray:
    if summary is not None:
        f = summary.encode(x) if hasattr(summary, "encode") else summary(x)
        f = _to_numpy(f)
        return f[:, None] if f.ndim == 1 else f.reshape(len(f), -1)
    if is_image:
        return image_summary(x)
    return x.reshape(len(x), -1)


def fidelity(
    emulator: Any,
    simulator: Any,
    theta_test: Any,
    *,
    num_samples: int = 1000,
    summary: Any = None,
    seed: int = 0,
    classifier: Any = None,
) -> FidelityReport:
    """Compare an emulator with its simulator at each parameter value of ``theta_test``.

    Args:
        emulator: anything with ``simulate(theta, seed=)`` (an :class:`~sbikit.emulators.Emulator`).
        simulator: the reference, with ``simulate(theta, seed=)`` (numpy in, numpy out).
        theta_test: ``(m, d)`` parameter values (or one row ``(d,)``).
        num_samples: outputs drawn from each at every ``theta`` (also the batch size of the
            speed measurement). The Monte Carlo error of C2ST is about ``0.5 / sqrt(2 n)``.
        summary: a callable ``x (n, *x_shape) -> (n, f)`` or a fitted compressor (its
            ``encode``) applied before C2ST and MMD; ``None`` compares ``x`` itself for
            vectors and :func:`image_summary` for images (with a warning).
        seed: seeds the draws (spawned per ``theta``, distinct for emulator and simulator)
            and the classifiers.
        classifier: a scikit-learn classifier for C2ST instead of the standard MLP of
            :func:`sbikit.diagnostics.c2st.default_classifier` (e.g. an
            ``MLPClassifier(early_stopping=True)``, much faster on small samples).

    Returns:
        A :class:`FidelityReport` (``print`` it for a table).
    """
    th = _to_numpy(theta_test)
    if th.ndim == 1:
        th = th[None]
    if th.ndim != 2 or len(th) == 0:
        raise ValueError(f"theta_test must have shape (m, d) with m >= 1, got {th.shape}")
    if not np.isfinite(th).all():
        raise ValueError("theta_test holds NaN or inf")
    n = int(num_samples)
    if n < 10:
        raise ValueError(f"num_samples must be at least 10 (C2ST uses 5 folds), got {num_samples}")
    seeds = np.random.SeedSequence(int(seed)).generate_state(2 * len(th), np.uint64) >> np.uint64(1)
    c2sts, mmds, ks_d, ks_p, ratios, errors = [], [], [], [], [], []
    emu_time = sim_time = 0.0
    k_centres = None
    features_used = "summary" if summary is not None else None
    for i, row in enumerate(th):
        rows = np.repeat(row[None], n, axis=0)
        t0 = time.perf_counter()
        xe = _to_numpy(emulator.simulate(rows, seed=int(seeds[2 * i])))
        t1 = time.perf_counter()
        xs = _to_numpy(simulator.simulate(rows, seed=int(seeds[2 * i + 1])))
        t2 = time.perf_counter()
        emu_time += t1 - t0
        sim_time += t2 - t1
        if xe.shape != xs.shape:
            raise ValueError(f"the emulator returned {xe.shape} but the simulator {xs.shape} at theta row {i}")
        is_image = xs.ndim in (3, 4)
        if features_used is None:
            features_used = "image_summary" if is_image else "x"
            if is_image:
                warnings.warn(
                    "fidelity: comparing images through image_summary (log power spectrum and a 4 x 4 coarse "
                    "image) for C2ST and MMD; pass summary= (e.g. a fitted compressor) for a sharper test",
                    stacklevel=2,
                )
        fe, fs = _features(xe, summary, is_image), _features(xs, summary, is_image)
        c2sts.append(c2st(fe, fs, seed=int(seed), classifier=classifier))
        mu, sd = fs.mean(0), fs.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        mmds.append(mmd((fe - mu) / sd, (fs - mu) / sd))
        ve, vs = xe.ravel(), xs.ravel()
        stride = max(1, ve.size // _KS_MAX_VALUES)
        ks = stats.ks_2samp(ve[::stride], vs[::stride])
        ks_d.append(float(ks.statistic))
        ks_p.append(float(ks.pvalue))
        if is_image:
            k_centres, pe = power_spectrum(xe)
            _, ps = power_spectrum(xs)
            pe, ps = pe.reshape(n, -1).numpy(), ps.reshape(n, -1).numpy()
            me, ms = pe.mean(0), ps.mean(0)
            ratio = me / ms
            # delta method: var(r) / r^2 = var(mean_e) / mean_e^2 + var(mean_s) / mean_s^2 (independent samples)
            rel = pe.var(0, ddof=1) / (n * me**2) + ps.var(0, ddof=1) / (n * ms**2)
            ratios.append(ratio)
            errors.append(ratio * np.sqrt(rel))
        logger.info("fidelity theta %d/%d: C2ST %.3f, MMD^2 %.2e", i + 1, len(th), c2sts[-1], mmds[-1])
    total = n * len(th)
    return FidelityReport(
        theta=th,
        c2st=np.asarray(c2sts),
        mmd=np.asarray(mmds),
        ks_statistic=np.asarray(ks_d),
        ks_pvalue=np.asarray(ks_p),
        k=None if k_centres is None else k_centres.numpy(),
        power_ratio=np.stack(ratios) if ratios else None,
        power_ratio_err=np.stack(errors) if errors else None,
        emulator_rate=total / emu_time if emu_time > 0 else math.inf,
        simulator_rate=total / sim_time if sim_time > 0 else math.inf,
        num_samples=n,
        features=str(features_used),
    )
