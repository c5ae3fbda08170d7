"""The ``sbikit`` command line.

``sbikit run CONFIG.toml [--out DIR] [--quiet]`` runs neural posterior estimation end to
end from a TOML file (the format is documented in :mod:`sbikit.config`): it simulates a
seeded training set, trains :class:`sbikit.NPE`, builds the observation ``x_o``, samples
the posterior and writes into the output folder:

* ``samples.npz``: ``samples`` ``(num_samples, d)``, ``x_o`` ``x_shape``, ``theta_names``
  ``(d,)`` and, when known, ``theta_true`` ``(d,)``;
* ``corner.png`` (true parameters marked) and ``loss.png`` (training curves);
* ``posterior.pt``: the posterior, for :func:`sbikit.load`;
* ``summary.json``: timings, epochs, losses, posterior mean and std per parameter, how
  typical ``x_o`` is among the training simulations (``observation_check``: the p-value of
  ``posterior.check_observation``), and the configuration used (defaults filled in);
* ``config.toml``: a copy of the configuration file;
* with ``[reference] mcmc = true`` (simulators with an exact likelihood only): an emcee
  reference posterior for ``x_o`` (:func:`sbikit.mcmc.reference_posterior`) in
  ``reference_samples.npz`` (``samples``, ``tau``, ``ess``, ``acceptance_fraction``),
  the comparison of NPE against it (:func:`sbikit.compare`) in ``comparison.json`` and
  ``comparison.md``, and both posteriors with the truth in ``overlay.png``.

``sbikit simulate SIMULATOR -n NUM [--store sims.zarr] [--chunk-size ROWS] [--workers K]
[--scheduler tcp://host:port] [--seed S] [--edge-fraction F] [--edge-concentration C]``
simulates into a resumable zarr store (:func:`sbikit.simulate`); rerunning it completes an
interrupted store.

``sbikit simulators`` lists the bundled simulators. ``python -m sbikit`` is the same as
``sbikit``. Exit codes: 0 on success, 2 for a bad command line or configuration (with a
message on stderr naming the problem), 1 when the run itself fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbikit import __version__
from sbikit.config import ConfigError, RunConfig, load_config

__all__ = ["main", "run", "list_simulators"]

logger = logging.getLogger(__name__)

#: Output files of ``sbikit run``.
OUTPUT_FILES = (
    "samples.npz",
    "corner.png",
    "loss.png",
    "posterior.pt",
    "summary.json",
    "config.toml",
    "reference_samples.npz",
    "comparison.json",
    "comparison.md",
    "overlay.png",
    "sbc_ranks.png",
    "coverage.png",
    "tarp.png",
    "calibration.json",
    "calibration.txt",
)


# -- validation against the simulator ------------------------------------------------------
def _build_simulator(cfg: RunConfig) -> Any:
    import simulators

    try:
        return simulators.get(cfg.simulator.name, **cfg.simulator.kwargs)
    except ImportError as err:
        raise ConfigError(f"[simulator] name {cfg.simulator.name!r} could not be imported: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"[simulator] kwargs = {cfg.simulator.kwargs!r} rejected by {cfg.simulator.name}: {err}"
        ) from None


def _check_theta_true(cfg: RunConfig, sim: Any) -> np.ndarray | None:
    """``theta_true`` as float64 ``(d,)``, checked for length and prior support."""
    if cfg.observation.theta_true is None:
        return None
    theta = np.asarray(cfg.observation.theta_true, dtype=np.float64)
    names = list(sim.theta_names)
    if theta.shape != (sim.prior.dim,):
        raise ConfigError(
            f"[observation] theta_true has {theta.size} values but {cfg.simulator.name} has {sim.prior.dim} "
            f"parameters ({', '.join(names)})"
        )
    if not bool(sim.prior.in_support(torch.as_tensor(theta, dtype=torch.float32)[None])[0]):
        low, high = sim.prior.low.tolist(), sim.prior.high.tolist()
        bad = [
            f"{names[i]} = {theta[i]:g} (support {low[i]:g} < {names[i]} < {high[i]:g})"
            for i in range(len(theta))
            if not low[i] < theta[i] < high[i]
        ]
        detail = "; ".join(bad) if bad else f"the prior {sim.prior!r} gives it zero density"
        raise ConfigError(f"[observation] theta_true lies outside the prior support: {detail}")
    return theta


def _check_x(cfg: RunConfig, sim: Any) -> np.ndarray | None:
    """The given ``x`` as float64 ``x_shape``, checked against the simulator."""
    if cfg.observation.x is None:
        return None
    try:
        x = np.asarray(cfg.observation.x, dtype=np.float64)
    except ValueError:
        raise ConfigError("[observation] x must be a rectangular (not ragged) array of numbers") from None
    expected = tuple(sim.x_shape)
    if x.shape != expected:
        raise ConfigError(
            f"[observation] x has shape {x.shape} but {cfg.simulator.name} produces x of shape {expected}"
        )
    return x


def _check_device(cfg: RunConfig) -> None:
    from sbikit.utils import resolve_device

    try:
        resolve_device(cfg.estimator.device)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"[estimator] device: {err}") from None


def _check_reference(cfg: RunConfig, sim: Any) -> None:
    """``[reference] mcmc = true`` needs an exact likelihood and a valid ensemble size."""
    if not cfg.reference.mcmc:
        return
    from sbikit.mcmc import has_likelihood

    if not has_likelihood(sim):
        raise ConfigError(
            f"[reference] mcmc = true needs a simulator with an exact log_likelihood(theta, x), and "
            f"{cfg.simulator.name} has none; remove the [reference] section or set mcmc = false"
        )
    walkers = cfg.reference.num_walkers
    d = sim.prior.dim
    if walkers is not None and (walkers < 2 * d or walkers % 2):
        raise ConfigError(f"[reference] num_walkers must be even and >= 2 d = {2 * d}, got {walkers}")


def _reference_outputs(
    cfg: RunConfig, sim: Any, x_o: np.ndarray, samples: np.ndarray, theta_true: np.ndarray | None, out: Path
) -> dict[str, Any]:
    """Run the emcee reference, compare NPE with it and write the files; returns the summary entry."""
    from sbikit import plots
    from sbikit.compare import compare
    from sbikit.mcmc import reference_posterior

    names = list(sim.theta_names)
    rc = cfg.reference
    logger.info("running the emcee reference posterior (%d samples)", rc.num_samples)
    start = time.perf_counter()
    ref = reference_posterior(
        sim, x_o, num_samples=rc.num_samples, seed=rc.seed, num_walkers=rc.num_walkers, max_steps=rc.max_steps
    )
    reference_time = time.perf_counter() - start
    ref_np = ref.samples.numpy()
    np.savez(
        out / "reference_samples.npz",
        samples=ref_np,
        x_o=x_o,
        theta_names=np.array(names),
        tau=ref.tau,
        ess=ref.ess,
        acceptance_fraction=np.array(ref.acceptance_fraction),
    )
    label = f"NPE ({cfg.estimator.flow})"
    comparison = compare(samples, ref_np, labels=names, name=label, seed=cfg.posterior.seed)
    diagnostics = {**ref.summary(), "time_s": reference_time}
    (out / "comparison.json").write_text(
        json.dumps({"comparison": comparison.to_dict(), "reference": diagnostics}, indent=2, allow_nan=False) + "\n"
    )
    text = (
        f"# {cfg.simulator.name}: {label} against the emcee reference\n\n{comparison.to_markdown()}\n\n"
        f"Reference: {ref.num_walkers} walkers x {ref.num_steps} steps, burn-in {ref.burn_in}, thin {ref.thin}, "
        f"acceptance {ref.acceptance_fraction:.2f}, max tau {float(ref.tau.max()):.1f}, "
        f"min ESS {float(ref.ess.min()):.0f}\n"
    )
    (out / "comparison.md").write_text(text)
    plots.corner_overlay(
        [samples, ref_np],
        [label, "emcee reference"],
        truth=theta_true,
        labels=names,
        path=out / "overlay.png",
        title=f"{cfg.simulator.name}: {label} vs emcee",
    )
    logger.info("reference done in %.1f s; C2ST of NPE against it: %.3f", reference_time, comparison.c2st)
    return {"c2st": comparison.c2st, **comparison.to_dict(), "mcmc": diagnostics}


def _simulation_seeds(seed: int) -> tuple[int, int]:
    """Two independent seeds (prior draws, simulator noise) derived from one."""
    children = np.random.SeedSequence(seed).spawn(2)
    return int(children[0].generate_state(1)[0]), int(children[1].generate_state(1)[0])


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# -- the run -----------------------------------------------------------------------------------
def run(cfg: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Carry out one configured NPE run and write its files.

    Args:
        cfg: the configuration (see :mod:`sbikit.config`).
        out_dir: output folder; default ``cfg.output.dir``.
        progress: show a training progress bar.

    Returns:
        The path of ``summary.json``.

    Raises:
        ConfigError: when the configuration does not fit the simulator (wrong ``theta_true``
            length, ``theta_true`` outside the prior, ``x`` of the wrong shape, bad
            simulator keyword arguments, an unavailable device). These are checked before
            any simulation or training.
    """
    import sbikit
    from sbikit import plots

    out = Path(out_dir if out_dir is not None else cfg.output.dir)
    try:
        sim = _build_simulator(cfg)
        theta_true = _check_theta_true(cfg, sim)
        x_given = _check_x(cfg, sim)
        _check_device(cfg)
        _check_reference(cfg, sim)
    except ConfigError as err:
        if cfg.source is None:
            raise
        raise ConfigError(f"{cfg.source}: {err}") from None
    names = list(sim.theta_names)

    out.mkdir(parents=True, exist_ok=True)
    logger.info("run %s -> %s", cfg.source or "config", out)

    # Training set.
    n = cfg.simulation.num_simulations
    prior_seed, noise_seed = _simulation_seeds(cfg.simulation.seed)
    logger.info("simulating %d data sets with %s", n, cfg.simulator.name)
    start = time.perf_counter()
    theta = sim.prior.sample(n, seed=prior_seed)
    x = sim.simulate(theta, seed=noise_seed)
    simulate_time = time.perf_counter() - start
    logger.info("simulated %d data sets in %.2f s", n, simulate_time)

    # Training.
    npe_kwargs = cfg.estimator.npe_kwargs()
    estimator = sbikit.NPE(sim.prior, theta_names=names, **npe_kwargs)
    logger.info("training NPE (%s) on %s", cfg.estimator.flow, estimator.device)
    posterior = estimator.fit(theta, x, progress=progress, **cfg.train.fit_kwargs())
    info = posterior.info  # fit has logged epochs, time and the best validation loss

    # Observation and posterior samples.
    if x_given is not None:
        x_o = x_given
        logger.info("using the given observation x")
    else:
        assert theta_true is not None  # the config guarantees one of the two
        x_o = np.asarray(sim.simulate(theta_true, seed=cfg.observation.seed), dtype=np.float64)
        logger.info("simulated x_o from theta_true = %s (seed %d)", theta_true.tolist(), cfg.observation.seed)
    num_samples = cfg.posterior.num_samples
    logger.info("drawing %d posterior samples", num_samples)
    start = time.perf_counter()
    samples = posterior.sample(num_samples, x=x_o, seed=cfg.posterior.seed)
    sample_time = time.perf_counter() - start
    samples_np = samples.numpy()
    observation_check = None
    if posterior.typicality is not None:
        check = posterior.check_observation(x_o)
        observation_check = {"p_value": float(check.p_value[0]), "typical_at_0.05": bool(check.typical[0])}
        logger.info("observation check: %s", check)

    # Files.
    arrays: dict[str, np.ndarray] = {"samples": samples_np, "x_o": x_o, "theta_names": np.array(names)}
    if theta_true is not None:
        arrays["theta_true"] = theta_true
    np.savez(out / "samples.npz", **arrays)
    plots.corner_plot(
        samples_np,
        truth=theta_true,
        labels=names,
        path=out / "corner.png",
        title=f"{cfg.simulator.name}: NPE ({cfg.estimator.flow}), {n} simulations",
    )
    plots.loss_plot(info, path=out / "loss.png")
    posterior.save(out / "posterior.pt")
    if cfg.source is not None:
        src, dst = Path(cfg.source), out / "config.toml"
        if not (dst.exists() and src.resolve() == dst.resolve()):
            shutil.copyfile(src, dst)

    reference = _reference_outputs(cfg, sim, x_o, samples_np, theta_true, out) if cfg.reference.mcmc else None
    calibration = _calibration_outputs(cfg, sim, posterior, out) if cfg.calibration.enabled else None

    train_loss = info.get("train_loss") or [None]
    val_loss = info.get("val_loss") or [None]
    mean = samples_np.mean(axis=0)
    std = samples_np.std(axis=0, ddof=1) if num_samples > 1 else np.zeros(len(names))
    used = cfg.to_dict()
    used["output"]["dir"] = str(out)
    summary = {
        "sbikit_version": __version__,
        "simulator": cfg.simulator.name,
        "theta_names": names,
        "theta_true": None if theta_true is None else theta_true.tolist(),
        "num_simulations": n,
        "num_training_pairs": info.get("num_simulations"),
        "flow": posterior.flow.config.kind,  # what "auto" resolved to
        "device": str(posterior.device),
        "simulate_time": simulate_time,
        "train_time": info.get("train_time"),
        "sample_time": sample_time,
        "epochs": info.get("epochs"),
        "best_epoch": info.get("best_epoch"),
        "stopped_early": info.get("stopped_early"),
        "best_val_loss": _finite_or_none(info.get("best_val_loss")),
        "final_train_loss": _finite_or_none(train_loss[-1]),
        "final_val_loss": _finite_or_none(val_loss[-1]),
        "num_samples": num_samples,
        "posterior_mean": {name: float(m) for name, m in zip(names, mean, strict=True)},
        "posterior_std": {name: float(s) for name, s in zip(names, std, strict=True)},
        "observation_check": observation_check,
        "reference": reference,
        "calibration": calibration,
        "files": [f for f in OUTPUT_FILES if f == "summary.json" or (out / f).exists()],
        "config": used,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", ", ".join(summary["files"]))
    return summary_path


def _calibration_outputs(cfg: RunConfig, sim: Any, posterior: Any, out: Path) -> dict[str, Any]:
    """Run SBC, coverage and TARP on fresh simulations and write their figures; returns the summary entry."""
    from sbikit.diagnostics.report import calibration_report

    cc = cfg.calibration
    logger.info("calibration checks on %d test simulations x %d samples", cc.num_tests, cc.num_posterior_samples)
    start = time.perf_counter()
    result = calibration_report(
        posterior,
        sim,
        num_tests=cc.num_tests,
        num_posterior_samples=cc.num_posterior_samples,
        seed=cc.seed,
        out_dir=out,
        alpha=cc.alpha,
    )
    elapsed = time.perf_counter() - start
    passed = bool(result.passed)
    (logger.info if passed else logger.warning)(
        "calibration %s (%.1f s); details in %s", "passed" if passed else "FAILED", elapsed, out / "calibration.txt"
    )
    return {"passed": passed, "time_s": elapsed, "num_tests": cc.num_tests, "alpha": cc.alpha}


# -- simulators ---------------------------------------------------------------------------------
def list_simulators() -> list[dict[str, Any]]:
    """Name, parameter names, ``x_shape`` and one-line description of every bundled simulator."""
    import simulators

    rows = []
    for name in simulators.available():
        sim = simulators.get(name)
        doc = (type(sim).__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "theta_names": list(sim.theta_names),
                "x_shape": tuple(sim.x_shape),
                "description": doc[0] if doc else "",
            }
        )
    return rows


