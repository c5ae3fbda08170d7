"""Tests for sbikit.plots: figures are built, shaped right, and written as PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from sbikit import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def samples() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 3))


def test_corner_plot_writes_png_and_creates_folders(tmp_path, samples):
    path = tmp_path / "a" / "b" / "corner.png"
    fig = plots.corner_plot(samples, truth=[0.0, 0.5, -0.5], labels=["a", "b", "c"], path=path)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 9  # a 3 x 3 grid
    assert _is_png(path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_corner_plot_marks_the_truth(samples):
    truth = [0.1, 0.2, 0.3]
    fig = plots.corner_plot(samples, truth=truth)
    axes = np.asarray(fig.axes).reshape(3, 3)
    for i in range(3):
        xs = [line.get_xdata()[0] for line in axes[i, i].get_lines()]
        assert any(np.isclose(v, truth[i]) for v in xs), f"no truth line on diagonal panel {i}"
    lo, hi = axes[2, 0].get_xlim()
    assert lo < truth[0] < hi


def test_corner_plot_accepts_torch_and_one_dimension(tmp_path):
    fig = plots.corner_plot(torch.randn(500), truth=torch.tensor([0.3]), path=tmp_path / "one.png")
    assert len(fig.axes) == 1
    assert _is_png(tmp_path / "one.png")


def test_corner_plot_truth_includes_far_value_in_range(samples):
    fig = plots.corner_plot(samples, truth=[10.0, None, 0.0])
    lo, hi = np.asarray(fig.axes).reshape(3, 3)[0, 0].get_xlim()
    assert lo < 10.0 < hi


def test_corner_plot_errors_name_the_argument(samples):
    with pytest.raises(ValueError, match="labels"):
        plots.corner_plot(samples, labels=["a", "b"])
    with pytest.raises(ValueError, match="truth"):
        plots.corner_plot(samples, truth=[0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        plots.corner_plot(np.zeros((10, 2, 2)))


def test_corner_overlay_shares_ranges_and_has_legend(tmp_path, samples):
    other = samples[:500] + 3.0
    path = tmp_path / "overlay.png"
    fig = plots.corner_overlay([samples, other], ["first", "second"], truth=[0.0, 0.0, 0.0], path=path)
    assert _is_png(path)
    axes = np.asarray(fig.axes).reshape(3, 3)
    lo, hi = axes[0, 0].get_xlim()
    # The shared range covers both sets: the second is shifted by 3.
    assert lo < np.quantile(samples[:, 0], 0.01) and hi > np.quantile(other[:, 0], 0.99)
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts == ["first", "second", "truth"]


def test_corner_overlay_rejects_mismatched_sets(samples):
    with pytest.raises(ValueError, match="same number of parameters"):
        plots.corner_overlay([samples, samples[:, :2]])
    with pytest.raises(ValueError, match="names"):
        plots.corner_overlay([samples, samples], ["only one"])


def test_loss_plot_writes_png(tmp_path):
    info = {"train_loss": [3.0, 2.0, 1.5, 1.4], "val_loss": [3.1, 2.1, 1.6, 1.7], "best_epoch": 2, "method": "NPE"}
    fig = plots.loss_plot(info, tmp_path / "loss.png")
    assert isinstance(fig, Figure)
    assert _is_png(tmp_path / "loss.png")
    assert len(fig.axes[0].get_lines()) == 3  # training, validation, best epoch


def test_loss_plot_needs_the_losses():
    with pytest.raises(ValueError, match="val_loss"):
        plots.loss_plot({"train_loss": [1.0]})
