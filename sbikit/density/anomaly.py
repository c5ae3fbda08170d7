"""Anomaly scores, a threshold set by a false-positive rate, and the area under the ROC curve.

Every detector here is an :class:`AnomalyScore`: ``score(x)`` returns one number per input,
higher meaning more anomalous, and the shared :meth:`AnomalyScore.calibrate` turns scores of
held-out *normal* data into a threshold that flags a chosen share of normal data (the
false-positive rate); :meth:`AnomalyScore.is_anomalous` then compares scores with it.

* :class:`~sbikit.density.flow_density.FlowDensity`: a normalizing flow ``p(z)``; score
  ``-log p(z)``, so "score above the threshold" is "``p(z) < epsilon``".
* :class:`PCAReconstructionScore`: RMS residual of a PCA reconstruction.
* :class:`WGANAnomalyScore`: the WGAN score ``lam * G + (1 - lam) * C`` of a residual and a
  critic-feature difference at the generator's best reconstruction.
* :class:`AnomalyDetector`: any function ``x -> scores``, e.g. a flow on a compressor's
  summaries, ``AnomalyDetector(lambda x: flow.score(compressor.encode(x)))``.

:func:`auroc` and :func:`roc_curve` measure how well a score separates normal from anomalous data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from sbikit.compressors.cnn import DEFAULT_CHANNELS, ConvEncoder
from sbikit.compressors.pca import PCA
from sbikit.train import FitResult, fit
from sbikit.utils import as_float_tensor, load_payload, resolve_device, save_payload

__all__ = [
    "AnomalyScore",
    "AnomalyDetector",
    "PCAReconstructionScore",
    "CombinedScore",
    "WGANAnomalyScore",
    "threshold_at_fpr",
    "gaussian_smooth",
    "auroc",
    "roc_curve",
    "MIN_EXCEEDANCES",
]

logger = logging.getLogger(__name__)

#: :meth:`AnomalyScore.calibrate` needs ``m = floor((n + 1) * fpr) >= 5`` for ``n`` normal
#: scores: the realised false-positive rate of the threshold scatters (over calibration sets)
#: by about ``1 / sqrt(m)`` of itself, 45% for ``m = 5``.
MIN_EXCEEDANCES = 5
# Rows scored at once by the network-based scores (bounds memory).
_SCORE_CHUNK = 512
_WGAN_FORMAT = "sbikit-wgan-anomaly-score"
_FORMAT_VERSION = 1


# -- scores as 1-d arrays --------------------------------------------------------------------------
def _as_scores(values: Any, name: str, num: int | None = None) -> np.ndarray:
    """Validate one score per input -> float64 ``(n,)``; NaN/inf, empty or wrong shapes raise."""
    arr = as_float_tensor(values, name, dtype=torch.float64).numpy()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one score per input, shape (n,), got {arr.shape}")
    if num is not None and len(arr) != num:
        raise ValueError(f"{name} has {len(arr)} entries for {num} inputs; a score must return one per input")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} holds NaN or inf for {bad} of {len(arr)} inputs")
    return arr


def _check_fpr(false_positive_rate: float) -> float:
    fpr = float(false_positive_rate)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false_positive_rate must lie in (0, 1), got {false_positive_rate}")
    return fpr


def _num_exceedances(n: int, fpr: float) -> int:
    # floor((n + 1) * fpr), robust to rounding when (n + 1) * fpr is an integer.
    return int(math.floor((n + 1) * fpr + 1e-9))


def threshold_at_fpr(scores_normal: Any, false_positive_rate: float = 0.05) -> float:
    """The score threshold that flags a share ``false_positive_rate`` of normal data.

    With the ``n`` normal scores sorted, ``s_(1) <= ... <= s_(n)``, the threshold is
    ``s_(j)`` with ``j = n + 1 - m`` and ``m = floor((n + 1) * fpr)``: ``m - 1`` of the
    calibration scores lie above it, and a fresh normal score exceeds it with probability
    exactly ``m / (n + 1) <= fpr`` (averaged over calibration sets, for continuous scores:
    the fresh score's rank among the ``n + 1`` is uniform; the split-conformal quantile).
    Inputs are anomalous when ``score > threshold``.

    Args:
        scores_normal: ``(n,)`` scores of held-out normal data.
        false_positive_rate: target share of normal data flagged, in (0, 1).

    Returns:
        The threshold.

    Raises:
        ValueError: for a rate outside (0, 1), NaN/inf scores, or fewer normal scores than
            rate needs (``m >= MIN_EXCEEDANCES``, i.e. ``n >= 5 / fpr - 1``).
    """
    fpr = _check_fpr(false_positive_rate)
    s = np.sort(_as_scores(scores_normal, "scores_normal"))
    n = len(s)
    m = _num_exceedances(n, fpr)
    if m < MIN_EXCEEDANCES:
        need = math.ceil(MIN_EXCEEDANCES / fpr - 1 - 1e-9)
        raise ValueError(
            f"a false-positive rate of {fpr:g} needs at least {need} normal samples to calibrate "
            f"((n + 1) * fpr >= {MIN_EXCEEDANCES}), got {n}; pass more held-out normal data "
            "or a larger false_positive_rate"
        )
    return float(s[n - m])  # s_(j), j = n + 1 - m (1-based)


# -- the shared thresholding ------------------------------------------------------------------------
class AnomalyScore:
    """Base of every anomaly score: ``score(x)`` (higher = more anomalous) and its threshold.

    Subclasses implement :meth:`score`; :meth:`calibrate` and :meth:`is_anomalous` are shared.

    Attributes:
        threshold: set by :meth:`calibrate` (``None`` before); ``x`` is anomalous when
            ``score(x) > threshold``.
        false_positive_rate: the target rate passed to :meth:`calibrate`.
        num_calibration: normal samples the threshold was set from.
    """

    threshold: float | None = None
    false_positive_rate: float | None = None
    num_calibration: int | None = None

    def score(self, x: Any) -> Tensor:  # pragma: no cover - abstract
        """Anomaly scores ``(n,)`` of inputs ``x`` ``(n, ...)``, higher = more anomalous."""
        raise NotImplementedError

    def calibrate(self, x_normal: Any, false_positive_rate: float = 0.05) -> AnomalyScore:
        """Set :attr:`threshold` so that a share ``false_positive_rate`` of normal data is flagged.

        Use normal data the score was not fitted on: training data score lower than fresh
        data, which would give too low a threshold and too many false positives.

        Args:
            x_normal: held-out normal inputs ``(n, ...)``.
            false_positive_rate: in (0, 1); see :func:`threshold_at_fpr` for the quantile.

        Returns:
            self.
        """
        fpr = _check_fpr(false_positive_rate)
        s = self.score(x_normal)
        self.threshold = threshold_at_fpr(s, fpr)
        self.false_positive_rate = fpr
        self.num_calibration = int(len(s))
        logger.info(
            "%s: threshold %.4g flags %.3g of normal data (target %.3g, %d calibration samples)",
            type(self).__name__,
            self.threshold,
            self.expected_false_positive_rate,
            fpr,
            self.num_calibration,
        )
        return self

    @property
    def is_calibrated(self) -> bool:
        return self.threshold is not None

    @property
    def expected_false_positive_rate(self) -> float:
        """``floor((n + 1) fpr) / (n + 1)``: the false-positive rate of the threshold, on average."""
        self._require_calibrated()
        assert self.num_calibration is not None and self.false_positive_rate is not None
        n = self.num_calibration
        return _num_exceedances(n, self.false_positive_rate) / (n + 1)

    def is_anomalous(self, x: Any) -> Tensor:
        """``score(x) > threshold``: bool ``(n,)`` (CPU).

        Raises:
            RuntimeError: before :meth:`calibrate`.
        """
        self._require_calibrated()
        return self.score(x) > self.threshold

    def _require_calibrated(self) -> None:
        if self.threshold is None:
            raise RuntimeError(
                f"{type(self).__name__} has no threshold: call calibrate(x_normal, false_positive_rate=...) "
                "with held-out normal data first"
            )

    def _threshold_state(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "false_positive_rate": self.false_positive_rate,
            "num_calibration": self.num_calibration,
        }

    def _set_threshold_state(self, state: dict[str, Any]) -> None:
        self.threshold = None if state.get("threshold") is None else float(state["threshold"])
        self.false_positive_rate = state.get("false_positive_rate")
        self.num_calibration = state.get("num_calibration")


class AnomalyDetector(AnomalyScore):
    """Any score function as an :class:`AnomalyScore` (thresholds, ``is_anomalous``).

    Args:
        scorer: a callable ``x -> scores (n,)`` (numpy or torch; higher = more anomalous), or
            an object with a ``score`` method, e.g. a flow on a compressor's summaries:
            ``AnomalyDetector(lambda x: flow.score(compressor.encode(x)))``.
    """

    def __init__(self, scorer: Callable[[Any], Any] | Any) -> None:
        fn = getattr(scorer, "score", scorer)
        if not callable(fn):
            raise TypeError(f"scorer must be callable or have a score method, got {type(scorer).__name__}")
        self.scorer: Callable[[Any], Any] = fn

    def score(self, x: Any) -> Tensor:
        """The scorer's scores ``(n,)`` as a float32 CPU tensor (validated: one finite score per input)."""
        num = len(x) if hasattr(x, "__len__") else None
        return torch.from_numpy(_as_scores(self.scorer(x), "the scorer's output", num)).float()


class CombinedScore(AnomalyScore):
    """The largest of several standardised scores: flags what any one of them flags.

    ``score(x) = max_i (s_i(x) - median_i) / MAD_i``, with the median and the median
    absolute deviation of each score ``s_i`` on normal reference data. Each score is
    sensitive to its own kind of anomaly (a PCA residual to hot pixels, its PSF-smoothed
    version to trails and rings); standardised by their spread on normal data, their
    maximum keeps most of each one's power (docs/anomalies.md has the numbers). Calibrate
    the threshold with :meth:`calibrate` on other normal data than ``x_reference``, as for
    any score.

    Args:
        scores: fitted :class:`AnomalyScore` objects (or anything with ``score(x) -> (n,)``).
        x_reference: normal inputs ``(n, ...)`` (``n >= 20``) that fix each score's median and MAD.

    Raises:
        ValueError: for fewer than two scores, too little reference data, or a score that is
            constant on it (zero MAD).
    """

    def __init__(self, scores: Sequence[Any], *, x_reference: Any) -> None:
        self.scores = list(scores)
        if len(self.scores) < 2:
            raise ValueError(f"CombinedScore needs at least two scores, got {len(self.scores)}")
        centres, spreads = [], []
        for i, sc in enumerate(self.scores):
            v = sc.score(x_reference).double()
            if len(v) < 20:
                raise ValueError(f"x_reference must hold at least 20 normal inputs, got {len(v)}")
            med = v.median()
            mad = (v - med).abs().median()
            if not float(mad) > 0:
                raise ValueError(f"score {i} ({type(sc).__name__}) is constant on x_reference (zero MAD)")
            centres.append(float(med))
            spreads.append(float(mad))
        self.centres = torch.tensor(centres, dtype=torch.float64)
        self.spreads = torch.tensor(spreads, dtype=torch.float64)

    def components(self, x: Any) -> Tensor:
        """Standardised scores ``(n, num_scores)`` (float64 CPU)."""
        raw = torch.stack([sc.score(x).double().cpu() for sc in self.scores], dim=1)
        return (raw - self.centres) / self.spreads

    def score(self, x: Any) -> Tensor:
        """``max_i`` of the standardised scores, ``(n,)`` float32 CPU."""
        return self.components(x).max(dim=1).values.float()

    def __repr__(self) -> str:
        return f"CombinedScore({', '.join(type(sc).__name__ for sc in self.scores)})"


# -- ROC -------------------------------------------------------------------------------------------
def auroc(scores_normal: Any, scores_anomalous: Any) -> float:
    """Area under the ROC curve: the probability that an anomaly outscores a normal input.

    Computed from ranks (the Mann-Whitney statistic): with ``R`` the sum of the ranks of the
    ``m`` anomalous scores among all ``n + m`` (tied scores share their average rank, so a
    tie counts one half), ``AUROC = (R - m (m + 1) / 2) / (n m)``.

    Args:
        scores_normal: ``(n,)``.
        scores_anomalous: ``(m,)``.

    Returns:
        A float in [0, 1]; 0.5 means no separation, 1 perfect separation.
    """
    s0 = _as_scores(scores_normal, "scores_normal")
    s1 = _as_scores(scores_anomalous, "scores_anomalous")
    ranks = stats.rankdata(np.concatenate([s0, s1]))
    m, n = len(s1), len(s0)
    u = ranks[n:].sum() - m * (m + 1) / 2.0
    return float(u / (n * m))


def roc_curve(scores_normal: Any, scores_anomalous: Any) -> tuple[Tensor, Tensor, Tensor]:
    """False- and true-positive rates of every threshold.

    Args:
        scores_normal: ``(n,)``.
        scores_anomalous: ``(m,)``.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(t,)`` float64: for ``thresholds[i]`` (decreasing,
        starting at ``+inf``), the shares of normal and anomalous scores ``>= thresholds[i]``.
        The curve runs from (0, 0) to (1, 1).
    """
    s0 = np.sort(_as_scores(scores_normal, "scores_normal"))
    s1 = np.sort(_as_scores(scores_anomalous, "scores_anomalous"))
    thr = np.unique(np.concatenate([s0, s1]))[::-1]
    fpr = 1.0 - np.searchsorted(s0, thr, side="left") / len(s0)
    tpr = 1.0 - np.searchsorted(s1, thr, side="left") / len(s1)
    thr = np.concatenate([[np.inf], thr])
    return (
        torch.from_numpy(np.concatenate([[0.0], fpr])),
        torch.from_numpy(np.concatenate([[0.0], tpr])),
        torch.from_numpy(thr),
    )


# -- PCA baseline -----------------------------------------------------------------------------------
class PCAReconstructionScore(AnomalyScore):
    """RMS residual of the projection on the leading principal components of normal data.

    ``score(x) = sqrt(mean_pixels r^2)`` with ``r = x - decode(encode(x))``, in data units. For
    normal data that lie near a ``k``-dimensional linear subspace with white noise of
    standard deviation ``sigma`` in ``D`` dimensions, it is about ``sigma sqrt((D - k) / D)``;
    anything outside the subspace (a trail, a cosmic ray) adds to it.

    With ``smoothing = s > 0`` (images only) the residual is first convolved with a Gaussian
    of standard deviation ``s`` pixels. White noise then averages down while structure wider
    than a pixel does not, so anomalies seen through the optics (trails, rings, blends) stand
    out more: smoothing by the PSF is the matched filter for them. Structure sharper than
    the PSF (cosmic rays) is detected better without it. docs/anomalies.md has the numbers.

    Args:
        num_components: ``k``, the principal components kept (fewer than the data dimension).
        smoothing: Gaussian standard deviation in pixels for the residual (0: none).
    """

    def __init__(self, num_components: int = 8, *, smoothing: float = 0.0) -> None:
        if int(num_components) < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components}")
        if not float(smoothing) >= 0.0:
            raise ValueError(f"smoothing must be >= 0 pixels, got {smoothing}")
        self.num_components = int(num_components)
        self.smoothing = float(smoothing)
        self.pca: PCA | None = None

    def fit(self, x_normal: Any, *, device: str | torch.device = "auto") -> PCAReconstructionScore:
        """Fit the components to normal data ``(n, *x_shape)`` (``n > num_components``); returns self.

        Any earlier threshold is cleared.

        Raises:
            ValueError: with ``smoothing > 0`` for data that are not images ``(n, H, W)`` / ``(n, C, H, W)``.
        """
        xt = as_float_tensor(x_normal, "x_normal")
        if self.smoothing > 0 and xt.ndim not in (3, 4):
            raise ValueError(f"smoothing needs images (n, H, W) or (n, C, H, W), got shape {tuple(xt.shape)}")
        self.pca = PCA(self.num_components, whiten=False).fit(xt, device=device)
        self.threshold = self.false_positive_rate = self.num_calibration = None
        return self

    def reconstruct(self, x: Any) -> Tensor:
        """Projection of ``x`` ``(n, *x_shape)`` on the components -> ``(n, *x_shape)`` (CPU, data units)."""
        pca = self._require_fit()
        xt, _ = pca._check_x(x)
        return pca.decode(pca.encode(xt))

    def score(self, x: Any) -> Tensor:
        """RMS (smoothed) reconstruction residual ``(n,)`` (float32 CPU) of ``x`` ``(n, *x_shape)``."""
        pca = self._require_fit()
        xt, _ = pca._check_x(x)
        resid = xt - pca.decode(pca.encode(xt))
        if self.smoothing > 0:
            resid = gaussian_smooth(resid, self.smoothing)
        return resid.reshape(len(xt), -1).square().mean(1).sqrt()

    def _require_fit(self) -> PCA:
        if self.pca is None:
            raise RuntimeError("PCAReconstructionScore is not fitted: call fit(x_normal) first")
        return self.pca

    def __repr__(self) -> str:
        return (
            f"PCAReconstructionScore(num_components={self.num_components}, smoothing={self.smoothing}, "
            f"fitted={self.pca is not None})"
        )