def _format_simulators(rows: list[dict[str, Any]]) -> str:
    header = ("name", "d", "x_shape", "parameters")
    table = [(r["name"], str(len(r["theta_names"])), str(r["x_shape"]), ", ".join(r["theta_names"])) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths, strict=True)) + "  " + header[-1]]
    for t in table:
        lines.append("  ".join(v.ljust(w) for v, w in zip(t[:-1], widths, strict=True)) + "  " + t[-1])
    return "\n".join(lines)


# -- entry point ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbikit",
        description="Simulation-based inference with normalizing flows.",
    )
    parser.add_argument("--version", action="version", version=f"sbikit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_run = sub.add_parser(
        "run",
        help="simulate, train NPE and sample the posterior, as a TOML config says",
        description="Run neural posterior estimation end to end from a TOML config "
        "(format: see the sbikit.config module docstring).",
    )
    p_run.add_argument("config", metavar="CONFIG.toml", help="the run configuration")
    p_run.add_argument("--out", metavar="DIR", help="output folder (overrides [output] dir)")
    p_run.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress bar")
    p_run.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: torch's choice); 1 is often fastest for small flows on a busy machine",
    )

    sub.add_parser("simulators", help="list the bundled simulators", description="List the bundled simulators.")

    p_sim = sub.add_parser(
        "simulate",
        help="simulate into a resumable zarr store (locally or on a Dask cluster)",
        description="Simulate NUM data sets into a zarr store, chunk by chunk. Rerunning the same command "
        "completes an interrupted store; failed chunks are retried. Exit code 1 when chunks failed.",
    )
    p_sim.add_argument("simulator", help="a bundled simulator name or an import path 'package.module:Class'")
    p_sim.add_argument("-n", "--num-simulations", type=int, required=True, metavar="NUM", help="rows to simulate")
    p_sim.add_argument("--store", default="sims.zarr", metavar="PATH", help="the zarr store (default: sims.zarr)")
    p_sim.add_argument("--chunk-size", type=int, metavar="ROWS", help="rows per chunk (default: 1000)")
    p_sim.add_argument("--workers", type=int, default=1, metavar="K", help="local worker processes (default: 1)")
    p_sim.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    p_sim.add_argument("--seed", type=int, help="the run's seed (default: drawn, and recorded in the store)")
    p_sim.add_argument(
        "--kwargs", default="{}", metavar="JSON", help="simulator keyword arguments as JSON, e.g. '{\"dim\": 5}'"
    )
    p_sim.add_argument("--dtype", default="float32", help="storage type of x (default: float32)")
    p_sim.add_argument(
        "--edge-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of rows drawn toward the prior's bounds, for an emulator's training set (default: 0, prior)",
    )
    p_sim.add_argument(
        "--edge-concentration",
        type=float,
        default=None,
        metavar="C",
        help="Beta(C, C) shape of those rows (default: 0.5, the arcsine law)",
    )
    p_sim.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress bar")
    return parser


