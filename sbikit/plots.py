"""Figures: corner plots of posterior samples and training-loss curves.

This is the only sbikit module that draws or writes figures. Every function builds a
stand-alone :class:`matplotlib.figure.Figure` on the Agg canvas, without pyplot, so it
works headless, never opens a window, and leaves no figures behind in pyplot's registry.
A notebook still shows a returned figure when it is the last expression of a cell.
When ``path`` is given the figure is also written there (parent folders are created, the
format follows the suffix, and the file appears atomically).

>>> from sbikit import plots
>>> fig = plots.corner_plot(samples, truth=theta_true, labels=["a", "b"], path="out/corner.png")
>>> fig = plots.corner_overlay([npe_samples, ref_samples], ["NPE", "reference"], truth=theta_true)
>>> fig = plots.loss_plot(posterior.info, path="out/loss.png")
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import corner
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["corner_plot", "corner_overlay", "loss_plot", "save_figure", "sample_ranges", "COLORS"]

#: Colours of successive sample sets in :func:`corner_overlay` (colour-blind friendly, Okabe-Ito).
COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

#: Colour of the lines that mark the true parameters.
TRUTH_COLOR = "#C00000"

# Layout constants copied from corner.corner, so a figure we create has the size corner expects.
_FACTOR = 2.0  # inches per panel
_LBDIM = 0.5 * _FACTOR
_TRDIM = 0.2 * _FACTOR
_WHSPACE = 0.05

ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]


# -- helpers ----------------------------------------------------------------------------
def _as_samples(samples: Any, name: str = "samples") -> np.ndarray:
    """Samples ``(n, d)`` (or ``(n,)`` for ``d = 1``) as a float64 numpy array ``(n, d)``."""
    if isinstance(samples, torch.Tensor):
        arr = samples.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(samples, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a numpy array or torch tensor of numbers") from err
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d) or (n,), got {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to plot, got {arr.shape[0]}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.any():
        raise ValueError(f"{name} holds no finite rows")
    return arr[finite]


def _as_vector(value: Any, dim: int, name: str) -> np.ndarray:
    """A length-``dim`` float vector (``None`` entries allowed, as NaN) from numpy, torch or a list."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().double().numpy().reshape(-1)
    else:
        arr = np.array([np.nan if v is None else v for v in np.ravel(np.asarray(value, dtype=object))], dtype=float)
    if arr.shape != (dim,):
        raise ValueError(f"{name} must have {dim} values (one per parameter), got {arr.size}")
    return arr


def _labels(labels: Sequence[str] | None, dim: int) -> list[str]:
    if labels is None:
        return [f"theta_{i + 1}" for i in range(dim)]
    labels = [str(label) for label in labels]
    if len(labels) != dim:
        raise ValueError(f"labels must have {dim} entries (one per parameter), got {len(labels)}")
    return labels


def sample_ranges(
    sample_sets: Sequence[np.ndarray],
    truth: np.ndarray | None = None,
    *,
    quantile: float = 0.001,
    pad: float = 0.05,
) -> list[tuple[float, float]]:
    """Axis limits shared by several sample sets, one ``(low, high)`` per parameter.

    Each limit spans the ``quantile`` .. ``1 - quantile`` range of every set (so a few far
    outliers do not squash the plot), stretched to include the truth, plus ``pad`` of the
    width on each side.

    Args:
        sample_sets: arrays ``(n_k, d)`` with a common ``d``.
        truth: optional ``(d,)``; NaN entries are ignored.
        quantile: tail mass cut off on each side, per set.
        pad: relative margin.

    Returns:
        ``d`` pairs of floats with ``low < high``.
    """
    lows = np.min([np.quantile(s, quantile, axis=0) for s in sample_sets], axis=0)
    highs = np.max([np.quantile(s, 1 - quantile, axis=0) for s in sample_sets], axis=0)
    if truth is not None:
        known = np.isfinite(truth)
        lows = np.where(known, np.minimum(lows, np.where(known, truth, 0.0)), lows)
        highs = np.where(known, np.maximum(highs, np.where(known, truth, 0.0)), highs)
    width = highs - lows
    # A parameter that never changes still needs a visible range.
    flat = width <= 0
    width = np.where(flat, np.maximum(np.abs(lows), 1.0) * 0.1, width)
    lows = np.where(flat, lows - width / 2, lows)
    highs = np.where(flat, highs + width / 2, highs)
    return [(float(lo - pad * w), float(hi + pad * w)) for lo, hi, w in zip(lows, highs, width, strict=True)]


