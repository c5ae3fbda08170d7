"""Fast screen of ConditionalVAE (and ConditionalWGAN) settings on ``sersic`` against the exact noiseless image.

``sersic`` is a deterministic image ``m(theta)`` plus white Gaussian noise of known
``sigma``, so an ideal emulator has decoder mean ``m(theta)`` for every ``z`` and noise scale
``sigma``. This script fits one emulator per configuration on the benchmark's training set
(``benchmarks/emulators.py``: 5,000 simulations, ``theta = prior.sample(5000, seed=0)``,
``x = simulate(theta, seed=1)``, fit seed 0) and measures, in minutes rather than the
benchmark's half hour:

* mean-image error at 500 held-out parameters (``prior.sample(500, seed=20)``), with the
  decoder averaged over 16 latent draws: ``chi2_bias = sum_pixels (E_z mu - m)^2 / sigma^2``
  per image (mean, 95th percentile and max over theta). One emulated image differs from a
  simulated one by about ``sqrt(chi2_bias)`` noise standard deviations along the error
  direction, so ``chi2_bias << 1`` is what makes the two indistinguishable to NPE;
* ``chi2_z = sum_pixels Var_z mu / sigma^2``: variance the latent adds (zero is ideal here);
* ``chi2_bias`` at 500 training parameters (``chi2_bias_train_mean``): much smaller than the
  held-out value means the error is variance (noise fitted), similar means bias;
* the learned noise scale over ``sigma`` (mean, min and max over pixels);
* ``kl_proxy``: the mean over theta of the Gaussian KL per image between emulator and
  simulator, ``chi2_bias / 2 + sum_pixels (r - 1 - log r) / 2`` with ``r = (s^2 + Var_z mu) /
  sigma^2`` (the latent's spread treated as extra Gaussian noise);
* the power-spectrum ratio emulated / simulated per k-bin with its Monte Carlo error, at the
  benchmark's 8 test parameters (``prior.sample(8, seed=2)``) and 4 prior corners, 1,000
  outputs each, counted as :meth:`FidelityReport.power_within` does (5% plus 2 s.e.).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/screen_emulators.py --configs base h512 \\
        --out benchmarks/results/screen_emulators.jsonl
    python benchmarks/screen_emulators.py --report benchmarks/results/screen_emulators.jsonl

Each configuration takes one to six CPU minutes (the fit dominates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import simulators  # noqa: E402
from sbikit.emulators import ConditionalVAE, ConditionalWGAN, edge_weighted_design, power_spectrum  # noqa: E402
from sbikit.emulators.base import fill_pca_basis  # noqa: E402

logger = logging.getLogger("benchmarks.screen_emulators")


class ZFreeCVAE(ConditionalVAE):
    """A ConditionalVAE whose decoder mean ignores ``z`` (a screening variant, not library code).

    The decoder is fed ``[0, theta]``: the mean image is a regression on ``theta`` and all
    variability comes from the learned per-pixel noise (the KL term then drives ``q`` to the
    prior). Exact in form for deterministic-plus-white-noise simulators such as ``sersic``.
    """

    def _decode(self, z: Tensor, theta_s: Tensor) -> Tensor:
        return super()._decode(torch.zeros_like(z), theta_s)


class PCACVAE(ConditionalVAE):
    """A ConditionalVAE whose decoder mean lies in the span of the training data's top principal components.

    The decoder MLP outputs ``num_components`` coefficients of a fixed orthonormal basis (the
    leading right singular vectors of the standardised, centred training images) plus the mean
    image, so the pixel noise outside that subspace cannot be fitted (a screening variant).
    """

    num_components = 64

    def _build(self) -> None:
        super()._build()
        assert self.x_shape is not None and self.theta_dim is not None
        size = int(np.prod(self.x_shape))
        k = min(self.num_components, size)
        from sbikit.emulators.base import mlp

        self.decoder = mlp(self.latent_dim + self.theta_dim, k, self.hidden_features, self.num_layers)
        self.register_buffer("pca_basis", torch.zeros(k, size))
        self.register_buffer("pca_mean", torch.zeros(size))

    def _set_standardization(self, th: Tensor, xt: Tensor) -> None:
        super()._set_standardization(th, xt)
        xs = self.standardize_x(xt).flatten(1)
        mean = xs.mean(0)
        _, _, vt = torch.linalg.svd(xs - mean, full_matrices=False)
        self.pca_basis.copy_(vt[: len(self.pca_basis)])
        self.pca_mean.copy_(mean)

    def _decode(self, z: Tensor, theta_s: Tensor) -> Tensor:
        assert self.x_shape is not None
        coef = self.decoder(torch.cat([z, theta_s], dim=1))
        return (coef @ self.pca_basis + self.pca_mean).reshape(z.shape[0], *self.x_shape)


class ZFreePCACVAE(PCACVAE, ZFreeCVAE):
    """:class:`PCACVAE` with a decoder mean that ignores ``z``."""

    def _decode(self, z: Tensor, theta_s: Tensor) -> Tensor:
        return PCACVAE._decode(self, torch.zeros_like(z), theta_s)


class OracleBasisCVAE(ConditionalVAE):
    """``decoder="pca"`` with the basis taken from the NOISELESS training images (diagnosis only).

    Separates the two sources of the mean image's error: how well the principal components
    of noisy training images span the noiseless ones, and how well the decoder maps
    ``theta`` to coefficients. :func:`screen` sets ``clean_images`` ``(n, H, W)`` before the fit.
    """

    clean_images: np.ndarray | None = None

    def _fit_pca_basis(self, data: Any, *, x_standardized: bool, owner: str) -> None:
        assert self.clean_images is not None
        clean = self.standardize_x(torch.as_tensor(self.clean_images, dtype=torch.float32))
        fill_pca_basis(self.pca_basis, self.pca_mean, [clean], owner=owner + " (noiseless basis)")


class AmplitudeCVAE(ConditionalVAE):
    """``decoder="pca"`` whose coefficients are ``a(z, theta) + exp(s(z, theta)) b(z, theta)`` (screening).

    One MLP gives ``a`` and ``b`` (``m`` each) and the scalar ``s``: an output whose overall
    scale varies over orders of magnitude with ``theta`` (a flux) becomes a product the
    network can form with a linear ``s``, instead of a large-dynamic-range regression.
    """

    def _build(self) -> None:
        super()._build()
        assert self.x_shape is not None and self.theta_dim is not None
        from sbikit.emulators.base import mlp

        m = len(self.pca_basis)
        self.decoder = mlp(self.latent_dim + self.theta_dim, 2 * m + 1, self.hidden_features, self.num_layers)

    def _decode(self, z: Tensor, theta_s: Tensor) -> Tensor:
        out = self.decoder(torch.cat([z, theta_s], dim=1))
        m = len(self.pca_basis)
        coef = out[:, :m] + torch.exp(out[:, 2 * m :]) * out[:, m : 2 * m]
        return self._from_pca(coef)


class LogIndexCVAE(ConditionalVAE):
    """``sersic_n`` (coordinate 2) enters the networks as ``log n`` (screening).

    A Sersic profile depends on the index through ``(r / r_e) ** (1 / n)``, whose derivative
    in ``n`` carries a factor ``1 / n ** 2``: the image changes 64x faster per unit of ``n`` at
    ``n = 0.5`` than at ``n = 4``, so a linear standardisation of ``n`` asks the MLP for a
    steep function at one face of the box. In ``log n`` the factor is ``1 / n``.
    """

    warp_index = 2

    def _warp(self, theta: Tensor) -> Tensor:
        out = theta.clone()
        out[:, self.warp_index] = self._warp_column(theta[:, self.warp_index])
        return out

    @staticmethod
    def _warp_column(col: Tensor) -> Tensor:
        return torch.log(col)

    def _set_standardization(self, th: Tensor, xt: Tensor) -> None:
        super()._set_standardization(self._warp(th), xt)

    def standardize_theta(self, theta: Tensor) -> Tensor:
        return super().standardize_theta(self._warp(theta))


class InverseIndexCVAE(LogIndexCVAE):
    """``sersic_n`` enters as ``1 / n``: ``(r / r_e) ** (1 / n)`` then has a derivative free of ``n`` (screening)."""

    @staticmethod
    def _warp_column(col: Tensor) -> Tensor:
        return 1.0 / col


class TunedBasisCVAE(ConditionalVAE):
    """``decoder="pca"`` whose basis is trained with the networks, starting from the PCA (screening).

    A learned correction ``(m, D)`` (zero at the start) is added to the fixed principal
    components: directions that only rare, bright training images have, lost in the noisy
    PCA, can be learned from the likelihood, while the decoder keeps rank ``m``.
    """

    def _build(self) -> None:
        super()._build()
        assert self.x_shape is not None
        self.basis_delta = torch.nn.Parameter(torch.zeros_like(self.pca_basis))

    def _from_pca(self, coefficients: Tensor) -> Tensor:
        assert self.x_shape is not None
        basis = self.pca_basis + self.basis_delta
        return (coefficients @ basis + self.pca_mean).reshape(coefficients.shape[0], *self.x_shape)


class ExtraBasisCVAE(ConditionalVAE):
    """``decoder="pca"`` plus ``extra`` learned output directions, zero at the start (screening).

    The fixed principal components stay; the decoder MLP gives ``extra`` more coefficients for
    directions ``(extra, D)`` trained from the likelihood (8,192 numbers for 8 directions on
    32 x 32 images, against 65,536 for a fully trained basis, :class:`TunedBasisCVAE`).
    """

    extra = 8

    def _register_pca_buffers(self, num_components: int) -> int:
        m = super()._register_pca_buffers(num_components)
        self.extra_basis = torch.nn.Parameter(torch.zeros(self.extra, self.pca_basis.shape[1]))
        return m + self.extra

    def _from_pca(self, coefficients: Tensor) -> Tensor:
        assert self.x_shape is not None
        basis = torch.cat([self.pca_basis, self.extra_basis])
        return (coefficients @ basis + self.pca_mean).reshape(coefficients.shape[0], *self.x_shape)


# name -> (constructor kwargs, fit kwargs, class)
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any], type]] = {
    "base": ({"hidden_features": 256}, {}, ConditionalVAE),
    "h128": ({"hidden_features": 128}, {}, ConditionalVAE),
    "h512": ({"hidden_features": 512}, {}, ConditionalVAE),
    "deep3": ({"hidden_features": 256, "num_layers": 3}, {}, ConditionalVAE),
    "patience50": ({"hidden_features": 256}, {"patience": 50, "max_epochs": 400}, ConditionalVAE),
    "cos200": ({"hidden_features": 256}, {"schedule": "cosine", "max_epochs": 200, "patience": 200}, ConditionalVAE),
    "lr3e-4": ({"hidden_features": 256}, {"learning_rate": 3e-4, "patience": 30, "max_epochs": 300}, ConditionalVAE),
    "latent2": ({"hidden_features": 256, "latent_dim": 2}, {}, ConditionalVAE),
    "beta4": ({"hidden_features": 256, "beta": 4.0}, {}, ConditionalVAE),
    "wd1e-4": ({"hidden_features": 256}, {"weight_decay": 1e-4}, ConditionalVAE),
    "zfree": ({"hidden_features": 256}, {}, ZFreeCVAE),
    "zfree_h512_cos200": (
        {"hidden_features": 512},
        {"schedule": "cosine", "max_epochs": 200, "patience": 200},
        ZFreeCVAE,
    ),
    "pca64": ({"hidden_features": 256}, {}, PCACVAE),
    "zfree_pca64": ({"hidden_features": 256}, {}, ZFreePCACVAE),
    "zfree_pca64_cos200": (
        {"hidden_features": 256},
        {"schedule": "cosine", "max_epochs": 200, "patience": 200},
        ZFreePCACVAE,
    ),
    # the library's decoder="pca" (the same construction as PCACVAE)
    "lib_pca64": ({"hidden_features": 256, "decoder": "pca"}, {}, ConditionalVAE),
    "oracle_pca64": ({"hidden_features": 256, "decoder": "pca"}, {}, OracleBasisCVAE),
    "amp_pca64": ({"hidden_features": 256, "decoder": "pca"}, {}, AmplitudeCVAE),
    # the library's amplitude_head=True (the same map, clamped; its own initialisation order)
    "lib_amp_pca64": ({"hidden_features": 256, "decoder": "pca", "amplitude_head": True}, {}, ConditionalVAE),
    "tuned_amp_pca64": ({"hidden_features": 256, "decoder": "pca", "amplitude_head": True}, {}, TunedBasisCVAE),
    "extra8_amp_pca64": ({"hidden_features": 256, "decoder": "pca", "amplitude_head": True}, {}, ExtraBasisCVAE),
    "logn_amp_pca64": ({"hidden_features": 256, "decoder": "pca", "amplitude_head": True}, {}, LogIndexCVAE),
    "invn_amp_pca64": ({"hidden_features": 256, "decoder": "pca", "amplitude_head": True}, {}, InverseIndexCVAE),
    "zfree_lib_pca32": ({"hidden_features": 256, "decoder": "pca", "num_components": 32}, {}, ZFreeCVAE),
    "zfree_lib_pca128": ({"hidden_features": 256, "decoder": "pca", "num_components": 128}, {}, ZFreeCVAE),
    "zfree_lib_pca64_h128": ({"hidden_features": 128, "decoder": "pca"}, {}, ZFreeCVAE),
    "zfree_lib_pca64_wd1e-2": ({"hidden_features": 256, "decoder": "pca"}, {"weight_decay": 1e-2}, ZFreeCVAE),
    "zfree_lib_pca64_lr3e-4": (
        {"hidden_features": 256, "decoder": "pca"},
        {"learning_rate": 3e-4, "patience": 30, "max_epochs": 300},
        ZFreeCVAE,
    ),
    "lib_pca64_ema0.995": ({"hidden_features": 256, "decoder": "pca"}, {"ema_decay": 0.995}, ConditionalVAE),
    "zfree_lib_pca64_ema0.995": ({"hidden_features": 256, "decoder": "pca"}, {"ema_decay": 0.995}, ZFreeCVAE),
    "zfree_lib_pca64_bs32": ({"hidden_features": 256, "decoder": "pca"}, {"batch_size": 32}, ZFreeCVAE),
    "h512_cos200": (
        {"hidden_features": 512},
        {"schedule": "cosine", "max_epochs": 200, "patience": 200},
        ConditionalVAE,
    ),
    # WGAN-GP as in benchmarks/emulators.py (256 units, lr 1e-3, 5 critic steps, EMA); 100 epochs
    # (1,400 generator steps), half the benchmark's 200, to screen in a quarter of an hour
    "wgan_mlp_e100": ({"hidden_features": 256, "generator": "mlp"}, {"max_epochs": 100}, ConditionalWGAN),
    "wgan_pca64_e100": ({"hidden_features": 256, "generator": "pca"}, {"max_epochs": 100}, ConditionalWGAN),
}


def training_design(prior: Any, num: int, design: str, concentration: float = 0.5) -> Tensor:
    """Training parameters ``(num, 5)``: ``"prior"`` (the benchmark's ``prior.sample(num, seed=0)``),
    ``"arcsine"`` or ``"mixK"``: :func:`sbikit.emulators.edge_weighted_design` with
    ``edge_fraction`` 1 or ``K / 100`` and ``concentration`` (seed 0; ``--concentration``, 0.5
    unless given: the arcsine law of the records made before it existed)."""
    if design == "prior":
        return prior.sample(num, seed=0)
    if design.startswith("beta"):
        return beta_design(prior, num, design)
    if design.startswith("hybrid"):
        return hybrid_design(prior, num, design)
    share = 1.0 if design == "arcsine" else int(design.removeprefix("mix")) / 100
    return edge_weighted_design(prior, num, edge_fraction=share, concentration=concentration, seed=0)


def beta_design(prior: Any, num: int, design: str) -> Tensor:
    """``"betaA_mixK"``: ``K``% of the rows with every coordinate from ``Beta(A, A)`` on its range,
    the rest prior draws, shuffled (seed 0). ``A = 0.5`` is the arcsine law of
    :func:`~sbikit.emulators.edge_weighted_design`; smaller ``A`` crowds the rows toward the
    box's vertices (a screening design, not in the library)."""
    a_text, k_text = design.removeprefix("beta").split("_mix")
    a, share = float(a_text), int(k_text) / 100
    rng = np.random.default_rng(0)
    low, high = prior.low.double().numpy(), prior.high.double().numpy()
    n_edge = int(round(share * num))
    u = rng.beta(a, a, size=(n_edge, len(low)))
    edge = low + np.clip(u, 1e-6, 1 - 1e-6) * (high - low)
    rows = np.concatenate([edge, prior.sample(num - n_edge, seed=0).double().numpy()])
    return torch.as_tensor(rows[rng.permutation(num)], dtype=torch.float32)


def corners(prior: Any) -> np.ndarray:
    """Four prior corners (1% of each range inside): big/small, concentrated/flat, round/elongated ``(4, 5)``."""
    pick = [(0, 1, 1, 1, 1), (1, 1, 0, 0, 1), (0, 0, 1, 0, 0), (1, 0, 0, 1, 0)]
    return vertices(prior)[[sum(bit << j for j, bit in enumerate(p)) for p in pick]]


def hybrid_design(prior: Any, num: int, design: str) -> Tensor:
    """``"hybridA"``: a quarter of the rows on the arcsine law, a quarter on ``Beta(A, A)``, half
    prior draws (two :func:`~sbikit.emulators.edge_weighted_design` halves, seeds 0 and 1,
    shuffled with seed 2; a screening design)."""
    a = float(design.removeprefix("hybrid"))
    half = num // 2
    rows = torch.cat(
        [
            edge_weighted_design(prior, half, edge_fraction=0.5, concentration=0.5, seed=0),
            edge_weighted_design(prior, num - half, edge_fraction=0.5, concentration=a, seed=1),
        ]
    )
    return rows[torch.randperm(num, generator=torch.Generator().manual_seed(2))]


def vertices(prior: Any) -> np.ndarray:
    """All ``2 ** d`` vertices of the prior box, 1% of each range inside ``(2 ** d, d)``; row ``i``
    takes the upper end of coordinate ``j`` when bit ``j`` of ``i`` is set."""
    low, high = prior.low.double().numpy(), prior.high.double().numpy()
    lo, hi = low + 0.01 * (high - low), high - 0.01 * (high - low)
    d = len(lo)
    return np.array([[hi[j] if (i >> j) & 1 else lo[j] for j in range(d)] for i in range(2**d)])


def within_five_percent(ratio: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Bins whose power ratio is within 5% plus 2 Monte Carlo s.e. (as ``FidelityReport.power_within(0.05, 2)``)."""
    return np.abs(ratio - 1) <= 0.05 + 2 * err


def power_ratio(emu: Any, sim: Any, theta: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Ratio of mean power spectra emulated / simulated and its delta-method error, each ``(m, bins)``."""
    ratios, errors = [], []
    for i, row in enumerate(theta):
        rows = np.repeat(row[None], num_samples, axis=0)
        pe = power_spectrum(np.asarray(emu.simulate(rows, seed=1000 + i)))[1].numpy()
        ps = power_spectrum(np.asarray(sim.simulate(rows, seed=2000 + i)))[1].numpy()
        me, ms = pe.mean(0), ps.mean(0)
        rel = pe.var(0, ddof=1) / (num_samples * me**2) + ps.var(0, ddof=1) / (num_samples * ms**2)
        ratios.append(me / ms)
        errors.append(me / ms * np.sqrt(rel))
    return np.stack(ratios), np.stack(errors)


def mean_image_errors(emu: Any, sim: Any, theta: np.ndarray, num_z: int = 16) -> dict[str, Any]:
    """Decoder mean against the noiseless image in units of the pixel noise (see the module docstring)."""
    sigma = sim.noise_sigma
    m = np.asarray(sim.model_image(theta))  # (n, H, W)
    gen = torch.Generator().manual_seed(0)
    mus = []
    for _ in range(num_z):
        z = torch.randn(len(theta), emu.latent_dim, generator=gen)
        with torch.no_grad():  # a WGAN's noise-free output m(z, theta) plays the decoder mean
            mu = emu.decode(z, theta) if isinstance(emu, ConditionalVAE) else emu.generate(z, torch.as_tensor(theta))
        mus.append(mu.double().numpy())
    mu = np.stack(mus)  # (num_z, n, H, W)
    bias = ((mu.mean(0) - m) / sigma) ** 2
    zvar = mu.var(0, ddof=1) / sigma**2
    s = (torch.exp(emu.log_noise_scale) * emu.x_scale).detach().double().numpy() / sigma  # (H, W)
    r = s[None] ** 2 + zvar
    chi2 = bias.sum((1, 2))
    kl = 0.5 * chi2 + 0.5 * (r - 1 - np.log(r)).sum((1, 2))
    return {
        "chi2_bias_mean": float(chi2.mean()),
        "chi2_bias_p95": float(np.quantile(chi2, 0.95)),
        "chi2_bias_max": float(chi2.max()),
        "worst_theta": theta[int(chi2.argmax())].tolist(),
        "chi2_z_mean": float(zvar.sum((1, 2)).mean()),
        "noise_ratio_mean": float(s.mean()),
        "noise_ratio_min": float(s.min()),
        "noise_ratio_max": float(s.max()),
        "kl_proxy_mean": float(kl.mean()),
    }


def screen(name: str, args: argparse.Namespace) -> dict[str, Any]:
    sim = simulators.get("sersic", size=32)
    prior = sim.prior
    theta = training_design(prior, args.num_train, args.design, args.concentration)
    x = np.asarray(sim.simulate(theta.double().numpy(), seed=1))
    ctor, fit_kw, cls = CONFIGS[name]
    ctor = dict(ctor)
    latent = ctor.pop("latent_dim", 8)
    if issubclass(cls, ConditionalWGAN):
        emu = cls(latent, **{"channels": (8, 16, 32), "prior": prior, **ctor})
        defaults: dict[str, Any] = {"max_epochs": 200, "learning_rate": 1e-3}
    else:
        emu = cls(latent, **{"decoder": "mlp", "channels": (8, 16, 32), "prior": prior, **ctor})
        defaults = {"max_epochs": 200, "patience": 20}
    if isinstance(emu, OracleBasisCVAE):
        emu.clean_images = np.asarray(sim.model_image(theta.double().numpy()), dtype=np.float32)
    c0, t0 = time.process_time(), time.perf_counter()
    emu.fit(theta, x, seed=args.fit_seed, device="cpu", progress=False, **{**defaults, **fit_kw})
    fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - t0
    hold = prior.sample(500, seed=20).double().numpy()
    rec: dict[str, Any] = {
        "config": (name if args.design == "prior" else f"{name}+{args.design}")
        + (f"c{args.concentration:g}" if args.concentration != 0.5 else "")
        + (f"+seed{args.fit_seed}" if args.fit_seed else ""),
        "fit_seed": args.fit_seed,
        "design": args.design,
        "class": cls.__name__,
        "ctor": ctor | {"latent_dim": latent},
        "fit_kwargs": fit_kw,
        "num_train": args.num_train,
        "epochs": emu.history.epochs,
        # the WGAN has no likelihood: its last held-out Wasserstein estimate instead
        "best_val_loss": (
            emu.history.val_wasserstein[-1] if isinstance(emu, ConditionalWGAN) else emu.history.best_val_loss
        ),
        "fit_cpu_s": fit_cpu,
        "fit_wall_s": fit_wall,
        **mean_image_errors(emu, sim, hold),
        # the same on 500 training parameters: far below the held-out value means variance (overfitting)
        "chi2_bias_train_mean": mean_image_errors(emu, sim, theta[:500].double().numpy())["chi2_bias_mean"],
    }
    if args.save_dir:
        emu.save(Path(args.save_dir) / f"{name}.pt")
    test = np.concatenate([prior.sample(8, seed=2).double().numpy(), corners(prior)])
    ratio, err = power_ratio(emu, sim, test, args.num_samples)
    within = within_five_percent(ratio, err)
    rec |= {
        "pk_within_bench8": int(within[:8].sum()),
        "pk_within_corners": int(within[8:].sum()),
        "pk_bins_per_theta": int(ratio.shape[1]),
        "pk_max_dev_bench8": float(np.abs(ratio[:8] - 1).max()),
        "pk_max_dev_corners": float(np.abs(ratio[8:] - 1).max()),
        "pk_ratio": ratio.tolist(),
        "pk_err": err.tolist(),
    }
    if args.sweep:
        # the prior sweep's draws (benchmarks/emulator_prior_sweep.py: prior.sample(n, seed=30))
        s_ratio, s_err = power_ratio(emu, sim, prior.sample(args.sweep, seed=30).double().numpy(), args.num_samples)
        s_within = within_five_percent(s_ratio, s_err)
        rec |= {
            "sweep_num_theta": args.sweep,
            "sweep_theta_all_bins_within": int(s_within.all(1).sum()),
            "sweep_bins_within": int(s_within.sum()),
            "sweep_max_dev_per_theta": np.abs(s_ratio - 1).max(1).tolist(),
        }
    if args.vertices:
        v_ratio, v_err = power_ratio(emu, sim, vertices(prior), args.num_samples)
        v_within = within_five_percent(v_ratio, v_err)
        rec |= {
            "pk_within_vertices": int(v_within.sum()),
            "pk_vertices_all_bins": int(v_within.all(1).sum()),
            "num_vertices": int(v_ratio.shape[0]),
            "pk_max_dev_vertices": float(np.abs(v_ratio - 1).max()),
            "pk_vertex_max_dev": np.abs(v_ratio - 1).max(1).tolist(),
        }
    return rec


def report(recs: list[dict[str, Any]]) -> str:
    lines = [
        "| config | epochs | fit CPU s | best val | chi2_bias mean / p95 / max (train mean) | chi2_z "
        "| s/sigma mean (min-max) | KL proxy | P(k) within: bench 8 / corners 4 | max dev bench / corners "
        "| vertices: bins within / vertices with every bin / max dev | prior sweep: draws with every bin |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        b = r["pk_bins_per_theta"]
        train = r.get("chi2_bias_train_mean", float("nan"))
        lines.append(
            f"| {r['config']} | {r['epochs']} | {r['fit_cpu_s']:.0f} | {r['best_val_loss']:.1f} "
            f"| {r['chi2_bias_mean']:.3f} / {r['chi2_bias_p95']:.3f} / {r['chi2_bias_max']:.2f} ({train:.2f}) "
            f"| {r['chi2_z_mean']:.3f} | {r['noise_ratio_mean']:.3f} ({r['noise_ratio_min']:.3f}-"
            f"{r['noise_ratio_max']:.3f}) | {r['kl_proxy_mean']:.3f} | {r['pk_within_bench8']}/{8 * b} / "
            f"{r['pk_within_corners']}/{4 * b} | {r['pk_max_dev_bench8']:.3f} / {r['pk_max_dev_corners']:.3f} | "
            + (
                f"{r['pk_within_vertices']}/{r['num_vertices'] * b} / {r['pk_vertices_all_bins']}/{r['num_vertices']}"
                f" / {r['pk_max_dev_vertices']:.3f} |"
                if "pk_within_vertices" in r
                else "- |"
            )
            + (
                f" {r['sweep_theta_all_bins_within']}/{r['sweep_num_theta']} |"
                if "sweep_theta_all_bins_within" in r
                else " - |"
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["base"])
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument(
        "--design",
        default="prior",
        help="training parameters: prior, arcsine, mixK (K%% arcsine rows) or betaA_mixK (K%% rows on Beta(A, A))",
    )
    parser.add_argument("--num-samples", type=int, default=1000, help="outputs per theta for P(k)")
    parser.add_argument(
        "--sweep", type=int, default=0, help="also check P(k) at this many prior draws (seed 30, as the prior sweep)"
    )
    parser.add_argument(
        "--vertices", action="store_true", help="also check P(k) at all 2^d vertices of the box (1%% inside)"
    )
    parser.add_argument(
        "--concentration", type=float, default=0.5, help="Beta(c, c) shape of the library design's rows (mixK, arcsine)"
    )
    parser.add_argument("--fit-seed", type=int, default=0, help="the emulator's fit seed (the data stay fixed)")
    parser.add_argument("--out", default=str(ROOT / "results" / "screen_emulators.jsonl"))
    parser.add_argument("--save-dir", default=None, help="write each fitted emulator here")
    parser.add_argument("--report", nargs="*", help="print the table of these result files and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report is not None:
        paths = args.report or [args.out]
        recs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
        print(report(recs))
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.configs:
        rec = screen(name, args)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        logger.info("%s", report([rec]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
