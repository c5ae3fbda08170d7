"""Tests for the command line (sbikit.cli) and run configurations (sbikit.config)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import sbikit
import simulators
from sbikit.cli import main
from sbikit.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tutorials" / "configs"
SMOKE = CONFIGS / "smoke.toml"

SUMMARY_KEYS = {
    "simulator",
    "num_simulations",
    "flow",
    "device",
    "train_time",
    "simulate_time",
    "epochs",
    "best_epoch",
    "best_val_loss",
    "final_train_loss",
    "final_val_loss",
    "posterior_mean",
    "posterior_std",
    "config",
}

# A valid tiny config; error cases edit one line of it.
BASE = textwrap.dedent(
    """\
    [simulator]
    name = "two_moons"

    [simulation]
    num_simulations = 300

    [estimator]
    flow = "maf"
    device = "cpu"
    hidden_features = 16
    num_transforms = 2

    [train]
    max_epochs = 2

    [observation]
    theta_true = [0.25, 0.25]

    [posterior]
    num_samples = 200
    """
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """Run smoke.toml once for all the tests that inspect its output."""
    out = tmp_path_factory.mktemp("smoke")
    code = main(["run", str(SMOKE), "--out", str(out), "--quiet"])
    return out, code, str(out / "summary.json")


def test_run_writes_all_files(smoke_run):
    out, code, _ = smoke_run
    assert code == 0
    for name in ("samples.npz", "corner.png", "loss.png", "posterior.pt", "summary.json", "config.toml"):
        assert (out / name).is_file(), name
    assert (out / "config.toml").read_bytes() == SMOKE.read_bytes()


def test_run_summary(smoke_run):
    out, _, _ = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    cfg = load_config(SMOKE)
    assert summary["simulator"] == "two_moons"
    assert summary["num_simulations"] == cfg.simulation.num_simulations
    assert summary["flow"] == "maf"
    assert summary["device"] == "cpu"
    assert 1 <= summary["epochs"] <= cfg.train.max_epochs
    assert set(summary["posterior_mean"]) == {"theta_1", "theta_2"}
    assert all(s > 0 for s in summary["posterior_std"].values())
    assert 0 < summary["observation_check"]["p_value"] <= 1  # x_o is checked against the training set
    assert summary["config"]["output"]["dir"] == str(out)  # --out wins over [output] dir
    assert summary["config"]["train"]["max_epochs"] == cfg.train.max_epochs


def test_run_samples_inside_prior_and_shaped(smoke_run):
    out, _, _ = smoke_run
    cfg = load_config(SMOKE)
    sim = simulators.get("two_moons")
    with np.load(out / "samples.npz") as data:  # no pickles needed
        samples, x_o = data["samples"], data["x_o"]
        assert samples.shape == (cfg.posterior.num_samples, sim.prior.dim)
        assert x_o.shape == sim.x_shape
        assert data["theta_true"].tolist() == cfg.observation.theta_true
        assert data["theta_names"].tolist() == sim.theta_names
    low, high = sim.prior.low.numpy(), sim.prior.high.numpy()
    assert np.all((samples > low) & (samples < high))
    # x_o is simulated from theta_true with the observation seed.
    np.testing.assert_allclose(x_o, sim.simulate(np.array(cfg.observation.theta_true), seed=cfg.observation.seed))


def test_run_posterior_file_loads(smoke_run):
    out, _, _ = smoke_run
    posterior = sbikit.load(out / "posterior.pt")
    with np.load(out / "samples.npz") as data:
        x_o = data["x_o"]
    assert posterior.sample(10, x=x_o, seed=0).shape == (10, 2)
    assert posterior.theta_names == ["theta_1", "theta_2"]


def test_run_is_repeatable(smoke_run, tmp_path):
    out, _, _ = smoke_run
    assert main(["run", str(SMOKE), "--out", str(tmp_path), "--quiet"]) == 0
    with np.load(out / "samples.npz") as a, np.load(tmp_path / "samples.npz") as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])


def test_run_prints_summary_path_and_logs(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(BASE)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "out" / "summary.json")
    assert "simulating 300 data sets" in captured.err


def test_run_with_given_x(tmp_path, capsys):
    config = tmp_path / "given_x.toml"
    config.write_text(BASE.replace("theta_true = [0.25, 0.25]", "x = [0.1, -0.2]"))
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet", "--threads", "1"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no log lines, no progress bar
    with np.load(tmp_path / "out" / "samples.npz") as data:
        assert data["x_o"].tolist() == [0.1, -0.2]
        assert "theta_true" not in data
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["theta_true"] is None
    assert (tmp_path / "out" / "corner.png").is_file()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_epochs = 2", 'max_epochs = "ten"', "[train] max_epochs must be an integer, got str"),
        ("max_epochs = 2", "max_epoch = 2", "unknown key(s) 'max_epoch' in [train]"),
        ("max_epochs = 2", "validation_fraction = 1.5", "[train] validation_fraction must be in (0.0, 1.0)"),
        ('name = "two_moons"', 'name = "three_moons"', "[simulator] name 'three_moons' is not a known simulator"),
        ('name = "two_moons"', "name = 2", "[simulator] name must be a non-empty string, got int"),
        ('name = "two_moons"', 'name = "two_moons"\nkwargs = { radius = 1 }', "[simulator] kwargs"),
        ('flow = "maf"', 'flow = "glow"', "[estimator] flow must be one of auto, maf, realnvp, nsf"),
        ('device = "cpu"', 'device = "tpu"', "[estimator] device"),
        ("num_simulations = 300", "num_simulations = 0", "[simulation] num_simulations must be an integer >= 2"),
        ("num_simulations = 300", "num_simulations = 3.5", "[simulation] num_simulations must be an integer"),
        ("[posterior]", "[posterior_]", "unknown section(s) [posterior_]"),
        ("theta_true = [0.25, 0.25]", "theta_true = [0.25, 0.25, 0.0]", "theta_true has 3 values but two_moons has 2"),
        ("theta_true = [0.25, 0.25]", "theta_true = [0.25, 1.5]", "theta_2 = 1.5 (support -1 < theta_2 < 1)"),
        ("theta_true = [0.25, 0.25]", 'theta_true = [0.25, "a"]', "[observation] theta_true must be an array of"),
        ("theta_true = [0.25, 0.25]", "x = [0.1, 0.2, 0.3]", "[observation] x has shape (3,)"),
        ("theta_true = [0.25, 0.25]", "x = [[0.1], [0.2, 0.3]]", "[observation] x must be a rectangular"),
        ("theta_true = [0.25, 0.25]", "seed = 3", "[observation] needs theta_true"),
        ("[observation]\ntheta_true = [0.25, 0.25]", "", "the [observation] section is required"),
        ("num_samples = 200", "num_samples = [", "not valid TOML"),
    ],
)
def test_config_errors_exit_2_with_message(tmp_path, capsys, old, new, message):
    assert old in BASE
    config = tmp_path / "bad.toml"
    config.write_text(BASE.replace(old, new))
    code = main(["run", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_parse_config_defaults():
    cfg = parse_config({"simulator": {"name": "supernova"}, "observation": {"theta_true": [0.3, -1]}})
    assert cfg.simulation.num_simulations == 10_000
    assert cfg.estimator.npe_kwargs() == {"flow": "auto", "device": "auto"}
    assert cfg.train.fit_kwargs() == {"seed": 0}
    assert cfg.output.dir == "runs/supernova"
    assert cfg.observation.theta_true == [0.3, -1.0]
    with pytest.raises(ConfigError, match=r"\[simulator\] name is required"):
        parse_config({"simulator": {}, "observation": {"x": [0.0]}})
    blocks = parse_config(
        {"simulator": {"name": "supernova"}, "estimator": {"num_blocks": 1}, "observation": {"theta_true": [0.3, -1]}}
    )
    assert blocks.estimator.npe_kwargs() == {"flow": "auto", "device": "auto", "num_blocks": 1}
    affine = parse_config(
        {
            "simulator": {"name": "supernova"},
            "estimator": {"conditional_affine": False},
            "observation": {"theta_true": [0.3, -1]},
        }
    )
    assert affine.estimator.npe_kwargs() == {"flow": "auto", "device": "auto", "conditional_affine": False}
    for name, expected in (("none", None), ("mlp", "mlp"), ("auto", "auto")):
        embedded = parse_config(
            {
                "simulator": {"name": "supernova"},
                "estimator": {"embedding": name},
                "observation": {"theta_true": [0.3, -1]},
            }
        )
        assert embedded.estimator.npe_kwargs() == {"flow": "auto", "device": "auto", "embedding": expected}
    with pytest.raises(ConfigError, match=r"embedding must be one of auto, mlp, cnn, none; got 'transformer'"):
        parse_config(
            {
                "simulator": {"name": "supernova"},
                "estimator": {"embedding": "transformer"},
                "observation": {"theta_true": [0.3, -1]},
            }
        )
    with pytest.raises(ConfigError, match=r"conditional_affine must be true or false"):
        parse_config(
            {
                "simulator": {"name": "supernova"},
                "estimator": {"conditional_affine": 1},
                "observation": {"theta_true": [0.3, -1]},
            }
        )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_bundled_configs_are_valid(path):
    cfg = load_config(path)
    sim = simulators.get(cfg.simulator.name, **cfg.simulator.kwargs)
    if cfg.observation.theta_true is not None:
        assert len(cfg.observation.theta_true) == sim.prior.dim


def test_simulators_lists_all(capsys):
    assert main(["simulators"]) == 0
    out = capsys.readouterr().out
    for name in simulators.available():
        sim = simulators.get(name)
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert str(tuple(sim.x_shape)) in line
        assert ", ".join(sim.theta_names) in line


def test_usage_errors_return_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["run", str(SMOKE), "--threads", "0"]) == 2
    assert main(["--version"]) == 0
    assert "sbikit" in capsys.readouterr().out


def test_python_m_sbikit():
    result = subprocess.run(
        [sys.executable, "-m", "sbikit", "simulators"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in simulators.available():
        assert name in result.stdout


def test_run_with_a_user_simulator_given_by_import_path(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "line_sim.py").write_text(
        "import numpy as np\n"
        "import sbikit, simulators\n\n\n"
        "class Line(simulators.Simulator):\n"
        "    def __init__(self, num_points: int = 10):\n"
        "        self.prior = sbikit.BoxUniform([-2, -2], [2, 2])\n"
        "        self.theta_names = ['slope', 'intercept']\n"
        "        self.t = np.linspace(0, 1, num_points)\n"
        "        self.x_shape = (num_points,)\n\n"
        "    def _simulate(self, theta, rng):\n"
        "        noise = 0.1 * rng.normal(size=(len(theta), len(self.t)))\n"
        "        return theta[:, :1] * self.t + theta[:, 1:] + noise\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    config = tmp_path / "line.toml"
    config.write_text(
        '[simulator]\nname = "line_sim:Line"\nkwargs = {num_points = 8}\n'
        "[simulation]\nnum_simulations = 300\n[train]\nmax_epochs = 3\n"
        "[observation]\ntheta_true = [0.5, -0.5]\n[posterior]\nnum_samples = 200\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (200, 2)
    # An import path that does not resolve is a config error, not a traceback.
    config.write_text(config.read_text().replace("line_sim:Line", "line_sim:Nope"))
    assert main(["run", str(config), "--out", str(tmp_path / "out2"), "--quiet"]) == 2


# -- [reference] mcmc = true: emcee reference, comparison and overlay (issue 4) ----------------
REFERENCE = BASE + textwrap.dedent(
    """
    [reference]
    mcmc = true
    num_samples = 500
    seed = 3
    """
)


def test_run_with_mcmc_reference(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(REFERENCE)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    for name in ("reference_samples.npz", "comparison.json", "comparison.md", "overlay.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    sim = simulators.get("two_moons")
    with np.load(out / "reference_samples.npz") as data:
        assert data["samples"].shape == (500, 2)
        assert data["tau"].shape == (2,) and data["ess"].shape == (2,)
        low, high = sim.prior.low.numpy(), sim.prior.high.numpy()
        assert np.all((data["samples"] > low) & (data["samples"] < high))
    comparison = json.loads((out / "comparison.json").read_text())
    assert 0.0 <= comparison["comparison"]["c2st"] <= 1.0
    assert set(comparison["comparison"]["mean_diff"]) == {"theta_1", "theta_2"}
    assert comparison["reference"]["num_walkers"] >= 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"]["c2st"] == comparison["comparison"]["c2st"]
    assert "overlay.png" in summary["files"] and "comparison.md" in summary["files"]
    assert "C2ST" in (out / "comparison.md").read_text()


def test_run_without_reference_writes_no_comparison(smoke_run):
    out, _, _ = smoke_run
    assert not (out / "comparison.json").exists()
    assert json.loads((out / "summary.json").read_text())["reference"] is None


def test_reference_config_parsing():
    cfg = parse_config(tomllib_loads(REFERENCE))
    assert cfg.reference.mcmc and cfg.reference.num_samples == 500 and cfg.reference.seed == 3
    assert not parse_config(tomllib_loads(BASE)).reference.mcmc
    with pytest.raises(ConfigError, match=r"\[reference\] mcmc must be true or false"):
        parse_config(tomllib_loads(REFERENCE.replace("mcmc = true", 'mcmc = "yes"')))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'walkers' in \[reference\]"):
        parse_config(tomllib_loads(REFERENCE + "walkers = 4\n"))


def test_reference_needs_a_likelihood(tmp_path, capsys, monkeypatch):
    # A simulator without log_likelihood: the run stops with exit code 2 before training.
    module = tmp_path / "nolik_sim.py"
    module.write_text(
        textwrap.dedent(
            """
            import torch
            from sbikit.priors import BoxUniform
            from simulators.base import Simulator

            class NoLik(Simulator):
                name = "nolik"

                def __init__(self):
                    self.prior = BoxUniform(-torch.ones(2), torch.ones(2))
                    self.theta_names = ["a", "b"]
                    self.x_shape = (2,)

                def _simulate(self, theta, rng):
                    return theta + 0.1 * rng.standard_normal(theta.shape)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "run.toml"
    config.write_text(REFERENCE.replace('name = "two_moons"', 'name = "nolik_sim:NoLik"'))
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[reference] mcmc = true needs a simulator with an exact log_likelihood" in err
    assert not (tmp_path / "out" / "posterior.pt").exists()


