"""Batched, seeded simulation into a resumable zarr store, in one process, local processes or on Dask.

:func:`simulate` splits ``num_simulations`` into chunks of ``chunk_size`` rows. Chunk ``i``
draws its parameters from the prior (or, with ``edge_fraction``, from
:func:`sbikit.emulators.edge_weighted_design`, for an emulator's training set) and simulates
them with seeds spawned from the run's seed (``numpy.random.SeedSequence(seed,
spawn_key=(i,))``), so the result depends on the seed and the chunk size and never on the
number of workers or the order in which chunks finish. Finished chunks are written to the
store (:mod:`sbikit.store`) as they arrive, by the calling process only; a rerun with the
same store simulates only the chunks that are not marked done.

Where the chunks run:

* ``workers=1`` (default), no ``scheduler``: in this process, one chunk after the other.
* ``workers=k > 1``: an embedded Dask ``LocalCluster`` of ``k`` single-threaded worker
  processes, closed at the end. As with any Python code that starts processes, a script
  doing this needs the ``if __name__ == "__main__":`` guard (notebooks do not).
* ``scheduler="tcp://host:port"`` (or a ``distributed.Client``): an existing Dask
  cluster. Its workers must be able to import the simulator (a registry name or a
  ``"package.module:Class"`` path is rebuilt on the worker; a simulator object is
  pickled) and the calling process needs write access to the store.

Failures: an exception raised by the simulator in one chunk (or a worker dying on it) is
recorded in the store with the chunk's parameters (``store.failures``,
``store.failed_theta()``) and the run goes on; a rerun retries failed chunks. Rows whose
``x`` holds NaN or inf are kept and counted per chunk (``store.chunk_nonfinite``); the
estimators drop them with a warning.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sbikit.store import (
    DONE,
    FAILED,
    STORE_FORMAT,
    SimulationStore,
    create_array,
    import_zarr,
    remove_partial_files,
)

__all__ = ["simulate", "chunk_seeds", "simulate_chunk", "DEFAULT_CHUNK_SIZE"]

logger = logging.getLogger(__name__)

#: Rows per chunk when ``chunk_size`` is not given. Fixed (not derived from ``workers``)
#: because the chunk size is part of what the numbers depend on.
DEFAULT_CHUNK_SIZE = 1000

# Chunks in flight per Dask worker thread: enough to keep workers busy, few enough that
# finished results do not pile up in the cluster's memory.
_IN_FLIGHT_PER_THREAD = 2


# -- seeds and the work of one chunk ---------------------------------------------------------------
def chunk_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds ``(prior, noise)`` of chunk ``index`` of a run with seed ``seed``.

    They come from ``SeedSequence(seed, spawn_key=(index,))``, the ``index``-th child of
    ``SeedSequence(seed).spawn``, so they depend on nothing but the run's seed and the index.
    """
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    prior_ss, noise_ss = child.spawn(2)
    # 63 bits: valid for torch.Generator.manual_seed and numpy.random.default_rng alike.
    return int(prior_ss.generate_state(1, np.uint64)[0] >> 1), int(noise_ss.generate_state(1, np.uint64)[0] >> 1)


@functools.lru_cache(maxsize=8)
def _build_named(name: str, kwargs_json: str) -> Any:
    import simulators

    return simulators.get(name, **json.loads(kwargs_json))


def _resolve(spec: Any, kwargs_json: str) -> Any:
    """A registry name or import path -> a (cached) simulator; a simulator object -> itself."""
    return _build_named(spec, kwargs_json) if isinstance(spec, str) else spec


def _chunk_theta(
    sim: Any, num_rows: int, prior_seed: int, edge_fraction: float = 0.0, edge_concentration: float | None = None
) -> np.ndarray:
    if edge_fraction > 0:
        from sbikit.emulators.design import ARCSINE, edge_weighted_design

        # stores written before the shape was recorded used the arcsine law
        shape = ARCSINE if edge_concentration is None else edge_concentration
        theta = edge_weighted_design(
            sim.prior, num_rows, edge_fraction=edge_fraction, concentration=shape, seed=prior_seed
        )
    else:
        theta = sim.prior.sample(num_rows, seed=prior_seed)
    if hasattr(theta, "detach"):
        theta = theta.detach().cpu().numpy()
    theta = np.asarray(theta, dtype=np.float32)
    return theta[:, None] if theta.ndim == 1 else theta


