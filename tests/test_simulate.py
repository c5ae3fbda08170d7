"""Tests for sbikit.simulate: seeding, workers, resuming, failures, the CLI, and a SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import sbikit
import simulators
from sbikit.cli import main
from sbikit.emulators.design import DEFAULT_CONCENTRATION
from sbikit.store import DONE, FAILED, PENDING

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
simulate_module = sys.modules["sbikit.simulate"]  # `sbikit.simulate` is the function

N, CHUNK, SEED = 230, 25, 7  # 10 chunks, the last one short (5 rows)


class CountingMoons:
    """two_moons that counts its calls, fails on chosen calls and returns NaN for theta_1 > 0.9."""

    def __init__(self, fail_calls: tuple[int, ...] = (), nan_above: float | None = None) -> None:
        self._sim = simulators.get("two_moons")
        self.prior = self._sim.prior
        self.calls = 0
        self.fail_calls = fail_calls
        self.nan_above = nan_above

    def simulate(self, theta: np.ndarray, seed: int | None = None) -> np.ndarray:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError(f"simulator blew up on call {self.calls}")
        x = self._sim.simulate(theta, seed=seed)
        if self.nan_above is not None:
            x[theta[:, 0] > self.nan_above] = np.nan
        return x


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> sbikit.SimulationStore:
    """An uninterrupted in-process run: the result every other way of running must reproduce."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return sbikit.simulate("two_moons", N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def cluster():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield cluster
    cluster.close()


def assert_same_store(a: sbikit.SimulationStore, b: sbikit.SimulationStore) -> None:
    assert a.complete and b.complete
    assert np.array_equal(a.theta[:], b.theta[:])
    assert np.array_equal(a.x[:], b.x[:])
    assert np.array_equal(a.chunk_nonfinite, b.chunk_nonfinite)


# -- seeding and layout ----------------------------------------------------------------------------
def test_store_layout_and_chunk_seeds(reference):
    sim = simulators.get("two_moons")
    assert reference.theta.shape == (N, 2) and reference.x.shape == (N, 2)
    assert reference.num_chunks == 10 and reference.complete
    assert (reference.chunk_status == DONE).all() and reference.failures == {}
    assert reference.run["seed"] == SEED and reference.run["simulator"] == "simulators.two_moons:TwoMoons"
    # Row i belongs to chunk i // CHUNK and is what that chunk's seeds give, whatever ran it.
    for i in (0, 4, 9):
        rows = reference.chunk_rows(i)
        prior_seed, noise_seed = simulate_module.chunk_seeds(SEED, i)
        theta = sim.prior.sample(rows.stop - rows.start, seed=prior_seed).numpy()
        x = sim.simulate(theta.astype(np.float64), seed=noise_seed).astype(np.float32)
        assert np.array_equal(reference.theta[rows], theta)
        assert np.array_equal(reference.x[rows], x)
    # Different chunks get different parameters.
    assert not np.allclose(reference.theta[0:5], reference.theta[25:30])


def test_local_cluster_by_address_matches_in_process(reference, cluster, tmp_path):
    store = sbikit.simulate(
        "two_moons",
        N,
        store=tmp_path / "s.zarr",
        chunk_size=CHUNK,
        seed=SEED,
        scheduler=cluster.scheduler_address,
        progress=False,
    )
    assert_same_store(store, reference)


def test_simulator_object_is_shipped_to_cluster_workers(reference, cluster, tmp_path):
    client = distributed.Client(cluster)
    try:
        store = sbikit.simulate(
            simulators.get("two_moons"),
            N,
            store=tmp_path / "s.zarr",
            chunk_size=CHUNK,
            seed=SEED,
            scheduler=client,
            progress=False,
        )
    finally:
        client.close()
    assert_same_store(store, reference)


def test_embedded_workers_match_in_process(reference, tmp_path):
    store = sbikit.simulate(
        "two_moons", N, store=tmp_path / "s.zarr", chunk_size=CHUNK, seed=SEED, workers=2, progress=False
    )
    assert_same_store(store, reference)


