"""Scaling: simulation throughput against Dask workers, and training throughput in and out of memory.

Three measurements, all seeded:

1. **Simulation** of ``--num-simulations`` supernova light curves (``simulators.get("supernova")``,
   40 flux values per simulation, ~90 us of vectorised numpy each) into a zarr store in
   chunks of ``--chunk-size``: in this process (``workers=1``), and on a Dask
   ``LocalCluster`` of 1, 2, ... single-threaded worker processes (``--workers``). The
   cluster's start-up is timed separately; throughput is simulations per second of the
   ``sbikit.simulate`` call (writing the store included). Every run is checked to give the
   same store as the in-process one. The same again for ``WaitingSupernova``, which also
   sleeps ``--wait`` seconds per chunk (a stand-in for a simulator that runs an external
   program): its chunks overlap across workers even when the cores are busy.
2. **NPE training** (default MAF) on that store, ``--epochs`` epochs without early stopping:
   read into memory (``memory_limit_gb=None``) against streamed from disk
   (``memory_limit_gb=0``). Throughput is training rows per second (epochs x training rows /
   training time).
3. **CNN-embedding NPE** on ``--num-images`` 64 x 64 images of a Gaussian blob
   (``BlobImages`` below: centre, width and amplitude; pixel noise), simulated into a store,
   trained in memory and streamed, with a small convolutional embedding.
4. **Emulators** (``ConditionalVAE``, ``ConditionalWGAN``, library defaults) trained for
   ``--emulator-epochs`` epochs on ``--emulator-images`` blob images from a store, read into
   memory and streamed; each fit runs in a fresh process (``spawn``), which reports its
   training time and its peak resident memory (``ru_maxrss``), so the memory figures of
   the two modes do not mix.

``--device cuda`` runs the training parts on a GPU as well (data moved once in memory,
pinned-memory copies per buffer when streamed); without CUDA the GPU rows are recorded as
not available.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --out benchmarks/results/scaling.jsonl
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --parts emulators --out benchmarks/results/scaling.jsonl
    python benchmarks/scaling.py --report benchmarks/results/scaling.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import sbikit  # noqa: E402
import simulators  # noqa: E402
from sbikit.priors import BoxUniform  # noqa: E402


class BlobImages:
    """64 x 64 images ``(1, 64, 64)`` of a Gaussian blob plus pixel noise.

    ``theta = (x0, y0, width, amplitude)`` with a box prior; the blob is
    ``amplitude * exp(-((u - x0)^2 + (v - y0)^2) / (2 width^2))`` on the unit square, and each
    pixel gets N(0, 0.1^2) noise.
    """

    size = 64

    def __init__(self) -> None:
        self.prior = BoxUniform(torch.tensor([0.2, 0.2, 0.03, 0.5]), torch.tensor([0.8, 0.8, 0.15, 2.0]))
        self.x_shape = (1, self.size, self.size)

    def simulate(self, theta: np.ndarray, seed: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        grid = (np.arange(self.size) + 0.5) / self.size
        th = np.asarray(theta, dtype=np.float64)
        dx = (grid[None, :] - th[:, 0:1]) ** 2  # (n, 64) over columns
        dy = (grid[None, :] - th[:, 1:2]) ** 2  # (n, 64) over rows
        w2 = 2 * th[:, 2:3] ** 2
        img = th[:, 3, None, None] * np.exp(-dy[:, :, None] / w2[:, :, None]) * np.exp(-dx[:, None, :] / w2[:, :, None])
        img += 0.1 * rng.standard_normal(img.shape)
        return img[:, None].astype(np.float32)


class WaitingSupernova:
    """supernova that also waits ``wait`` seconds per call, like a simulator running an external program.

    The wait uses no CPU, so it shows how chunks overlap across workers even on a machine
    whose cores are busy with other jobs.
    """

    def __init__(self, wait: float) -> None:
        self._sim = simulators.get("supernova")
        self.prior = self._sim.prior
        self.wait = wait

    def simulate(self, theta: np.ndarray, seed: int | None = None) -> np.ndarray:
        time.sleep(self.wait)
        return self._sim.simulate(theta, seed=seed)


class SmallCNN(nn.Module):
    """(n, 1, 64, 64) -> (n, 32): two strided convolutions, pooling, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(256, 32),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}"


