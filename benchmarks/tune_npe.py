"""Screening harness used to tune NPE's defaults (docs/defaults.md).

Usage: ``python benchmarks/tune_npe.py TASK NAME JSON`` where JSON may hold ``n`` (simulations,
10^4), ``nc2`` (samples per C2ST, 3000), ``nobs`` (5), ``npe_kw`` (NPE arguments), ``userfit``
(``NPE.fit`` arguments), ``flow_kw`` / ``fit_kw`` (extra keywords bound into ``build_flow`` /
``sbikit.train.fit``). Appends one JSON line to ``benchmarks/results/tuning_<task>.jsonl``.
``soft_box`` (a number ``a``: replace BoxUniform's scaled logit by the bijection
``u = a (p - 1/2) + logit(p)``, ``p = (theta - low) / (high - low)``, nearly linear for
``p(1 - p) > 1 / a`` and logit-like at the bounds; inverted by bracketed Newton steps;
ninth round) and ``nologit`` (the identity instead: samples may leave the prior's box).
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
soft_box = ov.pop("soft_box", None)
if soft_box is not None:
    from sbikit.priors import BoxUniform

    A = float(soft_box)

    def _solve_y(u):  # root of a (sigmoid(y) - 1/2) + y - u, inside (u - a/2, u + a/2)
        u64 = u.double()
        lo, hi = u64 - A / 2, u64 + A / 2
        y = torch.minimum(torch.maximum(u64 / (1 + A / 4), lo), hi)
        for _ in range(40):
            sg = torch.sigmoid(y)
            g = A * (sg - 0.5) + y - u64
            lo, hi = torch.where(g < 0, y, lo), torch.where(g > 0, y, hi)
            step = y - g / (A * sg * (1 - sg) + 1)
            y = torch.where((step <= lo) | (step >= hi), 0.5 * (lo + hi), step)
        return y

    def _to_u(self, theta):
        low, high = self.low.to(theta), self.high.to(theta)
        pp = (theta - low) / (high - low)
        return A * (pp - 0.5) + torch.logit(pp)

    def _from_u(self, u):
        low, high = self.low.to(u), self.high.to(u)
        th = (low.double() + (high - low).double() * torch.sigmoid(_solve_y(u))).to(u.dtype)
        return torch.minimum(torch.maximum(th, torch.nextafter(low, high)), torch.nextafter(high, low))

    def _ladj(self, u):
        sg = torch.sigmoid(_solve_y(u))
        return (torch.log((self.high - self.low).to(u)) - torch.log(A + 1 / (sg * (1 - sg))).to(u.dtype)).sum(-1)

    BoxUniform.to_unconstrained, BoxUniform.from_unconstrained = _to_u, _from_u
    BoxUniform.log_abs_det_jacobian = _ladj
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
