# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Scaling out: a Dask cluster, a resumable store, training from disk
#
# Simulations are the expensive part of simulation-based inference. This tutorial
#
# 1. starts a small Dask cluster on this machine (a scheduler and two worker processes),
# 2. runs `sbikit.simulate` on it into a zarr store, chunk by chunk,
# 3. interrupts a run and completes it: only the missing chunks are simulated, and the
#    result is identical to an uninterrupted run,
# 4. trains NPE straight from the store, streaming shuffled chunk-batches from disk,
#    with a checkpoint every epoch, and resumes that training.
#
# Set `SBIKIT_FAST=1` to run with tiny budgets (a few seconds of simulation); figures go
# to `$SBIKIT_TUTORIAL_OUT` (default `tutorial_outputs/`).

# %%
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from distributed import Client

import sbikit
import simulators
from sbikit.plots import corner_plot, loss_plot

FAST = os.environ.get("SBIKIT_FAST", "0") == "1"
OUT = Path(os.environ.get("SBIKIT_TUTORIAL_OUT", "tutorial_outputs"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = OUT / "scaling"
shutil.rmtree(WORK, ignore_errors=True)  # start from scratch every time the tutorial runs
WORK.mkdir()

NUM_SIMULATIONS = 4_000 if FAST else 100_000
CHUNK_SIZE = 400 if FAST else 5_000
MAX_EPOCHS = 4 if FAST else 60
print(f"fast mode: {FAST}; writing to {OUT.resolve()}")

# %% [markdown]
# ## 1. A Dask cluster on this machine
#
# On a real cluster the scheduler and the workers are started by your job system (for
# example with `dask-jobqueue` on SLURM); you only need the scheduler's address. Here we
# start them ourselves as two command-line processes. `--scheduler-file` makes the
# scheduler write its address to a file that the workers and we read.
#
# (In a notebook, `distributed.LocalCluster(n_workers=2)` does the same in one line. In a
# script it needs the `if __name__ == "__main__":` guard, because its worker processes
# re-import the script; so does `sbikit.simulate(..., workers=2)`, which starts such a
# cluster for you.)

# %%
scheduler_file = WORK / "scheduler.json"
env = dict(os.environ, OMP_NUM_THREADS="1")
common = ["--scheduler-file", str(scheduler_file)]
scheduler = subprocess.Popen(
    [sys.executable, "-m", "distributed.cli.dask_scheduler", *common, "--port", "0", "--dashboard-address", ":0"],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
deadline = time.monotonic() + 120
while not scheduler_file.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
address = json.loads(scheduler_file.read_text())["address"]
workers = subprocess.Popen(
    [sys.executable, "-m", "distributed.cli.dask_worker", *common, "--nworkers", "2", "--nthreads", "1"],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
client = Client(address)
client.wait_for_workers(2, timeout=120)
print(f"scheduler at {address} with {len(client.nthreads())} workers")

# %% [markdown]
# ## 2. Simulate into a store on the cluster
#
# `sbikit.simulate` splits the run into chunks. Chunk `i` draws its parameters from the
# prior and simulates them with seeds spawned from the run's seed, so the numbers depend on
# `seed` and `chunk_size` only, never on how many workers there are or which chunk finished
# first. The calling process writes each chunk as it arrives; rows stay in run order.
#
# The simulator is named by its registry name, so each worker builds its own copy. Your
# own simulator class works the same way as `"package.module:Class"` if the workers can
# import it, or as an object, which Dask pickles and ships.

# %%
store_path = WORK / "sims.zarr"
start = time.perf_counter()
store = sbikit.simulate(
    "two_moons", NUM_SIMULATIONS, store=store_path, chunk_size=CHUNK_SIZE, seed=0, scheduler=address
)
print(f"{NUM_SIMULATIONS} simulations in {time.perf_counter() - start:.1f} s on the cluster")
print(store)

# %% [markdown]
# `sbikit.open_store` reads a store back at any time, also while another process is still
# writing it. `theta` and `x` are zarr arrays: index them like numpy arrays.

# %%
store = sbikit.open_store(store_path)
print("theta", store.theta.shape, "x", store.x.shape, "chunk states:", store.chunk_status)
print("first rows:\n", np.concatenate([store.theta[:3], store.x[:3]], axis=1))
client.close()
workers.terminate()
scheduler.terminate()
workers.wait(timeout=60)
scheduler.wait(timeout=60)

# %% [markdown]
# ## 3. An interrupted run, completed
#
# A run can die: a killed job, a full disk, a Ctrl-C. Every chunk is written data first and
# marked done last, so a store never holds a half-written chunk that counts as done. We
# fake an interruption with a simulator that raises `KeyboardInterrupt` (what Ctrl-C
# raises) on its fourth chunk. This part runs in this process (`workers=1`, the default).


# %%
class Interrupted(simulators.TwoMoons):
    """two_moons that 'is interrupted' on its fourth call."""

    calls = 0

    def simulate(self, theta, seed=None, rng=None):
        type(self).calls += 1
        if type(self).calls == 4:
            raise KeyboardInterrupt
        return super().simulate(theta, seed=seed, rng=rng)


resumed_path = WORK / "resumed.zarr"
try:
    sbikit.simulate(Interrupted(), NUM_SIMULATIONS, store=resumed_path, chunk_size=CHUNK_SIZE, seed=0, progress=False)
except KeyboardInterrupt:
    print("interrupted:", sbikit.open_store(resumed_path).summary())

# %% [markdown]
# Running the same call again simulates only the chunks that are not done (seed `None`
# would take the seed recorded in the store). The completed store equals the one the
# cluster computed without interruption, row for row.

# %%
Interrupted.calls = 10**6  # no more interruptions
resumed = sbikit.simulate(Interrupted(), NUM_SIMULATIONS, store=resumed_path, chunk_size=CHUNK_SIZE, progress=False)
print("completed:", resumed.summary())
assert np.array_equal(resumed.theta[:], store.theta[:]) and np.array_equal(resumed.x[:], store.x[:])
print("identical to the uninterrupted run on the cluster: True")

# %% [markdown]
# A simulator that raises an exception (anything but an interrupt) does not stop the run:
# the chunk is marked failed, its error and its parameters are kept (`store.failures`,
# `store.failed_theta()`), and the next run retries it. NaN outputs are kept and counted
# (`store.chunk_nonfinite`); training drops those rows with a warning.
#
# From the shell, the same is `sbikit simulate two_moons -n 100000 --store sims.zarr --seed 0`
# (add `--scheduler tcp://host:8786` for a cluster); rerunning it completes the store.

# %% [markdown]
# ## 4. Train from the store
#
# `NPE.fit` (and `NLE.fit`) take the store's arrays. Arrays larger than `memory_limit_gb`
# are streamed: read in blocks of the store's chunks, shuffled in buffers, and the z-scoring
# statistics computed in one pass, so data larger than memory train in constant memory.
# Here we force streaming with `memory_limit_gb=0`. `checkpoint=` saves the training state
# after every epoch; we stop after a few epochs, as if the job had been killed, and resume.
# (A job killed mid-way resumes under any schedule. Stopping on purpose at `max_epochs` and
# then raising it, as here, needs the plateau schedule: NPE's default cosine schedule is
# fixed by `max_epochs`, so another budget would be another run, and `fit` says so.)

# %%
sim = simulators.get("two_moons")
npe = sbikit.NPE(sim.prior, device="auto")
checkpoint = WORK / "npe.ckpt"
first = npe.fit(
    store.theta,
    store.x,
    seed=0,
    memory_limit_gb=0,
    schedule="plateau",
    max_epochs=MAX_EPOCHS // 2,
    checkpoint=checkpoint,
    progress=False,
)
print(f"first session: {first.info['epochs']} epochs, best validation loss {first.info['best_val_loss']:.3f}")
posterior = npe.fit(
    store.theta,
    store.x,
    seed=0,
    memory_limit_gb=0,
    schedule="plateau",
    max_epochs=MAX_EPOCHS,
    checkpoint=checkpoint,
    resume=True,
    progress=False,
)
print(f"resumed: {posterior.info['epochs']} epochs in all, best validation loss {posterior.info['best_val_loss']:.3f}")

# %% [markdown]
# The resumed training is the same as one uninterrupted run with the same seed: the
# checkpoint holds the weights, the optimiser, the random generator and the early-stopping
# counters. The posterior is used as always.

# %%
x_o = torch.tensor([0.0, 0.1])
samples = posterior.sample(2_000 if FAST else 10_000, x=x_o, seed=0)
corner_plot(samples, labels=sim.theta_names, path=OUT / "scaling_corner.png")
loss_plot(posterior.info, path=OUT / "scaling_loss.png")
print("posterior mean", samples.mean(0).tolist())