def emit(record: dict, out: Path | None) -> None:
    print(json.dumps(record), flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


def bench_simulation(args: argparse.Namespace, work: Path, out: Path | None) -> Path:
    from distributed import Client, LocalCluster

    n, cs = args.num_simulations, args.chunk_size
    sims = {"supernova": "supernova", f"supernova + {args.wait:g} s wait per chunk": WaitingSupernova(args.wait)}
    ref_path = work / "supernova_ref.zarr"
    for label, spec in sims.items():
        path = ref_path if spec == "supernova" else work / "waiting_ref.zarr"
        start = time.perf_counter()
        ref = sbikit.simulate(spec, n, store=path, chunk_size=cs, seed=0, progress=False)
        elapsed = time.perf_counter() - start
        emit(
            {
                "part": "simulate",
                "simulator": label,
                "mode": "in-process",
                "workers": 1,
                "n": n,
                "chunk_size": cs,
                "seconds": elapsed,
                "sims_per_s": n / elapsed,
                "startup_s": 0.0,
                "identical": True,
            },
            out,
        )
        for k in args.workers:
            start = time.perf_counter()
            cluster = LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            client.run(lambda: __import__("sbikit") and None)  # workers import sbikit/torch before timing
            startup = time.perf_counter() - start
            path = work / f"cluster_{k}.zarr"
            start = time.perf_counter()
            store = sbikit.simulate(spec, n, store=path, chunk_size=cs, seed=0, scheduler=client, progress=False)
            elapsed = time.perf_counter() - start
            identical = bool(np.array_equal(store.x[:], ref.x[:]) and np.array_equal(store.theta[:], ref.theta[:]))
            client.close()
            cluster.close()
            emit(
                {
                    "part": "simulate",
                    "simulator": label,
                    "mode": "dask LocalCluster",
                    "workers": k,
                    "n": n,
                    "chunk_size": cs,
                    "seconds": elapsed,
                    "sims_per_s": n / elapsed,
                    "startup_s": startup,
                    "identical": identical,
                },
                out,
            )
            shutil.rmtree(path, ignore_errors=True)
    return ref_path


def bench_training(
    name: str, prior, store: sbikit.SimulationStore, embedding, args, device: str, out: Path | None
) -> None:
    for mode, limit in (("in memory", None), ("streamed", 0)):
        torch.manual_seed(0)  # the embedding's initial weights
        npe = sbikit.NPE(prior, embedding=embedding() if embedding else None, device=device)
        start = time.perf_counter()
        post = npe.fit(
            store.theta, store.x, seed=0, max_epochs=args.epochs, patience=10**6, memory_limit_gb=limit, progress=False
        )
        total = time.perf_counter() - start
        info = post.info
        n_train = info["num_simulations"] - max(1, round(0.1 * info["num_simulations"]))
        emit(
            {
                "part": "train",
                "model": name,
                "mode": mode,
                "device": device,
                "n": store.num_simulations,
                "epochs": info["epochs"],
                "train_s": info["train_time"],
                "total_s": total,
                "rows_per_s": info["epochs"] * n_train / info["train_time"],
                "best_val_loss": info["best_val_loss"],
            },
            out,
        )


def _emulator_child(kind: str, store_path: str, limit: float | None, epochs: int, device: str) -> dict:
    """Fit one emulator in this (fresh) process; -> training time and peak RSS of the process."""
    import resource

    torch.set_num_threads(1)
    from sbikit.emulators import ConditionalVAE, ConditionalWGAN

    store = sbikit.open_store(store_path)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    emu = ConditionalVAE() if kind == "cvae" else ConditionalWGAN()
    kw = {"patience": 10**6} if kind == "cvae" else {}
    start = time.perf_counter()
    emu.fit(store.theta, store.x, seed=0, max_epochs=epochs, device=device, memory_limit_gb=limit, progress=False, **kw)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"train_s": seconds, "peak_rss_mb": peak, "rss_before_fit_mb": base, "epochs": emu.history.epochs}