@dataclass
class ChunkResult:
    """What one chunk returns to the process that writes the store.

    Attributes:
        index: the chunk's index.
        theta: ``(m, d)`` float32 parameters (also for a failed chunk).
        x: ``(m, *x_shape)`` simulations, ``None`` when the simulator raised.
        error: the exception and the end of its traceback, ``None`` on success.
        seconds: time spent simulating.
    """

    index: int
    theta: np.ndarray
    x: np.ndarray | None
    error: str | None
    seconds: float


def simulate_chunk(
    spec: Any,
    kwargs_json: str,
    seed: int,
    index: int,
    start: int,
    stop: int,
    *,
    edge_fraction: float = 0.0,
    edge_concentration: float | None = None,
) -> ChunkResult:
    """Simulate chunk ``index`` (rows ``start:stop``) of a run; runs on a worker.

    Args:
        spec: a registry name, a ``"package.module:Class"`` path or a simulator object.
        kwargs_json: JSON of the simulator's keyword arguments (for a name or path).
        seed: the run's seed.
        index: the chunk's index.
        start: first row.
        stop: one past the last row.
        edge_fraction: share of the chunk's rows from
            :func:`sbikit.emulators.edge_weighted_design` (0: prior draws).
        edge_concentration: that design's ``concentration`` (``None``: the arcsine law 0.5).

    Returns:
        A :class:`ChunkResult`; exceptions raised by the simulator are caught and returned.
    """
    began = time.perf_counter()
    sim = _resolve(spec, kwargs_json)
    prior_seed, noise_seed = chunk_seeds(seed, index)
    theta = _chunk_theta(sim, stop - start, prior_seed, edge_fraction, edge_concentration)
    try:
        x = sim.simulate(theta.astype(np.float64), seed=noise_seed)
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape[0] != len(theta):
            raise ValueError(f"the simulator returned {x.shape[0]} rows for {len(theta)} parameter rows")
    except Exception as err:  # recorded in the store, never raised: one bad chunk must not stop the run
        tb = traceback.format_exception(type(err), err, err.__traceback__)
        return ChunkResult(index, theta, None, f"{type(err).__name__}: {err}\n{''.join(tb[-3:])}", 0.0)
    return ChunkResult(index, theta, x, None, time.perf_counter() - began)


# -- the store -------------------------------------------------------------------------------------
def _simulator_identity(sim: Any) -> str:
    cls = type(sim)
    return f"{cls.__module__}:{cls.__qualname__}"


def _open_or_create(
    path: Path, record: dict[str, Any], *, num_chunks: int, chunk_size: int, theta_dim: int
) -> tuple[Any, dict[str, Any]]:
    """Open the store at ``path`` for appending, checking it belongs to this run, or create it."""
    zarr = import_zarr()
    if path.exists() and not path.is_dir():
        raise ValueError(f"store {str(path)!r} exists and is not a folder; pass a new path")
    group = zarr.open_group(str(path), mode="a")
    attrs = dict(group.attrs)
    old = attrs.get("sbikit")
    if old is None:
        if list(group.keys()):
            raise ValueError(
                f"{str(path)!r} is a zarr group with other content and no sbikit record; pass a new store path"
            )
        if record["seed"] is None:
            record["seed"] = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        group.attrs.update({"sbikit": record, "failures": {}})  # the record first, then the arrays
        logger.info("new store %s (seed %d)", path, record["seed"])
    else:
        if record["seed"] is None:
            record["seed"] = old.get("seed")
        keys = (
            "simulator",
            "simulator_kwargs",
            "num_simulations",
            "chunk_size",
            "seed",
            "dtype",
            "edge_fraction",
            "edge_concentration",
        )
        from sbikit.emulators.design import ARCSINE

        # stores written before a key existed hold its default: prior draws, and the arcsine
        # law for a design (the only one before its shape was a parameter)
        defaults: dict[str, Any] = {
            "edge_fraction": 0.0,
            "edge_concentration": ARCSINE if float(old.get("edge_fraction", 0.0) or 0.0) > 0 else None,
        }
        diff = [
            f"{k}: store has {old.get(k, defaults.get(k))!r}, this call {record[k]!r}"
            for k in keys
            if old.get(k, defaults.get(k)) != record[k]
        ]
        if int(old.get("format", 0)) != STORE_FORMAT:
            diff.append(f"format: store has {old.get('format')!r}, this sbikit writes {STORE_FORMAT}")
        if diff:
            raise ValueError(
                f"store {str(path)!r} holds a different run, so its chunks cannot be completed by this call ("
                + "; ".join(diff)
                + "); pass the same arguments to resume it (seed=None takes the store's), or a new store path"
            )
        record = {**defaults, **old}  # keys an old store lacks read as their defaults (not written back)
        logger.info("resuming store %s (seed %d)", path, record["seed"])
    if "theta" not in group:
        create_array(
            group,
            "theta",
            shape=(record["num_simulations"], theta_dim),
            chunks=(chunk_size, theta_dim),
            dtype="float32",
        )
        # on the array itself, so that an estimator given only store.theta can tell (NPE refuses a design)
        group["theta"].attrs["edge_fraction"] = float(record.get("edge_fraction", 0.0))
        group["theta"].attrs["edge_concentration"] = record.get("edge_concentration")
    elif int(group["theta"].shape[1]) != theta_dim:
        raise ValueError(f"store theta has {group['theta'].shape[1]} columns, the prior {theta_dim}")
    if "chunk_status" not in group:
        create_array(group, "chunk_status", shape=(num_chunks,), chunks=(1,), dtype="int8")
    if "chunk_nonfinite" not in group:
        create_array(group, "chunk_nonfinite", shape=(num_chunks,), chunks=(1,), dtype="int32")
    removed = remove_partial_files(path)
    if removed:
        logger.info("removed %d temporary files of an interrupted write", removed)
    return group, record


