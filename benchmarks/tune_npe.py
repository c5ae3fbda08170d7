"""Screening harness used to tune NPE's defaults (docs/defaults.md).

Usage: ``python benchmarks/tune_npe.py TASK NAME JSON`` where JSON may hold ``n`` (simulations,
10^4), ``nc2`` (samples per C2ST, 3000), ``nobs`` (5), ``npe_kw`` (NPE arguments), ``userfit``
(``NPE.fit`` arguments), ``flow_kw`` / ``fit_kw`` (extra keywords bound into ``build_flow`` /
``sbikit.train.fit``). Appends one JSON line to ``benchmarks/results/tuning_<task>.jsonl``.
Screening only: fewer C2ST samples than the standard variant, one seed.
"""

# ruff: noqa: E402  (OMP_NUM_THREADS must be set before numpy and torch are imported)
import functools
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch

torch.set_num_threads(1)
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from references import load_reference

import sbikit
import sbikit.inference.npe as npe_mod
import simulators
from sbikit.diagnostics.c2st import c2st

task, name, ov = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
n = int(ov.pop("n", 10000))
nc2 = int(ov.pop("nc2", 3000))
nobs = int(ov.pop("nobs", 5))
flow_kw = ov.pop("flow_kw", {})
fit_kw = ov.pop("fit_kw", {})
npe_kw = ov.pop("npe_kw", {})
nplog = ov.pop("nologit", False)
userfit = ov.pop("userfit", {})
if flow_kw:
    npe_mod.build_flow = functools.partial(npe_mod.build_flow, **flow_kw)
if fit_kw:
    npe_mod.fit = functools.partial(npe_mod.fit, **fit_kw)
sim = simulators.get(task)
theta = sim.prior.sample(n, seed=0)
x = sim.simulate(theta, seed=1)
est = sbikit.NPE(sim.prior, device="cpu", **npe_kw)
if nplog:
    est.prior.to_unconstrained = lambda t: t
    est.prior.from_unconstrained = lambda u: u
t0 = time.perf_counter()
c0 = time.process_time()
post = est.fit(theta, x, seed=0, progress=False, **userfit)
tt = time.perf_counter() - t0
ct = time.process_time() - c0
ref = load_reference(task)
cs = []
ts = 0
for i in range(nobs):
    t1 = time.perf_counter()
    s = post.sample(nc2, x=ref["x_o"][i], seed=i)
    ts += time.perf_counter() - t1
    s = s.numpy()
    cs.append(c2st(s, ref["samples"][i][:nc2]))
info = post.info
out = dict(
    task=task,
    name=name,
    time=round(tt, 1),
    cpu=round(ct, 1),
    epochs=info["epochs"],
    best=info["best_epoch"],
    val=round(info["best_val_loss"], 4),
    c2st=round(float(np.mean(cs)), 4),
    c2sts=[round(c, 3) for c in cs],
    samp_rate=round(nobs * nc2 / ts),
)
print(json.dumps(out), flush=True)
with open(HERE / "results" / f"tuning_{task}.jsonl", "a") as f:
    f.write(json.dumps(out) + "\n")