def _new_corner_figure(dim: int) -> Figure:
    """An empty figure of the size :func:`corner.corner` would create for ``dim`` parameters."""
    plotdim = _FACTOR * dim + _FACTOR * (dim - 1.0) * _WHSPACE
    size = _LBDIM + plotdim + _TRDIM
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    return fig


def _corner_axes(fig: Figure, dim: int) -> np.ndarray:
    """The ``(dim, dim)`` grid of axes of a corner figure."""
    return np.asarray(fig.axes, dtype=object).reshape(dim, dim)


def _mark_truth(fig: Figure, truth: np.ndarray, *, color: str = TRUTH_COLOR) -> None:
    """Draw the true values as lines (and a point on each 2-D panel); NaN entries are skipped."""
    dim = len(truth)
    axes = _corner_axes(fig, dim)
    style = {"color": color, "lw": 1.2, "zorder": 10}
    for i in range(dim):
        if np.isfinite(truth[i]):
            axes[i, i].axvline(truth[i], **style)
        for j in range(i):  # row i, column j: x = theta_j, y = theta_i
            if np.isfinite(truth[j]):
                axes[i, j].axvline(truth[j], **style)
            if np.isfinite(truth[i]):
                axes[i, j].axhline(truth[i], **style)
            if np.isfinite(truth[i]) and np.isfinite(truth[j]):
                axes[i, j].plot(truth[j], truth[i], "s", color=color, ms=4, zorder=11)


def _fit_diagonal_ylim(fig: Figure, dim: int) -> None:
    """Make every 1-D histogram fit: corner sets the y range from the last set drawn only."""
    axes = _corner_axes(fig, dim)
    for i in range(dim):
        tops = [float(np.nanmax(p.get_path().vertices[:, 1])) for p in axes[i, i].patches]
        tops = [t for t in tops if np.isfinite(t)]
        if tops:
            axes[i, i].set_ylim(0.0, 1.1 * max(tops))


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically, creating parent folders.

    Args:
        fig: the figure.
        path: destination; the suffix picks the format (``.png``, ``.pdf``, ``.svg``, ...).
        dpi: resolution of raster formats.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name (not mkstemp, whose files are private) so the file gets the usual permissions.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# -- corner plots -------------------------------------------------------------------------
def _draw_corner(
    fig: Figure,
    samples: np.ndarray,
    *,
    labels: list[str],
    ranges: Sequence[tuple[float, float]],
    color: str,
    bins: int,
    smooth: float | None,
    density_only: bool,
    corner_kwargs: Mapping[str, Any],
) -> None:
    """Add one sample set to ``fig`` with :func:`corner.corner`."""
    kwargs: dict[str, Any] = {
        "bins": bins,
        "range": list(ranges),
        "color": color,
        "smooth": smooth,
        "labels": labels,
        "hist_kwargs": {"density": True, "color": color},
        "label_kwargs": {"fontsize": 11},
        "max_n_ticks": 4,
    }
    if density_only:
        # Several sets in one figure: outlines only, so every set stays visible.
        kwargs.update(plot_datapoints=False, plot_density=False, fill_contours=False, no_fill_contours=True)
    kwargs.update(corner_kwargs)
    corner.corner(samples, fig=fig, **kwargs)