# -- resuming --------------------------------------------------------------------------------------
def test_rerun_simulates_only_missing_chunks(reference, tmp_path):
    path = tmp_path / "s.zarr"
    sim = CountingMoons()
    sbikit.simulate(sim, N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    assert sim.calls == 10
    status = zarr.open_array(str(path / "chunk_status"), mode="r+")
    status[[2, 7]] = PENDING
    sim.calls = 0
    store = sbikit.simulate(sim, N, store=path, chunk_size=CHUNK, progress=False)  # seed from the store
    assert sim.calls == 2
    assert_same_store(store, reference)
    sim.calls = 0
    sbikit.simulate(sim, N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    assert sim.calls == 0  # complete: nothing to do


def test_partly_written_chunk_is_redone(reference, tmp_path):
    path = tmp_path / "s.zarr"
    sbikit.simulate("two_moons", N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    group = zarr.open_group(str(path), mode="r+")
    # A run killed between writing chunk 3's data and marking it done: data torn, state not done.
    group["x"][75:100] = 123.0
    group["theta"][75:90] = np.nan
    group["chunk_status"][3] = PENDING
    (path / "x" / "c" / "junk.partial").write_bytes(b"torn")  # a temporary file of a killed write
    store = sbikit.simulate("two_moons", N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    assert_same_store(store, reference)
    assert not list(path.rglob("*.partial"))


# -- failures ----------------------------------------------------------------------------------------
def test_exception_and_nan_are_recorded_and_failed_chunks_retried(tmp_path):
    path = tmp_path / "s.zarr"
    sim = CountingMoons(fail_calls=(2, 5), nan_above=0.9)
    store = sbikit.simulate(sim, N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    # In process, call k simulates chunk k - 1.
    assert sim.calls == 10 and not store.complete
    assert list(store.chunk_status) == [DONE, FAILED, DONE, DONE, FAILED, DONE, DONE, DONE, DONE, DONE]
    assert sorted(store.failures) == [1, 4]
    assert "RuntimeError: simulator blew up on call 2" in store.failures[1]
    failed_theta = store.failed_theta()
    assert np.array_equal(failed_theta, np.concatenate([store.theta[25:50], store.theta[100:125]]))
    assert np.isfinite(failed_theta).all()
    assert np.isnan(store.x[25:50]).all()
    # NaN rows are kept and counted per chunk.
    theta = store.theta[:]
    expect_nan = (theta[:, 0] > 0.9) & store.done_mask()
    assert expect_nan.any()
    assert np.array_equal(~store.finite_mask() & store.done_mask(), expect_nan)
    counts = [int(expect_nan[store.chunk_rows(i)].sum()) for i in range(store.num_chunks)]
    assert list(store.chunk_nonfinite) == counts

    # The rerun retries only the failed chunks; they now succeed and the record is cleaned.
    sim.fail_calls, sim.calls = (), 0
    store = sbikit.simulate(sim, N, store=path, chunk_size=CHUNK, progress=False)
    assert sim.calls == 2 and store.complete and store.failures == {}
    assert sbikit.open_store(path).run["seed"] == SEED


def test_estimators_skip_failed_and_pending_rows(tmp_path):
    path = tmp_path / "s.zarr"
    store = sbikit.simulate(CountingMoons(fail_calls=(1,)), N, store=path, chunk_size=CHUNK, seed=SEED, progress=False)
    status = zarr.open_array(str(path / "chunk_status"), mode="r+")
    group = zarr.open_group(str(path), mode="r+")
    status[9] = PENDING
    group["theta"][225:230] = np.nan  # as if chunk 9 had never been written
    group["x"][225:230] = np.nan
    npe = sbikit.NPE(store.run and simulators.get("two_moons").prior, device="cpu", hidden_features=8, num_transforms=1)
    with pytest.warns(UserWarning) as record:
        post = npe.fit(store.theta, store.x, seed=0, max_epochs=1, progress=False)
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped 5 of 230 rows that are not simulated yet" in messages
    assert "dropped 25 of 225 simulations" in messages
    assert post.info["num_simulations"] == N - 30


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": SEED + 1}, "seed"),
        ({"num_simulations": N + 1}, "num_simulations"),
        ({"chunk_size": CHUNK + 1}, "chunk_size"),
        ({"simulator": "gaussian_linear"}, "simulator"),
        ({"simulator_kwargs": {"dim": 2}, "simulator": "gaussian_linear"}, "simulator"),
        ({"dtype": "float64"}, "dtype"),
        ({"edge_fraction": 0.5}, "edge_fraction"),
    ],
)
def test_rerun_with_other_arguments_raises(reference, change, field):
    kwargs = {"simulator": "two_moons", "num_simulations": N, "chunk_size": CHUNK, "seed": SEED} | change
    sim = kwargs.pop("simulator")
    n = kwargs.pop("num_simulations")
    with pytest.raises(ValueError, match=f"holds a different run.*{field}: store has"):
        sbikit.simulate(sim, n, store=reference.path, progress=False, **kwargs)


def test_edge_fraction_draws_each_chunk_from_the_design(tmp_path):
    from sbikit.emulators import edge_weighted_design

    sim, n, chunk = simulators.get("two_moons"), 2000, 500
    store = sbikit.simulate("two_moons", n, chunk_size=chunk, seed=SEED, edge_fraction=0.5, store=tmp_path / "e.zarr")
    prior_store = sbikit.simulate("two_moons", n, chunk_size=chunk, seed=SEED, store=tmp_path / "p.zarr")
    assert store.complete and store.run["edge_fraction"] == 0.5
    assert store.run["edge_concentration"] == DEFAULT_CONCENTRATION and prior_store.run["edge_concentration"] is None
    assert store.theta.attrs["edge_concentration"] == DEFAULT_CONCENTRATION
    for i in (0, 3):
        rows = store.chunk_rows(i)
        prior_seed, noise_seed = simulate_module.chunk_seeds(SEED, i)
        theta = edge_weighted_design(sim.prior, rows.stop - rows.start, edge_fraction=0.5, seed=prior_seed).numpy()
        assert np.array_equal(store.theta[rows], theta)
        assert np.array_equal(store.x[rows], sim.simulate(theta.astype(np.float64), seed=noise_seed).astype(np.float32))

    # The share of coordinates within 5% of a bound: 0.1 for prior draws, 0.1 + 0.5 * 0.187 for
    # this design (its arcsine edge rows: 0.287). Four binomial standard errors of the prior's
    # share over 2 n coordinates are 0.019, well below the difference.
    def near(theta: np.ndarray) -> float:
        u = (theta + 1) / 2
        return float(((u < 0.05) | (u > 0.95)).mean())

    tolerance = 4 * np.sqrt(0.1 * 0.9 / (2 * n))
    assert near(store.theta[:]) > 0.1 + tolerance
    assert abs(near(prior_store.theta[:]) - 0.1) <= tolerance  # negative control


def test_store_without_an_edge_fraction_record_resumes_as_prior_draws(tmp_path):
    path = tmp_path / "old.zarr"
    sbikit.simulate("two_moons", 50, chunk_size=25, seed=3, store=path, progress=False)
    group = zarr.open_group(str(path), mode="a")
    record = dict(group.attrs["sbikit"])
    del record["edge_fraction"]  # as written before the option existed
    group.attrs["sbikit"] = record
    assert sbikit.simulate("two_moons", 50, chunk_size=25, seed=3, store=path, progress=False).complete
    with pytest.raises(ValueError, match="edge_fraction: store has 0.0, this call 0.5"):
        sbikit.simulate("two_moons", 50, chunk_size=25, seed=3, store=path, edge_fraction=0.5, progress=False)


def test_design_store_without_a_concentration_record_resumes_with_the_arcsine_law(tmp_path):
    """Stores simulated before the design's shape was a parameter used the arcsine law (0.5)."""
    from sbikit.emulators import edge_weighted_design

    path = tmp_path / "old_design.zarr"
    kw = {"chunk_size": 25, "seed": 3, "store": path, "progress": False, "edge_fraction": 0.5}
    first = np.array(sbikit.simulate("two_moons", 50, edge_concentration=0.5, **kw).theta[:])  # a copy
    group = zarr.open_group(str(path), mode="a")
    record = dict(group.attrs["sbikit"])
    del record["edge_concentration"]  # as written before the option existed
    group.attrs["sbikit"] = record
    status = group["chunk_status"]
    status[1] = 0  # the second chunk is still to do
    store = sbikit.simulate("two_moons", 50, edge_concentration=0.5, **kw)
    assert store.complete and np.array_equal(store.theta[:], first)
    sim = simulators.get("two_moons")
    prior_seed, _ = simulate_module.chunk_seeds(3, 1)
    arcsine = edge_weighted_design(sim.prior, 25, edge_fraction=0.5, concentration=0.5, seed=prior_seed).numpy()
    assert np.array_equal(store.theta[25:50], arcsine)
    # the default shape is that law too (a chunk redone without naming it is the same again);
    # another one is refused
    group["chunk_status"][0] = 0
    assert np.array_equal(sbikit.simulate("two_moons", 50, **kw).theta[:], first)
    with pytest.raises(ValueError, match="edge_concentration: store has 0.5, this call 0.2"):
        sbikit.simulate("two_moons", 50, edge_concentration=0.2, **kw)


def test_the_design_shape_is_part_of_the_run(tmp_path):
    kw = {"chunk_size": 50, "seed": 1, "progress": False, "edge_fraction": 1.0}
    a = sbikit.simulate("two_moons", 100, store=tmp_path / "a.zarr", edge_concentration=0.2, **kw)
    b = sbikit.simulate("two_moons", 100, store=tmp_path / "b.zarr", edge_concentration=2.0, **kw)
    assert a.run["edge_concentration"] == 0.2 and b.run["edge_concentration"] == 2.0
    assert not np.array_equal(a.theta[:], b.theta[:])
    # Beta(0.2, 0.2) crowds rows to the bounds, Beta(2, 2) keeps them off: the share of the 200
    # coordinates within 5% of a bound is 0.58 against 0.014 (binomial s.e. <= 0.035)
    near = [float((np.abs(s.theta[:]) > 0.9).mean()) for s in (a, b)]
    assert near[0] > 0.4 and near[1] < 0.1
    with pytest.raises(ValueError, match="edge_concentration: store has 0.2, this call 2.0"):
        sbikit.simulate("two_moons", 100, store=tmp_path / "a.zarr", edge_concentration=2.0, **kw)
    with pytest.raises(ValueError, match="concentration must be a finite number > 0"):
        sbikit.simulate("two_moons", 10, store=tmp_path / "c.zarr", edge_concentration=0.0, **kw)
    # with prior draws the shape plays no part and is not recorded
    plain = sbikit.simulate("two_moons", 10, store=tmp_path / "d.zarr", edge_concentration=2.0, progress=False)
    assert plain.run["edge_concentration"] is None


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="num_simulations must be >= 1"):
        sbikit.simulate("two_moons", 0, store=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        sbikit.simulate("two_moons", 10, chunk_size=0, store=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        sbikit.simulate("two_moons", 10, workers=0, store=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="simulator_kwargs apply to a simulator given by name"):
        sbikit.simulate(simulators.get("two_moons"), 10, simulator_kwargs={"dim": 2}, store=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="edge_fraction must be a number in"):
        sbikit.simulate("two_moons", 10, edge_fraction=1.5, store=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="unbounded"):
        sbikit.simulate("gaussian_linear", 10, edge_fraction=0.5, store=tmp_path / "a.zarr")
    with pytest.raises(KeyError, match="unknown simulator 'no_such_sim'"):
        sbikit.simulate("no_such_sim", 10, store=tmp_path / "a.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("a", shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match="other content and no sbikit record"):
        sbikit.simulate("two_moons", 10, store=tmp_path / "other.zarr")


def test_open_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no simulation store at .*create one with sbikit.simulate"):
        sbikit.open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match="not an sbikit simulation store"):
        sbikit.open_store(tmp_path / "plain.zarr")


def test_open_store_reads_back(reference):
    store = sbikit.open_store(reference.path)
    theta, x = store.load()
    assert theta.shape == (N, 2) and x.shape == (N, 2) and x.dtype == np.float32
    chunks = list(store.iter_chunks())
    assert [i for i, _, _ in chunks] == list(range(10))
    assert np.array_equal(np.concatenate([t for _, t, _ in chunks]), theta)
    assert "10 done" in repr(store)


# -- command line ------------------------------------------------------------------------------------
def test_cli_simulate(reference, tmp_path, capsys):
    path = tmp_path / "cli.zarr"
    args = ["simulate", "two_moons", "-n", str(N), "--chunk-size", str(CHUNK), "--quiet", "--store", str(path)]
    assert main([*args, "--seed", str(SEED)]) == 0
    assert "10 done" in capsys.readouterr().out
    assert_same_store(sbikit.open_store(path), reference)
    assert main([*args, "--seed", "1"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    edge = tmp_path / "edge.zarr"
    assert main(["simulate", "two_moons", "-n", "20", "--quiet", "--store", str(edge), "--edge-fraction", "0.5"]) == 0
    assert sbikit.open_store(edge).run["edge_fraction"] == 0.5
    shaped = tmp_path / "shaped.zarr"
    argv = ["simulate", "two_moons", "-n", "20", "--quiet", "--store", str(shaped), "--edge-fraction", "0.5"]
    assert main([*argv, "--edge-concentration", "0.3"]) == 0
    assert sbikit.open_store(shaped).run["edge_concentration"] == 0.3
    capsys.readouterr()
    assert main(["simulate", "gaussian_linear", "-n", "10", "--kwargs", "[1]", "--store", str(tmp_path / "b")]) == 2
    assert "--kwargs must be a JSON object" in capsys.readouterr().err
    assert (
        main(
            [
                "simulate",
                "gaussian_linear",
                "-n",
                "10",
                "--kwargs",
                '{"dim": 3}',
                "--quiet",
                "--store",
                str(tmp_path / "b.zarr"),
            ]
        )
        == 0
    )
    assert sbikit.open_store(tmp_path / "b.zarr").theta.shape == (10, 3)


# -- a kill mid-run -------------------------------------------------------------------------------------
SLOW_SIMULATOR = textwrap.dedent(
    """
    import time

    import simulators


    class SlowMoons:
        calls = 0

        def __init__(self, delay=0.0):
            self._sim = simulators.get("two_moons")
            self.prior = self._sim.prior
            self.delay = delay

        def simulate(self, theta, seed=None):
            SlowMoons.calls += 1
            time.sleep(self.delay)
            return self._sim.simulate(theta, seed=seed)
    """
)


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, monkeypatch):
    (tmp_path / "slowmoons.py").write_text(SLOW_SIMULATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    n, chunk, seed, spec = 60, 3, 5, "slowmoons:SlowMoons"  # 20 chunks of 0.1 s
    path = tmp_path / "killed.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "sbikit",
        "simulate",
        spec,
        "-n",
        str(n),
        "--chunk-size",
        str(chunk),
        "--seed",
        str(seed),
        "--store",
        str(path),
        "--kwargs",
        '{"delay": 0.1}',
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    done = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (path / "chunk_status" / "zarr.json").exists():
                done = int((zarr.open_array(str(path / "chunk_status"), mode="r")[:] == DONE).sum())
                if done >= 4:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    status = zarr.open_array(str(path / "chunk_status"), mode="r")[:]
    assert 4 <= (status == DONE).sum() < 20

    import slowmoons

    slowmoons.SlowMoons.calls = 0
    resumed = sbikit.simulate(spec, n, store=path, chunk_size=chunk, simulator_kwargs={"delay": 0.1}, progress=False)
    assert slowmoons.SlowMoons.calls == int((status != DONE).sum())  # only the missing chunks
    # The delay changes nothing in the numbers, so the uninterrupted reference runs without it.
    fresh = sbikit.simulate(spec, n, store=tmp_path / "fresh.zarr", chunk_size=chunk, seed=seed, progress=False)
    assert_same_store(resumed, fresh)
    assert np.isfinite(resumed.theta[:]).all() and len(np.unique(resumed.theta[:], axis=0)) == n
    assert not list(path.rglob("*.partial"))


def test_npe_refuses_a_design_store_and_nle_takes_it(tmp_path):
    store = sbikit.simulate("two_moons", 300, chunk_size=100, seed=0, edge_fraction=0.5, store=tmp_path / "e.zarr")
    prior = simulators.get("two_moons").prior
    with pytest.raises(ValueError, match="edge_fraction=0.5"):
        sbikit.NPE(prior, device="cpu").fit(store.theta, store.x, max_epochs=1, progress=False)
    # the likelihood, like an emulator, does not depend on where theta was drawn
    sbikit.NLE(prior, device="cpu").fit(store.theta, store.x, max_epochs=1, progress=False)
    # a prior-drawn store trains NPE as before
    plain = sbikit.simulate("two_moons", 300, chunk_size=100, seed=0, store=tmp_path / "p.zarr")
    assert plain.theta.attrs["edge_fraction"] == 0.0
    sbikit.NPE(prior, device="cpu").fit(plain.theta, plain.x, max_epochs=1, progress=False)