def gaussian_smooth(images: Tensor, sigma: float) -> Tensor:
    """Convolve images ``(n, H, W)`` or ``(n, C, H, W)`` with a unit-sum Gaussian of ``sigma`` pixels.

    Separable, truncated at ``4 sigma`` (at most the image side), reflecting at the edges.

    Returns:
        The smoothed images, same shape.
    """
    shape = images.shape
    x = images.reshape(-1, 1, shape[-2], shape[-1])
    radius = max(1, min(int(math.ceil(4 * sigma)), min(shape[-2], shape[-1]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = nn.functional.conv2d(x, k.reshape(1, 1, 1, -1))
    x = nn.functional.conv2d(x, k.reshape(1, 1, -1, 1))
    return x.reshape(shape)


# -- WGAN score -------------------------------------------------------------------------------------
def _wgan_device(wgan: Any) -> torch.device:
    dev = getattr(wgan, "device", None)
    if isinstance(dev, (torch.device, str)):
        return torch.device(dev)
    if isinstance(wgan, nn.Module):
        for p in wgan.parameters():
            return p.device
        for b in wgan.buffers():
            return b.device
    return torch.device("cpu")


def _move_wgan(wgan: Any, device: torch.device) -> None:
    if _wgan_device(wgan) == device:
        return
    if hasattr(wgan, "to_device"):
        wgan.to_device(device)
    elif isinstance(wgan, nn.Module):
        wgan.to(device)
    else:
        raise ValueError(
            f"the WGAN lives on {_wgan_device(wgan)} and cannot be moved; pass device={_wgan_device(wgan)}"
        )
    logger.info("WGANAnomalyScore: moved the WGAN to %s", device)


@contextlib.contextmanager
def _frozen(wgan: Any) -> Iterator[None]:
    """Inside the block the WGAN's parameters take no gradient and its modules are in eval mode."""
    if not isinstance(wgan, nn.Module):
        yield
        return
    flags = [(p, p.requires_grad) for p in wgan.parameters()]
    modes = [(m, m.training) for m in wgan.modules()]
    wgan.requires_grad_(False)
    wgan.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


class _Encoder(nn.Module):
    """``x`` (data units) -> ``z`` ``(n, latent_dim)``: a :class:`ConvEncoder` for images, an MLP for vectors.

    Inputs are standardised by one global mean and standard deviation (buffers).
    """

    def __init__(
        self, x_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int], hidden_features: int
    ) -> None:
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        if len(self.x_shape) in (2, 3):
            self.net: nn.Module = ConvEncoder(
                self.x_shape, latent_dim, channels=channels, hidden_features=hidden_features, pooling="flatten"
            )
        elif len(self.x_shape) == 1:
            self.net = nn.Sequential(
                nn.Linear(self.x_shape[0], hidden_features),
                nn.SiLU(),
                nn.Linear(hidden_features, hidden_features),
                nn.SiLU(),
                nn.Linear(hidden_features, latent_dim),
            )
        else:
            raise ValueError(f"WGANAnomalyScore needs vectors (D,) or images (H, W)/(C, H, W), got x_shape={x_shape}")
        self.register_buffer("x_shift", torch.zeros(()))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.x_shift) / self.x_scale)