def bench_emulators(store: sbikit.SimulationStore, args: argparse.Namespace, device: str, out: Path | None) -> None:
    nbytes = 4 * int(np.prod(store.x.shape))
    ctx = multiprocessing.get_context("spawn")
    for kind, name in (("cvae", "ConditionalVAE"), ("wgan", "ConditionalWGAN")):
        if kind not in args.emulator_models:
            continue
        for mode, limit in (("in memory", None), ("streamed", 0)):
            with ctx.Pool(1) as pool:
                res = pool.apply(_emulator_child, (kind, str(store.path), limit, args.emulator_epochs, device))
            n = store.num_simulations
            n_train = n - max(1, round(0.1 * n))
            emit(
                {
                    "part": "emulator",
                    "model": name,
                    "mode": mode,
                    "device": device,
                    "n": n,
                    "data_mb": nbytes / 2**20,
                    "rows_per_s": res["epochs"] * n_train / res["train_s"],
                    **res,
                },
                out,
            )


def report(paths: list[Path]) -> str:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    lines = [
        "| simulator | mode | workers | simulations | s | simulations/s | cluster start (s) | same store |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["part"] == "simulate":
            lines.append(
                f"| {r.get('simulator', 'supernova')} | {r['mode']} | {r['workers']} | {r['n']} | "
                f"{r['seconds']:.1f} | {r['sims_per_s']:.0f} | "
                f"{r['startup_s']:.1f} | {r['identical']} |"
            )
    lines += [
        "",
        "| model | data | device | rows | epochs | train s | rows/s | best val loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["part"] == "train":
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['device']} | {r['n']} | {r['epochs']} | "
                f"{r['train_s']:.1f} | {r['rows_per_s']:.0f} | {r['best_val_loss']:.3f} |"
            )
        if r["part"] == "gpu":
            lines.append(f"| {r['model']} | - | cuda | - | - | - | {r['note']} | - |")
    emulators = [r for r in rows if r["part"] == "emulator"]
    if emulators:
        lines += [
            "",
            "| emulator | data | device | images (MB as float32) | epochs | train s | rows/s | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in emulators:
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['device']} | {r['n']} ({r['data_mb']:.0f}) | {r['epochs']} | "
                f"{r['train_s']:.1f} | {r['rows_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--wait", type=float, default=0.5, help="seconds the waiting simulator sleeps per chunk")
    parser.add_argument("--num-images", type=int, default=5_000)
    parser.add_argument("--emulator-images", type=int, default=20_000)
    parser.add_argument("--emulator-epochs", type=int, default=1)
    parser.add_argument("--emulator-models", nargs="+", default=["cvae", "wgan"], choices=["cvae", "wgan"])
    parser.add_argument(
        "--parts", nargs="+", default=["simulate", "train", "emulators"], choices=["simulate", "train", "emulators"]
    )
    parser.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, nargs="+")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(1)
    print(f"# {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sbikit_scaling_"))
    try:
        image_sim = BlobImages()
        if "simulate" in args.parts or "train" in args.parts:
            ref = sbikit.open_store(bench_simulation(args, work, args.out))
            start = time.perf_counter()
            images = sbikit.simulate(
                image_sim, args.num_images, store=work / "blobs.zarr", chunk_size=500, seed=0, progress=False
            )
            print(f"# {args.num_images} images simulated in {time.perf_counter() - start:.1f} s", flush=True)
        if "emulators" in args.parts:
            emu_images = sbikit.simulate(
                image_sim, args.emulator_images, store=work / "emu_blobs.zarr", chunk_size=500, seed=1, progress=False
            )
        for device in args.device:
            if device.startswith("cuda") and not torch.cuda.is_available():
                for model in ("NPE (MAF)", "NPE + CNN", "emulators"):
                    emit({"part": "gpu", "model": model, "note": "no GPU on this machine"}, args.out)
                continue
            if "train" in args.parts:
                bench_training("NPE (MAF)", simulators.get("supernova").prior, ref, None, args, device, args.out)
                bench_training("NPE + CNN", image_sim.prior, images, SmallCNN, args, device, args.out)
            if "emulators" in args.parts:
                bench_emulators(emu_images, args, device, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        print(report([args.out]))


if __name__ == "__main__":
    main()
    sys.exit(0)
