"""Run configurations for ``sbikit run``: a TOML file, validated into dataclasses.

The format (every section but ``[simulator]`` and ``[observation]`` is optional; the
values shown for optional keys are their defaults)::

    [simulator]
    name = "two_moons"          # required: a name from simulators.available(), or the
                                # import path of your own simulator, "my_package.sims:MySim"
    kwargs = {}                 # keyword arguments of the simulator's constructor

    [simulation]
    num_simulations = 10000     # training pairs (theta, x) drawn from the prior
    seed = 0                    # seeds the prior draws and the simulations

    [estimator]
    flow = "auto"               # auto (nsf up to 5 parameters, else maf) | nsf | maf | realnvp
    device = "auto"             # auto | cpu | cuda | cuda:N
    # hidden_features = 128     # optional; left out means sbikit.NPE's default (128 nsf, 64 maf)
    # num_transforms = 5
    # num_bins = 8              # nsf only
    # num_blocks = 2            # hidden layers after the first in each conditioner
    # conditional_affine = true # x-dependent shift-and-scale first layer (default: nsf on, maf off)
    # embedding = "auto"        # auto (an MLP of x for nsf on vectors) | mlp | cnn (images) | none

    [train]                     # optional keys are passed to NPE.fit; left out = its default
    seed = 0
    # batch_size = 512
    # learning_rate = 1e-2      # peak: 1e-2 for nsf, 3e-3 for maf; 1e-3 for realnvp
    # max_epochs = 60           # nsf/maf: the cosine schedule's length (60 for 10^4 simulations)
    # schedule = "cosine"       # cosine (nsf, maf) | plateau (realnvp)
    # validation_fraction = 0.1
    # patience = 12             # 12 with the cosine schedule, 20 with the plateau one

    [observation]               # required: theta_true, x, or both
    theta_true = [0.25, 0.25]   # x_o is simulated from these with `seed` ...
    seed = 1
    # x = [0.0, 0.0]            # ... or given directly (then theta_true only marks the truth)

    [posterior]
    num_samples = 10000
    seed = 2

    [output]
    dir = "runs/<simulator name>"   # relative to the working directory; --out overrides it

    [reference]                 # optional: an emcee reference from the exact likelihood
    mcmc = false                # true adds reference_samples.npz, comparison.json/.md and
                                # overlay.png; needs a simulator with a log_likelihood
    num_samples = 10000         # reference draws
    seed = 3
    # num_walkers = 32          # default max(32, 4 d)
    # max_steps = 100000        # cap on the chain length

    [calibration]               # optional: SBC, expected coverage and TARP on fresh simulations
    enabled = false             # true adds sbc_ranks.png, coverage.png, tarp.png,
                                # calibration.json and calibration.txt
    num_tests = 500             # (theta, x) test pairs simulated from the prior
    num_posterior_samples = 1000
    alpha = 0.01                # family-wise false-alarm rate of the checks
    seed = 4

Unknown sections or keys are errors (they are usually typos), and every error names the
section, the key, the expected type and the value found, e.g.
``[train] max_epochs must be an integer, got str ('ten')``. Checks that need the
simulator (the length of ``theta_true``, the shape of ``x``, the prior support) happen
in :mod:`sbikit.cli`, which raises :class:`ConfigError` for them too.

>>> cfg = load_config("tutorials/configs/two_moons.toml")
>>> cfg.simulation.num_simulations, cfg.estimator.flow
(10000, 'nsf')
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "RunConfig",
    "SimulatorConfig",
    "SimulationConfig",
    "EstimatorConfig",
    "TrainConfig",
    "ObservationConfig",
    "PosteriorConfig",
    "OutputConfig",
    "ReferenceConfig",
    "CalibrationConfig",
    "load_config",
    "parse_config",
    "FLOWS",
    "EMBEDDINGS",
]

FLOWS = ("auto", "maf", "realnvp", "nsf")
EMBEDDINGS = ("auto", "mlp", "cnn", "none")
SCHEDULES = ("plateau", "cosine")  # sbikit.train.SCHEDULES, kept here so that reading a config needs no torch


class ConfigError(ValueError):
    """A run configuration is missing something or has a value of the wrong type or range."""


# -- sections -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatorConfig:
    """``[simulator]``: which bundled simulator, and its constructor arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulationConfig:
    """``[simulation]``: the training set."""

    num_simulations: int = 10_000
    seed: int = 0


