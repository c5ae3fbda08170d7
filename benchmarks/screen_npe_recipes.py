"""Screening harness of the third tuning round (docs/defaults.md, "Third round").

Usage::

    python benchmarks/screen_npe_recipes.py TASK NAME JSON [--out FILE]

JSON keys (all optional): ``n`` (simulations, 10^4), ``kind`` (nsf), ``hidden`` (128),
``layers`` (5), ``blocks`` (2), ``bins`` (8), ``bs`` (512), ``lr`` (3e-3), ``wd`` (AdamW
weight decay, 0), ``ctx_wd`` (weight decay of the context-input weights only, 0; "cosine"
loop only), ``overfit`` (the fields of :class:`sbikit.train.OverfitRule` as a dict: weight
decay switched on once the run overfits; "fit" loop), ``ema`` (decay per step of a moving
average of the weights, validated every epoch; "fit" loop), ``affine`` (start the flow with
:class:`sbikit.flows.ConditionalAffine`, false), ``embed`` (a dict ``{"hidden": 128, "out":
32, "layers": 2}``: a jointly trained :class:`sbikit.flows.MLPEmbedding` of ``x``, built first, as ``NPE``
builds it; sixth round), ``dropout`` (dropout after every hidden activation of the
conditioners in training; screening only, sixth round), ``seed`` (training seed, 0: seeds
the flow's initialisation, ``torch.manual_seed(seed)`` before :func:`sbikit.flows.build_flow`,
and the validation split and batch order, ``fit``'s ``seed`` or the "cosine" loop's generator;
the training set, the held-out pairs and the C2ST's samples and classifier stay fixed, so
runs with different ``seed`` values differ only in training), and

* ``"loop": "fit"`` (default): train with :func:`sbikit.train.fit` (``patience`` 20) and its
  plateau schedule, as NPE did before this round, or with ``"schedule": "cosine"`` over
  ``epochs`` epochs after ``warmup`` warm-up epochs (NPE's current NSF/MAF recipe);
* ``"loop": "cosine"``: a plain loop with a linear warm-up over ``warmup`` epochs and a
  cosine decay over ``epochs`` epochs, no early stopping, the best validation epoch kept
  (the loop the cosine rows were screened with; ``sbikit.train.fit(schedule="cosine")``
  now implements the same schedule, with early stopping);
* ``"c2st": true``: also the standard C2ST (10,000 vs 10,000 samples) on the 5 observations
  of ``benchmarks/references/TASK.npz``.

The training set is the benchmark's (``theta = prior.sample(n, seed=n)``,
``x = simulate(theta, seed=n + 1)``); the score is the mean held-out ``-log q(u | x)`` on
20,000 fresh pairs (nats in the prior's unconstrained space; lower is better), a far less
noisy yardstick than C2ST. One seed per configuration unless ``seed`` is varied: differences
of a few hundredths of a nat are within seed noise.
"""

# ruff: noqa: E402  (OMP_NUM_THREADS must be set before numpy and torch are imported)
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from references import load_reference

import simulators
from sbikit.diagnostics.c2st import c2st
from sbikit.flows import MLPEmbedding, build_flow
from sbikit.inference.posterior import FlowPosterior
from sbikit.train import OverfitRule, cosine_learning_rate, fit


