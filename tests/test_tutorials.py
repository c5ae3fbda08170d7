"""Run every tutorial end to end in fast mode, as a user would run the script.

Each ``tutorials/*.py`` runs in a fresh Python process with ``SBIKIT_FAST=1`` (tiny
simulation and training budgets), the Agg backend, and a temporary folder as both working
directory and ``SBIKIT_TUTORIAL_OUT``. A new tutorial is picked up automatically; list the
figures it must write in ``EXPECTED_FIGURES`` (otherwise any PNG counts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("*.py"))

EXPECTED_FIGURES: dict[str, list[str]] = {
    "01_quickstart.py": [
        "oscillator_corner.png",
        "oscillator_loss.png",
        "two_moons_corner.png",
        "two_moons_vs_exact.png",
    ],
    "02_mcmc_comparison.py": ["supernova_overlay.png", "supernova_three_observations.png"],
    "03_calibration.py": ["ranks_0.png", "coverage_0.png", "tarp_0.png", "two_moons_vs_exact.png"],
    "07_scaling.py": ["scaling_corner.png", "scaling_loss.png"],
    "04_image_compression.py": ["grf_examples.png", "latent_spaces.png", "vae_gmm_galaxies.png", "grf_posteriors.png"],
    "05_emulators.py": ["emulated_vs_simulated.png", "power_spectra.png", "npe_emulated_vs_real.png"],
    "06_anomalies.py": ["anomaly_examples.png", "roc_curves.png", "threshold.png"],
}

TIMEOUT_S = 300


def test_tutorials_exist():
    assert SCRIPTS, f"no tutorials found in {TUTORIALS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_tutorial_runs(script: Path, tmp_path: Path):
    env = dict(os.environ)
    env.update(SBIKIT_FAST="1", MPLBACKEND="Agg", SBIKIT_TUTORIAL_OUT=str(tmp_path))
    # One thread per process: tests may run beside other processes on few cores, where
    # OpenMP threads that spin-wait for each other make small training runs far slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    expected = EXPECTED_FIGURES.get(script.name)
    if expected is None:
        assert list(tmp_path.rglob("*.png")), f"{script.name} wrote no figure to SBIKIT_TUTORIAL_OUT"
    else:
        for name in expected:
            path = tmp_path / name
            assert path.is_file() and path.stat().st_size > 0, f"{script.name} did not write {name}"