def corner_plot(
    samples: ArrayLike,
    *,
    truth: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    color: str = COLORS[0],
    ranges: Sequence[tuple[float, float]] | None = None,
    bins: int = 40,
    smooth: float | None = 1.0,
    title: str | None = None,
    dpi: int = 150,
    **corner_kwargs: Any,
) -> Figure:
    """Corner plot (1-D and 2-D marginals) of one set of posterior samples.

    Args:
        samples: ``(n, d)`` numpy array or torch tensor (``(n,)`` for ``d = 1``); rows with
            NaN or inf are left out.
        truth: optional true parameters ``(d,)``, drawn as lines (``None`` or NaN entries
            are skipped).
        labels: ``d`` axis labels; default ``theta_1 .. theta_d``.
        path: when given, the figure is also written there (see :func:`save_figure`).
        color: colour of histograms and contours.
        ranges: ``d`` pairs ``(low, high)`` of axis limits; default from
            :func:`sample_ranges` (central 99.8% of the samples plus the truth).
        bins: histogram bins per axis.
        smooth: Gaussian smoothing of the 2-D histograms, in bins (``None``: none).
        title: optional figure title.
        dpi: resolution of the written file.
        **corner_kwargs: passed on to :func:`corner.corner` (e.g. ``quantiles``,
            ``show_titles``, ``levels``).

    Returns:
        The figure, of ``d x d`` panels.
    """
    arr = _as_samples(samples)
    dim = arr.shape[1]
    names = _labels(labels, dim)
    true = None if truth is None else _as_vector(truth, dim, "truth")
    limits = list(ranges) if ranges is not None else sample_ranges([arr], true)
    if len(limits) != dim:
        raise ValueError(f"ranges must have {dim} (low, high) pairs, got {len(limits)}")
    fig = _new_corner_figure(dim)
    _draw_corner(
        fig,
        arr,
        labels=names,
        ranges=limits,
        color=color,
        bins=bins,
        smooth=smooth,
        density_only=False,
        corner_kwargs=corner_kwargs,
    )
    if true is not None:
        _mark_truth(fig, true)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def corner_overlay(
    sample_sets: Sequence[ArrayLike],
    names: Sequence[str] | None = None,
    *,
    truth: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    colors: Sequence[str] | None = None,
    ranges: Sequence[tuple[float, float]] | None = None,
    bins: int = 40,
    smooth: float | None = 1.0,
    title: str | None = None,
    dpi: int = 150,
    **corner_kwargs: Any,
) -> Figure:
    """Several sample sets (e.g. NPE against a reference posterior) in one corner plot.

    All sets share the same axis ranges and are drawn as contour lines with normalised
    1-D histograms (so sets of different sizes compare), each in its own colour, with a
    legend.

    Args:
        sample_sets: ``k`` arrays ``(n_i, d)`` with a common ``d``.
        names: ``k`` legend entries; default ``set 1 .. set k``.
        truth: optional true parameters ``(d,)``, drawn as lines.
        labels: ``d`` axis labels; default ``theta_1 .. theta_d``.
        path: when given, the figure is also written there.
        colors: ``k`` colours; default :data:`COLORS`.
        ranges: ``d`` pairs ``(low, high)``; default covers every set (:func:`sample_ranges`).
        bins: histogram bins per axis.
        smooth: Gaussian smoothing of the 2-D histograms, in bins.
        title: optional figure title.
        dpi: resolution of the written file.
        **corner_kwargs: passed on to every :func:`corner.corner` call.

    Returns:
        The figure.
    """
    if len(sample_sets) == 0:
        raise ValueError("corner_overlay needs at least one sample set")
    arrays = [_as_samples(s, f"sample_sets[{i}]") for i, s in enumerate(sample_sets)]
    dim = arrays[0].shape[1]
    for i, a in enumerate(arrays):
        if a.shape[1] != dim:
            raise ValueError(
                f"all sample sets need the same number of parameters: set 0 has {dim}, set {i} has {a.shape[1]}"
            )
    names = [f"set {i + 1}" for i in range(len(arrays))] if names is None else [str(n) for n in names]
    if len(names) != len(arrays):
        raise ValueError(f"names must have one entry per sample set ({len(arrays)}), got {len(names)}")
    if colors is None:
        colors = [COLORS[i % len(COLORS)] for i in range(len(arrays))]
    if len(colors) < len(arrays):
        raise ValueError(f"colors must have one entry per sample set ({len(arrays)}), got {len(colors)}")
    axis_labels = _labels(labels, dim)
    true = None if truth is None else _as_vector(truth, dim, "truth")
    limits = list(ranges) if ranges is not None else sample_ranges(arrays, true)
    if len(limits) != dim:
        raise ValueError(f"ranges must have {dim} (low, high) pairs, got {len(limits)}")
    fig = _new_corner_figure(dim)
    for arr, color in zip(arrays, colors, strict=False):
        _draw_corner(
            fig,
            arr,
            labels=axis_labels,
            ranges=limits,
            color=color,
            bins=bins,
            smooth=smooth,
            density_only=True,
            corner_kwargs=corner_kwargs,
        )
    _fit_diagonal_ylim(fig, dim)
    if true is not None:
        _mark_truth(fig, true)
    handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in zip(names, colors, strict=False)]
    if true is not None:
        handles.append(Line2D([], [], color=TRUTH_COLOR, lw=1.2, label="truth"))
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=11)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# -- training curves --------------------------------------------------------------------
def loss_plot(info: Mapping[str, Any] | Any, path: str | os.PathLike[str] | None = None, *, dpi: int = 150) -> Figure:
    """Training and validation loss per epoch, with the restored (best) epoch marked.

    Args:
        info: a training record with ``train_loss`` and ``val_loss`` (lists of length
            ``epochs``) and optionally ``best_epoch`` (0-based) and ``method``: a
            posterior's ``.info`` dict or a :class:`~sbikit.train.FitResult`.
        path: when given, the figure is also written there.
        dpi: resolution of the written file.

    Returns:
        The figure (one panel; epochs are numbered from 1).
    """
    if not isinstance(info, Mapping):
        to_dict = getattr(info, "to_dict", None)
        if to_dict is None:
            raise TypeError(f"info must be a dict (e.g. posterior.info) or a FitResult, got {type(info).__name__}")
        info = to_dict()
    for key in ("train_loss", "val_loss"):
        if key not in info:
            raise ValueError(f"info has no {key!r} entry; pass posterior.info or a FitResult")
    train = np.asarray(info["train_loss"], dtype=float)
    val = np.asarray(info["val_loss"], dtype=float)
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(train) + 1), train, color=COLORS[0], label="training")
    ax.plot(np.arange(1, len(val) + 1), val, color=COLORS[1], label="validation")
    best = info.get("best_epoch")
    if best is not None and 0 <= int(best) < len(val):
        ax.axvline(int(best) + 1, color="0.5", ls="--", lw=1, label=f"best epoch ({int(best) + 1})")
    # The first epoch's loss can be far above the rest; keep the y range on the later ones.
    tail = np.concatenate([train[1:], val[1:]]) if len(train) > 2 else np.concatenate([train, val])
    tail = tail[np.isfinite(tail)]
    if tail.size:
        lo, hi = float(tail.min()), float(tail.max())
        margin = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        ax.set_ylim(lo - margin, hi + margin)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    method = info.get("method")
    ax.set_title(f"{method} training" if method else "training")
    ax.legend(frameon=False)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# -- calibration ----------------------------------------------------------------------------