@dataclass(frozen=True)
class EstimatorConfig:
    """``[estimator]``: arguments of :class:`sbikit.NPE`; ``None`` means NPE's default."""

    flow: str = "auto"
    device: str = "auto"
    hidden_features: int | None = None
    num_transforms: int | None = None
    num_bins: int | None = None
    num_blocks: int | None = None
    conditional_affine: bool | None = None
    embedding: str | None = None

    def npe_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``sbikit.NPE(prior, **kwargs)`` (only the ones set)."""
        out: dict[str, Any] = {"flow": self.flow, "device": self.device}
        for key in ("hidden_features", "num_transforms", "num_bins", "num_blocks", "conditional_affine"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.embedding is not None:
            out["embedding"] = None if self.embedding == "none" else self.embedding
        return out


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: arguments of :meth:`sbikit.NPE.fit`; ``None`` means fit's default."""

    seed: int = 0
    batch_size: int | None = None
    learning_rate: float | None = None
    max_epochs: int | None = None
    schedule: str | None = None
    validation_fraction: float | None = None
    patience: int | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``NPE.fit(theta, x, **kwargs)`` (the seed and the ones set)."""
        out: dict[str, Any] = {"seed": self.seed}
        for key in ("batch_size", "learning_rate", "max_epochs", "schedule", "validation_fraction", "patience"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ObservationConfig:
    """``[observation]``: the data to infer from, ``x`` given or simulated from ``theta_true``.

    ``x`` is a nested list (its shape is checked against the simulator's ``x_shape`` by
    the CLI); ``theta_true`` is a list of ``d`` numbers.
    """

    theta_true: list[float] | None = None
    x: list[Any] | None = None
    seed: int = 1


@dataclass(frozen=True)
class PosteriorConfig:
    """``[posterior]``: how many samples to draw for ``x_o``."""

    num_samples: int = 10_000
    seed: int = 2


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where the run writes its files."""

    dir: str


@dataclass(frozen=True)
class ReferenceConfig:
    """``[reference]``: an emcee reference posterior and a comparison (see :mod:`sbikit.mcmc`)."""

    mcmc: bool = False
    num_samples: int = 10_000
    seed: int = 3
    num_walkers: int | None = None
    max_steps: int = 100_000


@dataclass(frozen=True)
class CalibrationConfig:
    """``[calibration]``: calibration checks on fresh simulations (see :mod:`sbikit.diagnostics`)."""

    enabled: bool = False
    num_tests: int = 500
    num_posterior_samples: int = 1000
    alpha: float = 0.01
    seed: int = 4