class _Writer:
    """Writes finished chunks into the store: data first, state last."""

    def __init__(self, group: Any, record: dict[str, Any]) -> None:
        self.group = group
        self.record = record
        self.n = int(record["num_simulations"])
        self.chunk_size = int(record["chunk_size"])
        self.status = group["chunk_status"]
        self.nonfinite = group["chunk_nonfinite"]
        self.failures: dict[str, str] = dict(group.attrs.get("failures", {}))
        self.num_done = self.num_failed = self.num_nonfinite = 0

    def _x_array(self, x: np.ndarray) -> Any:
        shape = tuple(int(s) for s in x.shape[1:])
        if "x" not in self.group:
            create_array(
                self.group, "x", shape=(self.n, *shape), chunks=(self.chunk_size, *shape), dtype=self.record["dtype"]
            )
            self.group.attrs.update({"x_shape": list(shape)})
        arr = self.group["x"]
        if tuple(arr.shape[1:]) != shape:
            raise ValueError(f"the simulator returned x rows of shape {shape}, earlier chunks {tuple(arr.shape[1:])}")
        return arr

    def write(self, res: ChunkResult) -> None:
        i = res.index
        rows = slice(i * self.chunk_size, min(self.n, (i + 1) * self.chunk_size))
        self.group["theta"][rows] = res.theta
        error = res.error
        x_arr = None
        if res.x is not None and error is None:
            try:
                x_arr = self._x_array(res.x)
            except ValueError as err:
                error = f"ValueError: {err}"
        if x_arr is not None and res.x is not None and error is None:
            x = res.x.astype(self.record["dtype"], copy=False)
            bad = int((~np.isfinite(x.reshape(len(x), -1)).all(1)).sum())
            x_arr[rows] = x
            self.nonfinite[i] = bad
            if str(i) in self.failures:  # a retried chunk that now succeeds
                del self.failures[str(i)]
                self.group.attrs.update({"failures": self.failures})
            self.status[i] = DONE  # last: the chunk counts only once all its data are in
            self.num_done += 1
            self.num_nonfinite += bad
            return
        if "x" in self.group:
            self.group["x"][rows] = np.nan
        self.failures[str(i)] = error
        self.group.attrs.update({"failures": self.failures})
        self.status[i] = FAILED
        self.num_failed += 1
        logger.warning("chunk %d (rows %d-%d) failed: %s", i, rows.start, rows.stop - 1, error.splitlines()[0])


# -- executors -------------------------------------------------------------------------------------
Task = tuple[int, int, int]  # index, start, stop


def _run_local(fn: Callable[..., ChunkResult], tasks: Iterable[Task]) -> Iterator[ChunkResult]:
    for index, start, stop in tasks:
        yield fn(index, start, stop)