def tomllib_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def test_run_with_calibration_writes_the_checks(tmp_path) -> None:
    config = tmp_path / "calibrated.toml"
    config.write_text(
        SMOKE.read_text() + "\n[calibration]\nenabled = true\nnum_tests = 50\nnum_posterior_samples = 100\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    for name in ("sbc_ranks.png", "coverage.png", "tarp.png", "calibration.json", "calibration.txt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["calibration"]["passed"], bool)
    assert summary["calibration"]["num_tests"] == 50
    assert "calibration.json" in summary["files"]


def test_calibration_config_errors(tmp_path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(SMOKE.read_text() + "\n[calibration]\nenabled = true\nalpha = 1.5\n")
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "[calibration] alpha" in capsys.readouterr().err


def test_train_schedule_in_config() -> None:
    import sbikit.config
    import sbikit.train

    assert set(sbikit.config.SCHEDULES) == set(sbikit.train.SCHEDULES)
    base = {"simulator": {"name": "supernova"}, "observation": {"theta_true": [0.3, -1]}}
    cfg = parse_config(base | {"train": {"schedule": "plateau"}})
    assert cfg.train.fit_kwargs() == {"seed": 0, "schedule": "plateau"}
    with pytest.raises(ConfigError, match=r"\[train\] schedule must be one of"):
        parse_config(base | {"train": {"schedule": "linear"}})