@dataclass(frozen=True)
class RunConfig:
    """A whole ``sbikit run`` configuration.

    Attributes:
        source: the file it was read from (``None`` when built from a dict).
    """

    simulator: SimulatorConfig
    simulation: SimulationConfig
    estimator: EstimatorConfig
    train: TrainConfig
    observation: ObservationConfig
    posterior: PosteriorConfig
    output: OutputConfig
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The configuration with defaults filled in, as a JSON/TOML-able dict (no ``source``)."""
        out = asdict(self)
        out.pop("source")
        return out


# -- value checks ---------------------------------------------------------------------------
def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} ({text})"


class _Section:
    """Reads one table, checking each key's type and complaining about leftovers."""

    def __init__(self, name: str, table: Any, *, allowed: tuple[str, ...]) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{name}] must be a table (a TOML section), got {_describe(table)}")
        self.name = name
        self.table = dict(table)
        unknown = sorted(set(self.table) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(repr(k) for k in unknown)} in [{name}]; "
                f"expected some of: {', '.join(allowed)}"
            )

    def _where(self, key: str) -> str:
        return f"[{self.name}] {key}"

    def _get(self, key: str, default: Any, required: bool, check: Callable[[str, Any], Any]) -> Any:
        if key not in self.table:
            if required:
                raise ConfigError(f"{self._where(key)} is required")
            return default
        return check(key, self.table[key])

    def integer(
        self, key: str, default: int | None = None, *, minimum: int | None = None, required: bool = False
    ) -> int | None:
        def check(k: str, v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{self._where(k)} must be an integer, got {_describe(v)}")
            if minimum is not None and v < minimum:
                raise ConfigError(f"{self._where(k)} must be an integer >= {minimum}, got {v}")
            return int(v)

        return self._get(key, default, required, check)

    def number(
        self, key: str, default: float | None = None, *, low: float | None = None, high: float | None = None
    ) -> float | None:
        """A finite number (TOML integer or float) strictly between ``low`` and ``high``."""

        def check(k: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{self._where(k)} must be a finite number, got {_describe(v)}")
            if (low is not None and v <= low) or (high is not None and v >= high):
                lo = "-inf" if low is None else low
                hi = "inf" if high is None else high
                raise ConfigError(f"{self._where(k)} must be in ({lo}, {hi}), got {v}")
            return float(v)

        return self._get(key, default, False, check)

    def string(
        self, key: str, default: str | None = None, *, choices: tuple[str, ...] | None = None, required: bool = False
    ) -> str | None:
        def check(k: str, v: Any) -> str:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{self._where(k)} must be a non-empty string, got {_describe(v)}")
            if choices is not None and v not in choices:
                raise ConfigError(f"{self._where(k)} must be one of {', '.join(choices)}; got {v!r}")
            return v

        return self._get(key, default, required, check)

    def boolean(self, key: str, default: bool | None) -> bool | None:
        def check(k: str, v: Any) -> bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{self._where(k)} must be true or false, got {_describe(v)}")
            return v

        return self._get(key, default, False, check)

    def table_value(self, key: str) -> dict[str, Any]:
        def check(k: str, v: Any) -> dict[str, Any]:
            if not isinstance(v, Mapping):
                raise ConfigError(f"{self._where(k)} must be a table, e.g. {{ dim = 5 }}, got {_describe(v)}")
            return dict(v)

        return self._get(key, {}, False, check)

    def numbers(self, key: str) -> list[Any] | None:
        """A (possibly nested) array of finite numbers, returned as nested lists of floats."""

        def convert(v: Any, k: str) -> Any:
            if isinstance(v, list):
                return [convert(item, k) for item in v]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{self._where(k)} must be an array of numbers, found {_describe(v)} in it")
            if not math.isfinite(v):
                raise ConfigError(f"{self._where(k)} must hold finite numbers, found {v}")
            return float(v)

        def check(k: str, v: Any) -> list[Any]:
            if not isinstance(v, list) or len(v) == 0:
                raise ConfigError(f"{self._where(k)} must be a non-empty array of numbers, got {_describe(v)}")
            return convert(v, k)

        return self._get(key, None, False, check)


def _device(section: _Section) -> str:
    device = section.string("device", "auto")
    assert device is not None
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device.removeprefix("cuda:").isdigit()
    ):
        raise ConfigError(f"[{section.name}] device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


# -- parsing ------------------------------------------------------------------------------------
_SECTIONS = (
    "simulator",
    "simulation",
    "estimator",
    "train",
    "observation",
    "posterior",
    "output",
    "reference",
    "calibration",
)


def parse_config(data: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    """Validate a parsed TOML document (a dict) and fill in the defaults.

    Args:
        data: the document, e.g. from ``tomllib.loads``.
        source: file name used in error messages and kept in :attr:`RunConfig.source`.

    Returns:
        The configuration.

    Raises:
        ConfigError: naming the section and key that are missing, unknown or of the wrong
            type, or a simulator name that is not registered.
    """
    try:
        return _parse(data, source)
    except ConfigError as err:
        if source is not None:
            raise ConfigError(f"{source}: {err}") from None
        raise


def _parse(data: Mapping[str, Any], source: str | None) -> RunConfig:
    import simulators  # the registry; imported here so that `import sbikit` stays light

    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(f'[{k}]' for k in unknown)}; expected some of: "
            f"{', '.join(f'[{k}]' for k in _SECTIONS)}"
        )
    if "simulator" not in data:
        raise ConfigError('the [simulator] section is required, e.g. [simulator] name = "two_moons"')
    if "observation" not in data:
        raise ConfigError("the [observation] section is required: give theta_true (to simulate x_o) or x")

    sec = _Section("simulator", data["simulator"], allowed=("name", "kwargs"))
    name = sec.string("name", required=True)
    if ":" not in name and name not in simulators.available():
        raise ConfigError(
            f"[simulator] name {name!r} is not a known simulator; available: {', '.join(simulators.available())}"
        )
    simulator = SimulatorConfig(name=name, kwargs=sec.table_value("kwargs"))

    sec = _Section("simulation", data.get("simulation", {}), allowed=("num_simulations", "seed"))
    simulation = SimulationConfig(
        num_simulations=sec.integer("num_simulations", SimulationConfig.num_simulations, minimum=2),
        seed=sec.integer("seed", SimulationConfig.seed, minimum=0),
    )

    sec = _Section(
        "estimator",
        data.get("estimator", {}),
        allowed=(
            "flow",
            "device",
            "hidden_features",
            "num_transforms",
            "num_bins",
            "num_blocks",
            "conditional_affine",
            "embedding",
        ),
    )
    estimator = EstimatorConfig(
        flow=sec.string("flow", EstimatorConfig.flow, choices=FLOWS),
        device=_device(sec),
        hidden_features=sec.integer("hidden_features", minimum=1),
        num_transforms=sec.integer("num_transforms", minimum=1),
        num_bins=sec.integer("num_bins", minimum=1),
        num_blocks=sec.integer("num_blocks", minimum=0),
        conditional_affine=sec.boolean("conditional_affine", None),
        embedding=sec.string("embedding", None, choices=EMBEDDINGS),
    )

    sec = _Section(
        "train",
        data.get("train", {}),
        allowed=("seed", "batch_size", "learning_rate", "max_epochs", "schedule", "validation_fraction", "patience"),
    )
    train = TrainConfig(
        seed=sec.integer("seed", TrainConfig.seed, minimum=0),
        batch_size=sec.integer("batch_size", minimum=1),
        learning_rate=sec.number("learning_rate", low=0.0),
        max_epochs=sec.integer("max_epochs", minimum=1),
        schedule=sec.string("schedule", choices=SCHEDULES),
        validation_fraction=sec.number("validation_fraction", low=0.0, high=1.0),
        patience=sec.integer("patience", minimum=1),
    )

    sec = _Section("observation", data["observation"], allowed=("theta_true", "x", "seed"))
    theta_true = sec.numbers("theta_true")
    if theta_true is not None and any(isinstance(v, list) for v in theta_true):
        raise ConfigError("[observation] theta_true must be a flat array of numbers, one per parameter")
    observation = ObservationConfig(
        theta_true=theta_true, x=sec.numbers("x"), seed=sec.integer("seed", ObservationConfig.seed, minimum=0)
    )
    if observation.theta_true is None and observation.x is None:
        raise ConfigError(
            "[observation] needs theta_true (x_o is then simulated from it) or x (the observed data), or both"
        )

    sec = _Section("posterior", data.get("posterior", {}), allowed=("num_samples", "seed"))
    posterior = PosteriorConfig(
        num_samples=sec.integer("num_samples", PosteriorConfig.num_samples, minimum=1),
        seed=sec.integer("seed", PosteriorConfig.seed, minimum=0),
    )

    sec = _Section("output", data.get("output", {}), allowed=("dir",))
    output = OutputConfig(dir=sec.string("dir", f"runs/{name.rpartition(':')[2] or name}"))

    sec = _Section(
        "reference", data.get("reference", {}), allowed=("mcmc", "num_samples", "seed", "num_walkers", "max_steps")
    )
    reference = ReferenceConfig(
        mcmc=sec.boolean("mcmc", ReferenceConfig.mcmc),
        num_samples=sec.integer("num_samples", ReferenceConfig.num_samples, minimum=1),
        seed=sec.integer("seed", ReferenceConfig.seed, minimum=0),
        num_walkers=sec.integer("num_walkers", minimum=2),
        max_steps=sec.integer("max_steps", ReferenceConfig.max_steps, minimum=1),
    )

    sec = _Section(
        "calibration",
        data.get("calibration", {}),
        allowed=("enabled", "num_tests", "num_posterior_samples", "alpha", "seed"),
    )
    calibration = CalibrationConfig(
        enabled=sec.boolean("enabled", CalibrationConfig.enabled),
        num_tests=sec.integer("num_tests", CalibrationConfig.num_tests, minimum=10),
        num_posterior_samples=sec.integer("num_posterior_samples", CalibrationConfig.num_posterior_samples, minimum=10),
        alpha=sec.number("alpha", CalibrationConfig.alpha),
        seed=sec.integer("seed", CalibrationConfig.seed, minimum=0),
    )
    if not 0.0 < calibration.alpha < 1.0:
        raise ConfigError(f"[calibration] alpha must be in (0, 1), got {calibration.alpha}")

    return RunConfig(
        simulator=simulator,
        simulation=simulation,
        estimator=estimator,
        train=train,
        observation=observation,
        posterior=posterior,
        output=output,
        reference=reference,
        calibration=calibration,
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run configuration.

    Args:
        path: the ``.toml`` file.

    Returns:
        The configuration, with defaults filled in.

    Raises:
        ConfigError: when the file is missing, is not valid TOML (the message gives the
            line and column), or fails validation (see :func:`parse_config`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err})") from None
    return parse_config(data, source=str(path))