__all__ += ["rank_histogram", "coverage_plot", "tarp_plot"]


def _calibration_figure(n_panels: int, *, width: float = 3.2, height: float = 2.8) -> tuple[Figure, list[Any]]:
    cols = min(n_panels, 4)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def rank_histogram(
    ranks: ArrayLike,
    num_posterior_samples: int,
    *,
    num_bins: int | None = None,
    labels: Sequence[str] | None = None,
    band: float = 0.99,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """SBC rank histograms, one panel per parameter, with a binomial band.

    The grey band holds each bin's count with probability ``band`` under a calibrated
    posterior (``Binomial(m, 1 / num_bins)`` quantiles). A U shape means over-confident (too
    narrow), a hump under-confident (too wide), a slope biased.

    Args:
        ranks: ``(m, d)`` ranks in ``0..N`` from :func:`sbikit.diagnostics.run_sbc`.
        num_posterior_samples: ``N``.
        num_bins: bins; default ``m // 20`` clipped to ``5..30``, rounded so each bin holds
            the same number of rank values where possible.
        labels: ``d`` panel titles.
        band: probability mass of the band.
        path: when given, the figure is also written there.
        dpi: resolution of the written file.

    Returns:
        The figure.
    """
    r = _as_samples(ranks, "ranks")
    m, dim = r.shape
    n = int(num_posterior_samples)
    bins = int(num_bins) if num_bins else int(np.clip(m // 20, 5, 30))
    bins = min(bins, n + 1)
    names = _labels(labels, dim)
    # Bin on the (N + 1) rank values; bins of unequal width get their own expected count.
    edges = np.linspace(0, n + 1, bins + 1)
    expected_p = np.diff(np.floor(edges - 1e-9)) / (n + 1)
    expected_p = np.where(expected_p > 0, expected_p, 1.0 / bins)
    expected_p = expected_p / expected_p.sum()
    lo = stats_binom_ppf((1 - band) / 2, m, expected_p)
    hi = stats_binom_ppf(1 - (1 - band) / 2, m, expected_p)
    fig, axes = _calibration_figure(dim)
    for j, ax in enumerate(axes):
        counts = np.histogram(r[:, j], bins=edges)[0]
        centers = 0.5 * (edges[:-1] + edges[1:])
        ax.fill_between(
            edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post", color="0.85", label=f"{band:.0%} band"
        )
        ax.bar(centers, counts, width=np.diff(edges), color=COLORS[0], alpha=0.8, edgecolor="white")
        ax.hlines(m * expected_p, edges[:-1], edges[1:], color="0.4", lw=1)
        ax.set_title(names[j])
        ax.set_xlabel("rank")
        ax.set_xlim(0, n + 1)
    axes[0].set_ylabel("count")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def stats_binom_ppf(q: float, n: int, p: np.ndarray) -> np.ndarray:
    """Binomial quantile ``(B,)`` for success probabilities ``p`` ``(B,)`` (scipy, imported lazily)."""
    from scipy import stats

    return stats.binom.ppf(q, n, p)


def coverage_plot(
    result: Any,
    *,
    labels: Sequence[str] | None = None,
    band: float = 0.99,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """Expected coverage against credibility level: joint HPD and central per parameter.

    Curves below the diagonal mean over-confident (regions too small), above
    under-confident. The grey band holds the coverage of a calibrated posterior with
    probability ``band`` at each level (binomial).

    Args:
        result: a :class:`sbikit.diagnostics.CoverageResult`.
        labels: ``d`` names for the central-interval curves.
        band: probability mass of the band.
        path: when given, the figure is also written there.
        dpi: resolution of the written file.

    Returns:
        The figure (two panels: HPD, central intervals).
    """
    from sbikit.diagnostics.coverage import coverage_band

    levels = np.asarray(result.levels, dtype=float)
    hpd = np.asarray(result.hpd, dtype=float)
    central = np.asarray(result.central, dtype=float)
    names = _labels(labels, central.shape[1])
    lo, hi = coverage_band(levels, result.num_tests, confidence=band)
    fig, (ax1, ax2) = _calibration_figure(2, width=4.0, height=4.0)
    for ax in (ax1, ax2):
        ax.fill_between(levels, lo, hi, color="0.85", label=f"{band:.0%} band")
        ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("credibility level")
        ax.set_aspect("equal")
    ax1.plot(levels, hpd, color=COLORS[0], lw=2, label="HPD (joint)")
    ax1.set_ylabel("expected coverage")
    ax1.set_title("highest-density regions")
    for j in range(central.shape[1]):
        ax2.plot(levels, central[:, j], color=COLORS[j % len(COLORS)], lw=1.5, label=names[j])
    ax2.set_title("central intervals")
    ax1.legend(frameon=False, fontsize=8, loc="upper left")
    ax2.legend(frameon=False, fontsize=8, loc="upper left", ncol=1 if central.shape[1] <= 5 else 2)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def tarp_plot(
    result: Any,
    *,
    band: float = 0.99,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """The TARP expected-coverage curve against the credibility level ``alpha``.

    Args:
        result: a :class:`sbikit.diagnostics.TARPResult`.
        band: probability mass of the binomial band around the diagonal.
        path: when given, the figure is also written there.
        dpi: resolution of the written file.

    Returns:
        The figure.
    """
    from sbikit.diagnostics.coverage import coverage_band

    alpha = np.asarray(result.alpha, dtype=float)
    ecp = np.asarray(result.ecp, dtype=float)
    m = len(result.fractions)
    lo, hi = coverage_band(alpha, m, confidence=band)
    mid = len(alpha) // 2
    atc = float(((ecp[mid:] - alpha[mid:]) * (alpha[1] - alpha[0])).sum()) if len(alpha) > 1 else 0.0
    fig, (ax,) = _calibration_figure(1, width=4.2, height=4.2)
    ax.fill_between(alpha, lo, hi, color="0.85", label=f"{band:.0%} band")
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
    ax.plot(alpha, ecp, color=COLORS[1], lw=2, label=f"TARP (ATC {atc:+.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