def _simulate_command(args: argparse.Namespace) -> int:
    """``sbikit simulate``: returns the exit code."""
    from sbikit.simulate import simulate

    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        print(f"sbikit: error: --kwargs must be a JSON object such as '{{\"dim\": 5}}': {err}", file=sys.stderr)
        return 2
    try:
        store = simulate(
            args.simulator,
            args.num_simulations,
            store=args.store,
            chunk_size=args.chunk_size,
            workers=args.workers,
            scheduler=args.scheduler,
            seed=args.seed,
            simulator_kwargs=kwargs,
            dtype=args.dtype,
            edge_fraction=args.edge_fraction,
            edge_concentration=args.edge_concentration,
            progress=not args.quiet,
        )
    except (ValueError, KeyError, ImportError, TypeError) as err:
        print(f"sbikit: error: {err}", file=sys.stderr)
        return 2
    print(store)
    return 0 if store.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sbikit`` command line.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for a bad command line or configuration, 1 when
        the run fails.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version (0) and usage errors (2)
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2

    if args.command == "simulators":
        print(_format_simulators(list_simulators()))
        return 0

    if args.command == "simulate":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s sbikit: %(message)s", datefmt="%H:%M:%S"))
        root = logging.getLogger("sbikit")
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.WARNING if args.quiet else logging.INFO)
        try:
            return _simulate_command(args)
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)

    if args.threads is not None and args.threads < 1:
        print(f"sbikit: error: --threads must be a positive integer, got {args.threads}", file=sys.stderr)
        return 2

    # Log to stderr for this call only; library code just emits records.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s sbikit: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("sbikit")
    old_level, old_threads = root.level, torch.get_num_threads()
    root.addHandler(handler)
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config)
        summary = run(cfg, args.out, progress=not args.quiet)
    except ConfigError as err:
        print(f"sbikit: config error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # report it, then fail with exit code 1
        logger.exception("run failed: %s", err)
        return 1
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        torch.set_num_threads(old_threads)
    print(summary)
    return 0