def cosine_loop(flow, u, x, cfg: dict) -> dict:
    n = len(u)
    gen = torch.Generator().manual_seed(cfg.get("seed", 0))
    perm = torch.randperm(n, generator=gen)
    val, train = perm[: n // 10], perm[n // 10 :]
    bs, lr, epochs = cfg.get("bs", 512), cfg.get("lr", 3e-3), cfg.get("epochs", 60)
    # ``ctx_wd``: AdamW weight decay on the conditioners' context-input weights only.
    ctx = [p for name, p in flow.named_parameters() if "context_layer" in name]
    rest = [p for name, p in flow.named_parameters() if "context_layer" not in name]
    opt = torch.optim.AdamW(
        [{"params": ctx, "weight_decay": cfg.get("ctx_wd", 0.0)}, {"params": rest, "weight_decay": cfg.get("wd", 0.0)}],
        lr=lr,
        fused=True,
    )
    steps = math.ceil(len(train) / bs)
    best, best_state, best_epoch = math.inf, None, -1
    for epoch in range(epochs):
        flow.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for k in range(steps):
            for group in opt.param_groups:
                group["lr"] = cosine_learning_rate(epoch + k / steps, epochs, lr, warmup_epochs=cfg.get("warmup", 0))
            idx = order[k * bs : (k + 1) * bs]
            loss = -flow.log_prob(u[idx], x[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
            opt.step()
        flow.eval()
        with torch.no_grad():
            v = float(-flow.log_prob(u[val], x[val]).mean())
        if v < best:
            best, best_state, best_epoch = v, copy.deepcopy(flow.state_dict()), epoch
    flow.load_state_dict(best_state)
    return {"epochs": epochs, "best_epoch": best_epoch, "best_val": best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task")
    p.add_argument("name")
    p.add_argument("config", help="JSON settings")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/tuning_v3_TASK.jsonl)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = json.loads(args.config)
    n = cfg.get("n", 10_000)
    sim = simulators.get(args.task)

    def pairs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        th = sim.prior.sample(count, seed=seed)
        xx = torch.as_tensor(np.asarray(sim.simulate(th, seed=seed + 1))).float()
        return th, sim.prior.to_unconstrained(torch.as_tensor(th).double()).float(), xx

    _, u, x = pairs(n, n)
    _, u_test, x_test = pairs(20_000, 999)
    if cfg.get("lu"):  # a learned LU-factorised linear map after every permutation
        from nflows.transforms import CompositeTransform, LULinear, RandomPermutation

        import sbikit.flows as flows_module

        flows_module.RandomPermutation = lambda features: CompositeTransform(
            [RandomPermutation(features), LULinear(features, identity_init=True)]
        )
    if cfg.get("dropout"):  # screening only: dropout after every hidden activation of ConditionalMADE
        import sbikit.flows as flows_module

        rate = float(cfg["dropout"])

        def dropout_forward(self, inputs, context=None):
            h = self.activation(self.initial_layer(inputs) + self.context_layer(context))
            h = torch.nn.functional.dropout(h, rate, self.training)
            for block in self.blocks:
                h = torch.nn.functional.dropout(self.activation(block(h)), rate, self.training)
            return self.final_layer(h)

        flows_module.ConditionalMADE.forward = dropout_forward
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    embed = cfg.get("embed")
    embedding = None
    if embed:
        width = int(np.prod(x.shape[1:]))
        embedding = MLPEmbedding(
            width,
            hidden_features=embed.get("hidden", 128),
            out_features=embed.get("out", 32),
            num_layers=embed.get("layers", 2),
        )
    flow = build_flow(
        cfg.get("kind", "nsf"),
        u.shape[1],
        tuple(x.shape[1:]),
        hidden_features=cfg.get("hidden", 128),
        num_transforms=cfg.get("layers", 5),
        num_bins=cfg.get("bins", 8),
        num_blocks=cfg.get("blocks", 2),
        conditional_affine=cfg.get("affine", False),
        embedding=embedding,
    )
    flow.set_standardization(u, x)
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg.get("loop", "fit") == "cosine":
        rec = cosine_loop(flow, u, x, cfg)
    else:
        res = fit(
            flow,
            lambda m, a, b: -m.log_prob(a, b).mean(),
            [u, x],
            seed=seed,
            batch_size=cfg.get("bs", 512),
            learning_rate=cfg.get("lr", 3e-3),
            # 20 (longer than NPE's cosine default of 12) records enough of each curve for
            # benchmarks/replay_patience.py to replay any shorter patience.
            patience=cfg.get("patience", 20),
            progress=False,
            schedule=cfg.get("schedule", "plateau"),
            max_epochs=cfg.get("epochs", 1000),
            warmup_epochs=cfg.get("warmup", 0.0),
            weight_decay=cfg.get("wd", 0.0),
            on_overfit=OverfitRule(**cfg["overfit"]) if cfg.get("overfit") else None,
            ema_decay=cfg.get("ema"),
        )
        rec = {
            "epochs": res.epochs,
            "best_epoch": res.best_epoch,
            "best_val": res.best_val_loss,
            "regularized_from": res.regularized_from,
            "train_loss": res.train_loss,
            "val_loss": res.val_loss,
        }
    rec = {"task": args.task, "name": args.name, "cfg": cfg, "wall": time.perf_counter() - t0, **rec}
    rec["cpu"] = time.process_time() - c0
    with torch.no_grad():
        rec["test_nll_u"] = float(-flow.log_prob(u_test, x_test).mean())
    if cfg.get("c2st"):
        ref = load_reference(args.task)
        post = FlowPosterior(flow, sim.prior, tuple(x.shape[1:]))
        scores = []
        for i in range(len(ref["x_o"])):
            s = post.sample(10_000, x=torch.as_tensor(ref["x_o"][i]).float(), seed=i)
            scores.append(c2st(s.numpy(), ref["samples"][i][:10_000], seed=0))
        rec |= {"c2st": scores, "c2st_mean": float(np.mean(scores))}
    out = Path(args.out or HERE / "results" / f"tuning_v3_{args.task}.jsonl")
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