def _run_dask(
    client: Any, fn: Callable[..., ChunkResult], tasks: list[Task], fallback: Callable[..., ChunkResult]
) -> Iterator[ChunkResult]:
    """Submit chunks to a Dask client, a bounded number at a time, and yield them as they finish."""
    from distributed import as_completed

    threads = max(1, sum(client.nthreads().values()))
    todo = iter(tasks)
    submitted: dict[str, Task] = {}

    def submit(task: Task) -> Any:
        fut = client.submit(fn, *task, pure=False)
        submitted[fut.key] = task
        return fut

    futures = [submit(t) for t in itertools.islice(todo, threads * _IN_FLIGHT_PER_THREAD)]
    pending = as_completed(futures)
    for fut in pending:
        task = submitted.pop(fut.key)
        try:
            res = fut.result()
        except Exception as err:  # the worker died or the task could not run: record it as failed
            res = fallback(*task, error=f"{type(err).__name__}: {err}")
        fut.release()
        yield res
        nxt = next(todo, None)
        if nxt is not None:
            pending.add(submit(nxt))


# -- the entry point ------------------------------------------------------------------------------
def simulate(
    simulator: Any,
    num_simulations: int,
    *,
    store: str | Path = "sims.zarr",
    chunk_size: int | None = None,
    workers: int = 1,
    scheduler: Any = None,
    seed: int | None = None,
    simulator_kwargs: dict[str, Any] | None = None,
    dtype: str = "float32",
    edge_fraction: float = 0.0,
    edge_concentration: float | None = None,
    progress: bool = True,
) -> SimulationStore:
    """Simulate ``num_simulations`` data sets into a resumable zarr store.

    Args:
        simulator: a registry name (``"two_moons"``), an import path
            (``"package.module:Class"``) or a simulator object with ``prior.sample(n, seed=)``
            and ``simulate(theta, seed=)``.
        num_simulations: rows to simulate, ``n``.
        store: folder of the zarr store; an existing store of the same run is completed.
        chunk_size: rows per chunk (the unit of work, of writing and of retrying); default
            :data:`DEFAULT_CHUNK_SIZE`, capped at ``num_simulations``.
        workers: ``1`` runs in this process; ``k > 1`` starts an embedded Dask
            ``LocalCluster`` of ``k`` worker processes. Ignored with ``scheduler``.
        scheduler: address of a running Dask scheduler (``"tcp://host:port"``) or a
            ``distributed.Client``; the chunks then run on that cluster.
        seed: the run's seed; ``None`` draws one for a new store (recorded in it) and takes
            the recorded one when completing an existing store.
        simulator_kwargs: keyword arguments for a simulator given by name or path.
        dtype: storage type of ``x`` (``theta`` is float32, as the priors draw it).
        edge_fraction: ``0`` (default) draws every chunk's parameters from the prior; ``f > 0``
            draws them with :func:`sbikit.emulators.edge_weighted_design` (a share ``f`` of
            the rows crowded toward the prior's bounds): a training set for an EMULATOR,
            which learns ``x | theta`` and gains from rows near the box's faces. Never for
            NPE, whose target depends on ``theta`` being prior draws. Needs a prior with
            finite bounds; recorded in the store.
        edge_concentration: the design's ``concentration`` (the ``Beta(c, c)`` shape of its
            edge rows); ``None`` takes :data:`sbikit.emulators.design.DEFAULT_CONCENTRATION`.
            Recorded in the store (stores written before it resume with the arcsine law, 0.5,
            which they used); ignored when ``edge_fraction`` is 0.
        progress: show a tqdm progress bar (rows simulated).

    Returns:
        The :class:`~sbikit.store.SimulationStore`: ``theta`` ``(n, d)``, ``x``
        ``(n, *x_shape)`` in run order, and the state of each chunk.

    Raises:
        ValueError: for non-positive sizes, an existing store written by a different run
            (simulator, its arguments, ``num_simulations``, ``chunk_size``, ``seed``,
            ``dtype``, ``edge_fraction`` or ``edge_concentration`` differ; the message lists
            what differs), a simulator object together with ``simulator_kwargs``, an
            ``edge_fraction`` outside ``[0, 1]`` or with a prior that is unbounded, or an
            ``edge_concentration`` that is not a positive number.
    """
    n = int(num_simulations)
    if n < 1:
        raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
    cs = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if cs < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cs = min(cs, n)
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if seed is not None and (int(seed) != seed or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    kwargs = dict(simulator_kwargs or {})
    if not isinstance(simulator, str) and kwargs:
        raise ValueError("simulator_kwargs apply to a simulator given by name or import path, not to an object")
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"simulator_kwargs must be JSON-serialisable (they are stored in the store): {err}") from None
    np.dtype(dtype)  # raises TypeError for an unknown dtype

    sim = _resolve(simulator, kwargs_json)
    from sbikit.emulators.design import DEFAULT_CONCENTRATION, check_concentration, check_edge_fraction

    ef = 0.0 if edge_fraction == 0 else check_edge_fraction(sim.prior, edge_fraction)  # any prior for 0
    if edge_concentration is not None:
        check_concentration(edge_concentration)
    ec = None if ef == 0 else float(DEFAULT_CONCENTRATION if edge_concentration is None else edge_concentration)
    identity = _simulator_identity(sim)
    num_chunks = math.ceil(n / cs)
    theta_dim = int(sim.prior.dim) if hasattr(sim.prior, "dim") else int(_chunk_theta(sim, 1, 0).shape[1])
    record = {
        "format": STORE_FORMAT,
        "simulator": identity,
        "simulator_kwargs": kwargs if isinstance(simulator, str) else None,
        "num_simulations": n,
        "chunk_size": cs,
        "seed": None if seed is None else int(seed),
        "dtype": str(np.dtype(dtype)),
        "edge_fraction": ef,
        "edge_concentration": ec,
    }
    path = Path(store)
    group, record = _open_or_create(path, record, num_chunks=num_chunks, chunk_size=cs, theta_dim=theta_dim)
    run_seed = int(record["seed"])
    status = np.asarray(group["chunk_status"][:])
    tasks: list[Task] = [(i, i * cs, min(n, (i + 1) * cs)) for i in range(num_chunks) if status[i] != DONE]
    done_rows = n - sum(stop - start for _, start, stop in tasks)
    logger.info("%s: %d of %d chunks to simulate (%d rows done)", path, len(tasks), num_chunks, done_rows)

    writer = _Writer(group, record)
    ec = record["edge_concentration"]  # an old store's law when resuming one
    fn = functools.partial(simulate_chunk, simulator, kwargs_json, run_seed, edge_fraction=ef, edge_concentration=ec)

    def fallback(index: int, start: int, stop: int, *, error: str) -> ChunkResult:
        theta = _chunk_theta(sim, stop - start, chunk_seeds(run_seed, index)[0], ef, ec)
        return ChunkResult(index, theta, None, error, 0.0)

    began = time.perf_counter()
    bar = tqdm(
        total=n,
        initial=done_rows,
        unit="sim",
        desc=f"simulate {path.name}",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        with _Executor(workers if scheduler is None else None, scheduler, tasks) as client:
            results = _run_local(fn, tasks) if client is None else _run_dask(client, fn, tasks, fallback)
            for res in results:
                writer.write(res)
                bar.update(len(res.theta))
    finally:
        bar.close()
    elapsed = time.perf_counter() - began
    out = SimulationStore(path)
    logger.info(
        "%s: simulated %d chunks in %.1f s (%d failed, %d rows with NaN/inf x); %s",
        path,
        writer.num_done + writer.num_failed,
        elapsed,
        writer.num_failed,
        writer.num_nonfinite,
        out.summary(),
    )
    if out.failures:
        logger.warning(
            "%d chunk(s) of %s failed (store.failures has the errors, store.failed_theta() the parameters); "
            "rerun sbikit.simulate with the same store to retry them",
            len(out.failures),
            path,
        )
    return out


class _Executor:
    """Context manager giving ``None`` (run here), or a Dask client (embedded cluster or existing scheduler)."""

    def __init__(self, workers: int | None, scheduler: Any, tasks: list[Task]) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self.tasks = tasks
        self._cluster: Any = None
        self._client: Any = None
        self._owns_client = False

    def __enter__(self) -> Any:
        if not self.tasks or (self.scheduler is None and self.workers == 1):
            return None
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("workers > 1 and scheduler= need dask.distributed; `pip install sbikit[dask]`") from err
        if self.scheduler is None:
            n = min(int(self.workers or 1), len(self.tasks))
            logger.info("starting a local Dask cluster of %d worker processes", n)
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
            self._client = Client(self._cluster)
            self._owns_client = True
        elif isinstance(self.scheduler, str):
            self._client = Client(self.scheduler)
            self._owns_client = True
        else:
            self._client = self.scheduler  # a distributed.Client the caller manages
        return self._client

    def __exit__(self, *exc: object) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