def _izif_loss(encoder: _Encoder, x: Tensor, *, wgan: Any, kappa: float) -> Tensor:
    """f-AnoGAN's izi_f loss of a batch ``x`` ``(b, *x_shape)``, in standardised units.

    ``mean_pixels (x - G(E(x)))^2 / s_x^2 + kappa * mean_features (f(x) - f(G(E(x))))^2 / s_f^2``,
    averaged over the batch; ``s_x`` and ``s_f`` are the standard deviations of pixels and
    critic features of the training data, so that both terms are shares of a variance.
    """
    xh = wgan.generate(encoder(x))
    pixel = ((x - xh) / encoder.x_scale).square().flatten(1).mean(1)
    with torch.no_grad():
        fx = wgan.critic_features(x)
    feat = ((fx - wgan.critic_features(xh)) / encoder.feature_scale).square().flatten(1).mean(1)
    return (pixel + kappa * feat).mean()


class WGANAnomalyScore(AnomalyScore):
    """The WGAN anomaly score ``AS = lam * G / G_0 + (1 - lam) * C / C_0`` (after f-AnoGAN).

    For an input ``x``: an encoder gives a starting latent ``z_0 = E(x)``; ``num_steps`` of
    Adam on ``z`` then minimise the residual ``mean_pixels (x - G(z))^2`` (all inputs of a
    batch at once; each ``z`` only sees its own residual, so the result does not depend on
    the batch), and the ``z*`` with the lowest residual met is kept. Then

    * ``G = sqrt(mean_pixels (x - G(z*))^2)``: the RMS residual, in data units;
    * ``C = sqrt(mean_features (f(x) - f(G(z*)))^2)``: the RMS difference of the critic's last
      hidden features ``f``.

    ``G`` and ``C`` have unrelated units (a WGAN critic has no natural scale), so each is
    divided by its median on normal data, ``G_0`` and ``C_0`` (set by :meth:`fit`); ``lam``
    then weights two numbers of order one. :meth:`components` returns the raw ``G`` and ``C``.

    The encoder is trained by :meth:`fit` with the generator and critic frozen, on the
    izi_f objective ``||x - G(E(x))||^2 + kappa ||f(x) - f(G(E(x)))||^2`` (both terms as
    means over pixels/features, divided by the pixel and feature variances of the data).

    Args:
        wgan: a trained generator/critic pair with ``latent_dim``, ``x_shape``,
            ``generate(z) -> (n, *x_shape)`` (data units, differentiable in ``z``),
            ``critic_features(x) -> (n, f)`` and ``critic(x) -> (n,)``, e.g. an unconditional
            :class:`sbikit.emulators.ConditionalWGAN` (``fit(None, x)``).
        lam: weight of the (normalised) residual term, in [0, 1]. The default 0.5 weighs the
            two normalised components equally (f-AnoGAN adds residual and feature terms with
            weight 1 each). On injected sersic anomalies it was within 0.01 AUROC of the best
            ``lam`` for every kind, while AnoGAN's 0.9 lost up to 0.045 (docs/anomalies.md);
            tune it on anomalies like the ones you look for when you have some.
        kappa: weight of the feature term of the encoder's loss.
        num_steps: Adam steps on ``z`` per input (0: the encoder's ``z`` only).
        lr: Adam's learning rate on ``z`` (the latent prior is ``N(0, I)``, so 0.05 moves
            ``z`` by a fraction of its spread per step).
        channels: the encoder's convolution channels per stage (images).
        hidden_features: the encoder's hidden width.
    """

    def __init__(
        self,
        wgan: Any,
        *,
        lam: float = 0.5,
        kappa: float = 1.0,
        num_steps: int = 100,
        lr: float = 0.05,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        hidden_features: int = 128,
    ) -> None:
        for attr in ("latent_dim", "x_shape", "generate", "critic_features"):
            if not hasattr(wgan, attr):
                raise TypeError(f"wgan needs a {attr!r} attribute (see WGANAnomalyScore); got {type(wgan).__name__}")
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        if not float(kappa) >= 0.0:
            raise ValueError(f"kappa must be >= 0, got {kappa}")
        if int(num_steps) < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if not float(lr) > 0.0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.wgan = wgan
        self.lam = float(lam)
        self.kappa = float(kappa)
        self.num_steps = int(num_steps)
        self.lr = float(lr)
        self.channels = tuple(int(c) for c in channels)
        self.hidden_features = int(hidden_features)
        self.x_shape = tuple(int(s) for s in wgan.x_shape)
        self.latent_dim = int(wgan.latent_dim)
        self.encoder: _Encoder | None = None
        self.component_scales: tuple[float, float] | None = None
        self.history: FitResult | None = None

    # -- inputs ----------------------------------------------------------------------------
    def _check_x(self, x: Any, name: str = "x") -> Tensor:
        xt = as_float_tensor(x, name)
        if tuple(xt.shape) == self.x_shape:
            xt = xt[None]
        if tuple(xt.shape[1:]) != self.x_shape:
            raise ValueError(
                f"{name} must have shape (n, {', '.join(map(str, self.x_shape))}) for this WGAN, got {tuple(xt.shape)}"
            )
        if not bool(torch.isfinite(xt).all()):
            bad = int((~torch.isfinite(xt.reshape(len(xt), -1)).all(1)).sum())
            raise ValueError(f"{name} holds NaN or inf in {bad} of {len(xt)} rows")
        return xt

    def _require_fit(self) -> _Encoder:
        if self.encoder is None or self.component_scales is None:
            raise RuntimeError("WGANAnomalyScore is not fitted: call fit(x_normal) to train its encoder first")
        return self.encoder

    @property
    def device(self) -> torch.device:
        return _wgan_device(self.wgan) if self.encoder is None else self.encoder.x_shift.device

    # -- training ----------------------------------------------------------------------------
    def fit(
        self,
        x_normal: Any,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        learning_rate: float = 1e-3,
        max_epochs: int = 100,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str | torch.device = "auto",
        progress: bool = True,
        checkpoint: str | Path | None = None,
        resume: bool = False,
    ) -> WGANAnomalyScore:
        """Train the encoder on normal data (WGAN frozen), then set ``G_0`` and ``C_0``.

        Args:
            x_normal: normal inputs ``(n, *x_shape)``, ``n >= 2``.
            seed: initial weights, validation split and batch order.
            batch_size, learning_rate, max_epochs, validation_fraction, patience, progress:
                passed to :func:`sbikit.train.fit`.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``; the WGAN is moved there if it is elsewhere.
            checkpoint: file written atomically after every epoch; ``resume=True`` continues from it.
            resume: continue from ``checkpoint`` when it exists.

        Returns:
            self. ``G_0``, ``C_0`` are the medians of ``G`` and ``C`` over up to 512 of the
            training inputs (after the ``z`` optimisation), in :attr:`component_scales`.
        """
        xt = self._check_x(x_normal, "x_normal")
        if len(xt) < 2:
            raise ValueError(f"fit needs at least 2 normal inputs, got {len(xt)}")
        dev = resolve_device(device)
        _move_wgan(self.wgan, dev)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            enc = _Encoder(
                self.x_shape, self.latent_dim, channels=self.channels, hidden_features=self.hidden_features
            ).to(dev)
            std = float(xt.std())
            enc.x_shift.fill_(float(xt.mean()))
            enc.x_scale.fill_(std if std > 1e-12 else 1.0)
            gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
            sub = xt[torch.randperm(len(xt), generator=gen)[:_SCORE_CHUNK]]
            with _frozen(self.wgan), torch.no_grad():
                f = self.wgan.critic_features(sub.to(dev))
                fstd = float(f.std(0).square().mean().sqrt()) if len(f) > 1 else 1.0
            enc.feature_scale.fill_(fstd if fstd > 1e-12 else 1.0)

            def loss(model: _Encoder, x: Tensor) -> Tensor:
                return _izif_loss(model, x, wgan=self.wgan, kappa=self.kappa)

            with _frozen(self.wgan):
                result = fit(
                    enc,
                    loss,
                    (xt,),
                    seed=seed,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    max_epochs=max_epochs,
                    validation_fraction=validation_fraction,
                    patience=patience,
                    device=dev,
                    progress=progress,
                    description="WGANAnomalyScore encoder",
                    checkpoint=checkpoint,
                    resume=resume,
                )
        if not math.isfinite(result.best_val_loss):
            raise RuntimeError("WGANAnomalyScore: encoder training diverged (the validation loss is not finite)")
        self.history = result
        self.encoder = enc.eval()
        self.component_scales = (1.0, 1.0)
        g, c = self.components(sub)
        self.component_scales = (max(float(g.median()), 1e-12), max(float(c.median()), 1e-12))
        self.threshold = None
        logger.info("WGANAnomalyScore: G_0 = %.4g, C_0 = %.4g", *self.component_scales)
        return self

    # -- scoring -------------------------------------------------------------------------------
    def _reconstruct_chunk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(b, *x_shape)`` on the device -> best ``z*`` ``(b, latent_dim)`` and ``G(z*)``."""
        enc = self._require_fit()
        with torch.no_grad():
            z0 = enc(x)
        scale = enc.x_scale
        best_z = z0.clone()
        best = torch.full((len(x),), math.inf, device=x.device)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        for step in range(self.num_steps + 1):
            with torch.enable_grad():
                resid = ((x - self.wgan.generate(z)) / scale).square().flatten(1).mean(1)  # (b,)
            with torch.no_grad():
                better = resid.detach() < best
                best = torch.where(better, resid.detach(), best)
                best_z = torch.where(better[:, None], z.detach(), best_z)
            if step == self.num_steps:
                break
            opt.zero_grad(set_to_none=True)
            resid.sum().backward()  # separable: z_i's gradient is that of its own residual
            opt.step()
        with torch.no_grad():
            return best_z, self.wgan.generate(best_z)

    def reconstruct(self, x: Any) -> tuple[Tensor, Tensor]:
        """The best reconstruction of each input.

        Args:
            x: ``(n, *x_shape)`` or one input ``x_shape``.

        Returns:
            ``(z*, G(z*))``: ``(n, latent_dim)`` and ``(n, *x_shape)``, float32 CPU.
        """
        self._require_fit()
        xt = self._check_x(x)
        zs, xs = [], []
        with _frozen(self.wgan):
            for i in range(0, len(xt), _SCORE_CHUNK):
                z, xh = self._reconstruct_chunk(xt[i : i + _SCORE_CHUNK].to(self.device))
                zs.append(z.cpu())
                xs.append(xh.cpu())
        return torch.cat(zs), torch.cat(xs)

    def components(self, x: Any) -> tuple[Tensor, Tensor]:
        """The raw residual ``G`` (data units) and critic-feature difference ``C`` of each input.

        Args:
            x: ``(n, *x_shape)`` or one input ``x_shape``.

        Returns:
            ``(G, C)``, each ``(n,)`` float32 CPU.
        """
        self._require_fit()
        xt = self._check_x(x)
        gs, cs = [], []
        with _frozen(self.wgan):
            for i in range(0, len(xt), _SCORE_CHUNK):
                xc = xt[i : i + _SCORE_CHUNK].to(self.device)
                _, xh = self._reconstruct_chunk(xc)
                with torch.no_grad():
                    gs.append((xc - xh).square().flatten(1).mean(1).sqrt().cpu())
                    fd = self.wgan.critic_features(xc) - self.wgan.critic_features(xh)
                    cs.append(fd.square().flatten(1).mean(1).sqrt().cpu())
        return torch.cat(gs), torch.cat(cs)

    def combine(self, g: Any, c: Any) -> Tensor:
        """``lam * G / G_0 + (1 - lam) * C / C_0`` of given components ``(n,)`` (e.g. to try other ``lam``)."""
        self._require_fit()
        assert self.component_scales is not None
        g0, c0 = self.component_scales
        gt, ct = as_float_tensor(g, "G"), as_float_tensor(c, "C")
        return self.lam * gt / g0 + (1.0 - self.lam) * ct / c0

    def score(self, x: Any) -> Tensor:
        """The anomaly score ``lam * G / G_0 + (1 - lam) * C / C_0`` ``(n,)`` (float32 CPU)."""
        g, c = self.components(x)
        return self.combine(g, c)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the encoder, scales, settings and threshold to ``path`` atomically (not the WGAN).

        Save the WGAN on its own; :meth:`load` takes it back as an argument.
        """
        enc = self._require_fit()
        config = {
            "lam": self.lam,
            "kappa": self.kappa,
            "num_steps": self.num_steps,
            "lr": self.lr,
            "channels": list(self.channels),
            "hidden_features": self.hidden_features,
            "x_shape": list(self.x_shape),
            "latent_dim": self.latent_dim,
            "component_scales": list(self.component_scales or ()),
            **self._threshold_state(),
        }
        payload = {
            "format": _WGAN_FORMAT,
            "version": _FORMAT_VERSION,
            "config": json.dumps(config),
            "history": json.dumps(self.history.to_dict() if self.history is not None else None),
            "state_dict": {k: v.detach().cpu() for k, v in enc.state_dict().items()},
        }
        return save_payload(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], wgan: Any, *, device: str | torch.device = "cpu") -> WGANAnomalyScore:
        """Load a score written by :meth:`save` for ``wgan`` (the WGAN it was fitted with).

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ValueError: for a file that is not such a score, or a WGAN of another shape.
        """
        payload = load_payload(path, fmt=_WGAN_FORMAT, version=_FORMAT_VERSION, what="WGAN anomaly score")
        cfg = json.loads(payload["config"])
        if tuple(cfg["x_shape"]) != tuple(int(s) for s in wgan.x_shape) or int(cfg["latent_dim"]) != int(
            wgan.latent_dim
        ):
            raise ValueError(
                f"{path} was fitted for a WGAN with x_shape={tuple(cfg['x_shape'])} and "
                f"latent_dim={cfg['latent_dim']}, "
                f"got x_shape={tuple(wgan.x_shape)} and latent_dim={wgan.latent_dim}"
            )
        obj = cls(
            wgan,
            lam=cfg["lam"],
            kappa=cfg["kappa"],
            num_steps=cfg["num_steps"],
            lr=cfg["lr"],
            channels=cfg["channels"],
            hidden_features=cfg["hidden_features"],
        )
        dev = resolve_device(device)
        enc = _Encoder(obj.x_shape, obj.latent_dim, channels=obj.channels, hidden_features=obj.hidden_features)
        enc.load_state_dict(payload["state_dict"])
        obj.encoder = enc.to(dev).eval()
        _move_wgan(wgan, dev)
        obj.component_scales = (float(cfg["component_scales"][0]), float(cfg["component_scales"][1]))
        obj._set_threshold_state(cfg)
        history = json.loads(payload.get("history") or "null")
        if history is not None:
            obj.history = FitResult(**{k: v for k, v in history.items() if k in FitResult.__dataclass_fields__})
        return obj

    def __repr__(self) -> str:
        return (
            f"WGANAnomalyScore(lam={self.lam}, num_steps={self.num_steps}, lr={self.lr}, "
            f"latent_dim={self.latent_dim}, fitted={self.encoder is not None})"
        )
