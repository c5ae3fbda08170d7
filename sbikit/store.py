"""The simulation store: a zarr group holding ``theta``, ``x`` and the state of every chunk.

:func:`sbikit.simulate` writes it; :func:`open_store` reads it back. Layout of a store
with ``n`` simulations in chunks of ``c`` rows (``k = ceil(n / c)`` chunks)::

    theta          float32 (n, d)          chunk i holds rows [i c, min(n, (i + 1) c))
    x              dtype   (n, *x_shape)   NaN where a chunk is missing or failed
    chunk_status   int8    (k,)            0 pending, 1 done, 2 failed (one file per chunk)
    chunk_nonfinite int32  (k,)            rows of the chunk whose x holds NaN or inf
    attrs["sbikit"]        the run: simulator, kwargs, num_simulations, chunk_size, seed, dtype
    attrs["failures"]      {chunk index: the simulator's error message}

Every data chunk is one zarr chunk, so chunks never share a file. A chunk's data are
written first and its status last (zarr writes each file to a temporary name and renames
it), so a killed run leaves every chunk either marked done with all its data, or not
marked done and redone by the next run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SimulationStore", "open_store", "PENDING", "DONE", "FAILED", "STORE_FORMAT"]

logger = logging.getLogger(__name__)

#: Chunk states in ``chunk_status``.
PENDING, DONE, FAILED = 0, 1, 2
_STATE_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

#: Version of the layout above, stored in ``attrs["sbikit"]["format"]``.
STORE_FORMAT = 1


def import_zarr() -> Any:
    """Import zarr, or say how to install it."""
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "simulation stores need zarr >= 3 (Python >= 3.11); install it with `pip install sbikit[dask]`"
        ) from err
    if int(zarr.__version__.split(".")[0]) < 3:  # pragma: no cover - depends on the environment
        raise ImportError(f"simulation stores need zarr >= 3, found {zarr.__version__}; `pip install -U zarr`")
    return zarr


def create_array(group: Any, name: str, *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    """Create (or replace) an array in a zarr group, filled with NaN (floats) or 0 (integers)."""
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, overwrite=True)


def remove_partial_files(path: Path) -> int:
    """Delete temporary files that a killed zarr write left behind; returns how many."""
    count = 0
    for tmp in path.rglob("*.partial"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


class SimulationStore:
    """Read access to a simulation store written by :func:`sbikit.simulate`.

    Attributes:
        path: the store's folder.
        run: the run's record (``simulator``, ``simulator_kwargs``, ``num_simulations``,
            ``chunk_size``, ``seed``, ``dtype``).
        theta: the zarr array of parameters ``(n, d)`` (float32); index it or pass it to
            ``NPE.fit``/``NLE.fit``, which read it in chunks when it is large.
        x: the zarr array of simulations ``(n, *x_shape)``; rows of failed or missing
            chunks hold NaN.
    """

    def __init__(self, path: str | Path) -> None:
        zarr = import_zarr()
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(
                f"no simulation store at {str(self.path)!r}; create one with sbikit.simulate(..., store=path) "
                "or `sbikit simulate`"
            )
        try:
            self._group = zarr.open_group(str(self.path), mode="r")
        except Exception as err:  # zarr raises several types for a folder that is not a group
            raise ValueError(f"{str(self.path)!r} is not a zarr group: {err}") from None
        attrs = dict(self._group.attrs)
        if "sbikit" not in attrs:
            raise ValueError(
                f"{str(self.path)!r} is a zarr group but not an sbikit simulation store (no 'sbikit' attribute)"
            )
        self.run: dict[str, Any] = dict(attrs["sbikit"])
        self._failures: dict[str, str] = dict(attrs.get("failures", {}))
        self.theta = self._group["theta"]

    # -- arrays ---------------------------------------------------------------------------
    @property
    def x(self) -> Any:
        """The zarr array ``x`` ``(n, *x_shape)``; it exists once one chunk has succeeded."""
        if "x" not in self._group:
            raise ValueError(
                f"store {str(self.path)!r} has no x yet: no chunk has been simulated successfully "
                f"({self.summary()}); rerun sbikit.simulate with the same store"
            )
        return self._group["x"]

    @property
    def num_simulations(self) -> int:
        return int(self.run["num_simulations"])

    @property
    def chunk_size(self) -> int:
        return int(self.run["chunk_size"])

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_simulations / self.chunk_size)

    def chunk_rows(self, index: int) -> slice:
        """The rows of chunk ``index``."""
        return slice(index * self.chunk_size, min(self.num_simulations, (index + 1) * self.chunk_size))

    # -- chunk states ------------------------------------------------------------------------
    @property
    def chunk_status(self) -> np.ndarray:
        """``(num_chunks,)`` int8: 0 pending, 1 done, 2 failed."""
        return np.asarray(self._group["chunk_status"][:])

    @property
    def chunk_nonfinite(self) -> np.ndarray:
        """``(num_chunks,)`` int: rows of each done chunk whose ``x`` holds NaN or inf."""
        return np.asarray(self._group["chunk_nonfinite"][:])

    @property
    def complete(self) -> bool:
        """Whether every chunk is done (none pending, none failed)."""
        return bool((self.chunk_status == DONE).all())

    @property
    def failures(self) -> dict[int, str]:
        """``{chunk index: error message}`` of the chunks whose simulation raised."""
        status = self.chunk_status
        return {int(k): v for k, v in self._failures.items() if status[int(k)] == FAILED}

    def failed_theta(self) -> np.ndarray:
        """Parameters ``(m, d)`` of all rows in failed chunks, for debugging the simulator."""
        rows = [np.asarray(self.theta[self.chunk_rows(i)]) for i in sorted(self.failures)]
        d = int(self.theta.shape[1])
        return np.concatenate(rows) if rows else np.zeros((0, d), dtype=np.float32)

    def done_mask(self) -> np.ndarray:
        """``(n,)`` bool: rows that belong to done chunks."""
        return np.repeat(self.chunk_status == DONE, self.chunk_size)[: self.num_simulations]

    def finite_mask(self) -> np.ndarray:
        """``(n,)`` bool: rows of done chunks whose ``x`` is finite (reads ``x`` chunk by chunk)."""
        mask = self.done_mask()
        for i, status in enumerate(self.chunk_status):
            if status == DONE and self.chunk_nonfinite[i] > 0:
                rows = self.chunk_rows(i)
                block = np.asarray(self.x[rows])
                mask[rows] = np.isfinite(block.reshape(len(block), -1)).all(1)
        return mask

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(index, theta (m, d), x (m, *x_shape))`` for every done chunk, in order."""
        for i, status in enumerate(self.chunk_status):
            if status == DONE:
                rows = self.chunk_rows(i)
                yield i, np.asarray(self.theta[rows]), np.asarray(self.x[rows])

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows of done chunks in memory: ``theta`` ``(m, d)`` and ``x`` ``(m, *x_shape)``.

        Rows whose ``x`` holds NaN (a simulator's NaN output) are kept; the estimators drop
        them with a warning that counts them.
        """
        mask = self.done_mask()
        theta = np.asarray(self.theta[:])[mask]
        x = np.asarray(self.x[:])[mask]
        return theta, x

    def summary(self) -> str:
        status = self.chunk_status
        counts = ", ".join(f"{int((status == s).sum())} {name}" for s, name in _STATE_NAMES.items())
        nonfinite = int(self.chunk_nonfinite[status == DONE].sum())
        return f"{self.num_chunks} chunks of {self.chunk_size}: {counts}; {nonfinite} rows with NaN/inf x"

    def __repr__(self) -> str:
        return (
            f"SimulationStore({str(self.path)!r}, simulator={self.run.get('simulator')!r}, "
            f"num_simulations={self.num_simulations}, seed={self.run.get('seed')}; {self.summary()})"
        )


def open_store(path: str | Path) -> SimulationStore:
    """Open a simulation store written by :func:`sbikit.simulate` (read only).

    Args:
        path: the store's folder, e.g. ``"sims.zarr"``.

    Returns:
        A :class:`SimulationStore`; ``store.theta`` ``(n, d)`` and ``store.x``
        ``(n, *x_shape)`` are zarr arrays in the run's order, ``store.chunk_status`` and
        ``store.failures`` say what is done and what failed.

    Raises:
        FileNotFoundError: when there is no store at ``path``.
        ValueError: when ``path`` is not an sbikit simulation store.
    """
    return SimulationStore(path)
