"""Tests for sbikit.inference.posterior: sampling, support, normalised densities, MAP, save/load, devices.

The posteriors are tiny NPEs trained for a few epochs: these tests check exact properties
(shapes, seeds, support, normalisation, round trips), not accuracy, so a rough fit is enough.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sbikit
import simulators
from sbikit import NPE, BoxUniform, FlowPosterior, Gaussian, Independent, LogNormal
from sbikit.priors import Prior

SMALL = {"hidden_features": 16, "num_transforms": 2}


def _train(prior: Prior, simulate: Callable, *, n: int = 1000, flow: str = "maf", max_epochs: int = 5) -> FlowPosterior:
    """Simulate ``n`` pairs with ``simulate(theta_numpy, rng)`` and fit a tiny NPE."""
    theta = prior.sample(n, seed=0)
    x = simulate(theta.double().numpy(), np.random.default_rng(1))
    return NPE(prior, flow=flow, device="cpu", **SMALL).fit(theta, x, seed=0, max_epochs=max_epochs, progress=False)


@pytest.fixture(scope="module")
def gl() -> tuple[FlowPosterior, simulators.Simulator]:
    """Gaussian linear, d = 2: the posterior is N(x/2, 0.05 I)."""
    sim = simulators.get("gaussian_linear", dim=2)
    theta = sim.prior.sample(2000, seed=0)
    x = sim.simulate(theta, seed=1)
    post = NPE(sim.prior, flow="maf", device="cpu", **SMALL).fit(theta, x, seed=0, max_epochs=20, progress=False)
    return post, sim


@pytest.fixture(scope="module")
def moons() -> tuple[FlowPosterior, simulators.Simulator]:
    """Two moons: a BoxUniform([-1, 1]^2) prior."""
    sim = simulators.get("two_moons")
    theta = sim.prior.sample(2000, seed=0)
    x = sim.simulate(theta, seed=1)
    post = NPE(sim.prior, flow="maf", device="cpu", **SMALL).fit(theta, x, seed=0, max_epochs=10, progress=False)
    return post, sim


# -- sampling ------------------------------------------------------------------------------


def test_sample_shapes_dtype_device(gl) -> None:
    post, _ = gl
    x_o = torch.tensor([0.3, -0.2])
    s = post.sample(100, x=x_o, seed=0)
    assert s.shape == (100, 2) and s.dtype == torch.float32 and s.device.type == "cpu"
    xs = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.0]])
    sb = post.sample(50, x=xs, seed=0)
    assert sb.shape == (3, 50, 2) and sb.dtype == torch.float32 and sb.device.type == "cpu"
    assert post.sample(7, x=xs[:1], seed=0).shape == (1, 7, 2)
    assert post.sample(0, x=x_o).shape == (0, 2)
    # numpy input works and gives a torch tensor
    assert isinstance(post.sample(5, x=np.array([0.3, -0.2]), seed=0), torch.Tensor)
    with pytest.raises(ValueError, match="non-negative"):
        post.sample(-1, x=x_o)


def test_sample_seed_repeatability(gl) -> None:
    post, _ = gl
    x_o = torch.tensor([0.3, -0.2])
    a = post.sample(500, x=x_o, seed=3)
    b = post.sample(500, x=x_o, seed=3)
    c = post.sample(500, x=x_o, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    xs = torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    assert torch.equal(post.sample(200, x=xs, seed=5), post.sample(200, x=xs, seed=5))


def test_batch_rows_follow_their_own_observation(gl) -> None:
    """Row i of a batch draw has the distribution of a single draw at x_i (no mixed-up rows).

    The posterior sd is ~0.22, so the mean of 4000 draws has MC error ~0.0035 per estimate and
    the difference of two such means ~0.005; 0.03 is 6 sigma. The two x's differ by ~0.8 in
    posterior mean, so swapped rows fail clearly.
    """
    post, _ = gl
    xs = torch.tensor([[-0.8, 0.8], [0.8, -0.8]])
    batch = post.sample(4000, x=xs, seed=0)
    for i in range(2):
        single = post.sample(4000, x=xs[i], seed=1 + i)
        torch.testing.assert_close(batch[i].mean(0), single.mean(0), atol=0.03, rtol=0)
    assert (batch[0].mean(0) - batch[1].mean(0)).abs().min() > 0.3


def test_sample_chunking_keeps_shapes_and_support(moons) -> None:
    post, _ = moons
    xs = torch.tensor([[0.0, 0.1], [-0.2, 0.3], [0.1, -0.1]])
    s = post.sample(300, x=xs, seed=0, chunk_size=128)
    assert s.shape == (3, 300, 2)
    assert post.prior.in_support(s).all()


def _lognormal_case() -> tuple[Prior, Callable]:
    return LogNormal([0.0, 1.0], [0.5, 0.3]), lambda th, rng: np.log(th) + 0.1 * rng.standard_normal(th.shape)


def _independent_case() -> tuple[Prior, Callable]:
    prior = Independent([BoxUniform([0.0], [1.0]), Gaussian([2.0], [4.0])])
    return prior, lambda th, rng: th + 0.1 * rng.standard_normal(th.shape)


def _moons_case() -> tuple[Prior, Callable]:
    sim = simulators.get("two_moons")
    return sim.prior, lambda th, rng: sim.simulate(th, rng=rng)


@pytest.mark.parametrize(
    ("case", "flow"),
    [
        (_moons_case, "maf"),
        (_moons_case, "realnvp"),
        (_moons_case, "nsf"),
        (_lognormal_case, "maf"),
        (_independent_case, "maf"),
    ],
    ids=["moons-maf", "moons-realnvp", "moons-nsf", "lognormal-maf", "independent-maf"],
)
def test_samples_never_leave_the_prior_support(case, flow: str) -> None:
    # 100k draws for the three priors (maf); 10k for the slower-to-sample realnvp/nsf variants.
    num = 100_000 if flow == "maf" else 10_000
    prior, simulate = case()
    post = _train(prior, simulate, flow=flow, max_epochs=3)
    theta = prior.sample(1, seed=5)
    x_typical = torch.as_tensor(simulate(theta.double().numpy(), np.random.default_rng(2))[0])
    # Far outside anything simulated: tens of (training) standard deviations away.
    x_far = torch.full_like(x_typical, 40.0) * torch.tensor([1.0, -1.0])
    for x_o in (x_typical, x_far):
        s = post.sample(num, x=x_o, seed=0)
        assert s.shape == (num, prior.dim) and torch.isfinite(s).all()
        assert prior.in_support(s).all(), f"{int((~prior.in_support(s)).sum())} samples outside the support"


# -- densities ---------------------------------------------------------------------------


def _integrate_box(post: FlowPosterior, x_o: torch.Tensor, low: list[float], high: list[float], num: int) -> float:
    """Midpoint rule for the integral of exp(log_prob) over the box (the prior support)."""
    lo, hi = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    axes = [lo[i] + (hi[i] - lo[i]) * (torch.arange(num, dtype=torch.float64) + 0.5) / num for i in range(len(low))]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(low))
    lp = post.log_prob(grid.float(), x=x_o).double()
    assert torch.isfinite(lp).all()
    return float(lp.exp().sum() * ((hi - lo) / num).prod())


def test_log_prob_is_normalised_on_a_1d_box() -> None:
    """1-d BoxUniform posterior: the midpoint rule on (-1, 1) with 1000 and 2000 cells.

    The density is smooth inside the box, so the rule's O(h^2) error is measured by the
    change under halving; we require it below 1e-3 and the integral within 5e-3 of 1
    (float32 log densities contribute ~1e-6 relative error). A density that forgot the
    Jacobian of the logit map would integrate to something else entirely (here > 1.5).
    """
    prior = BoxUniform([-1.0], [1.0])
    post = _train(prior, lambda th, rng: th + 0.3 * rng.standard_normal(th.shape), max_epochs=5)
    assert post.x_shape == (1,)
    for x_o in (torch.tensor([0.2]), torch.tensor([0.95])):
        coarse = _integrate_box(post, x_o, [-1.0], [1.0], 1000)
        fine = _integrate_box(post, x_o, [-1.0], [1.0], 2000)
        assert abs(fine - coarse) < 1e-3
        assert abs(fine - 1.0) < 5e-3, (coarse, fine)


def test_log_prob_is_normalised_on_a_2d_box(moons) -> None:
    """Two moons posterior on [-1, 1]^2: midpoint rule with 150^2 and 300^2 cells.

    Tolerance: the change under halving the spacing estimates the grid error (required
    < 5e-3); the integral must be within 1e-2 of 1. Missing the logit Jacobian or the
    standardisation scale would change the integral by factors of order 1.
    """
    post, sim = moons
    x_o = sim.simulate(torch.tensor([0.3, -0.4]), seed=3)
    coarse = _integrate_box(post, x_o, [-1.0, -1.0], [1.0, 1.0], 150)
    fine = _integrate_box(post, x_o, [-1.0, -1.0], [1.0, 1.0], 300)
    assert abs(fine - coarse) < 5e-3
    assert abs(fine - 1.0) < 1e-2, (coarse, fine)


def test_log_prob_is_minus_inf_outside_the_support(moons) -> None:
    post, _ = moons
    x_o = torch.tensor([0.0, 0.1])
    theta = torch.tensor([[0.2, 0.3], [1.5, 0.0], [0.0, -1.0001], [1.0, 0.0], [-1.0, 0.5], [0.0, float("nan")]])
    lp = post.log_prob(theta, x=x_o)
    assert torch.isfinite(lp[0])
    assert torch.isneginf(lp[1:]).all()


def test_log_prob_broadcast_equals_repeated_x(gl) -> None:
    post, _ = gl
    theta = post.sample(64, x=torch.tensor([0.3, -0.2]), seed=0)
    x_o = torch.tensor([0.3, -0.2])
    lp_one = post.log_prob(theta, x=x_o)
    lp_rep = post.log_prob(theta, x=x_o.expand(64, -1))
    assert lp_one.shape == lp_rep.shape == (64,)
    torch.testing.assert_close(lp_one, lp_rep, atol=1e-5, rtol=0)
    # paired rows: row i uses x_i
    xs = torch.randn(64, 2) * 0.5
    paired = post.log_prob(theta, x=xs)
    for i in (0, 17, 63):
        torch.testing.assert_close(paired[i], post.log_prob(theta[i], x=xs[i]), atol=1e-5, rtol=0)


def test_log_prob_shapes_and_errors(gl) -> None:
    post, _ = gl
    x_o = torch.tensor([0.3, -0.2])
    assert post.log_prob(torch.zeros(5, 2), x=x_o).shape == (5,)
    single = post.log_prob(torch.zeros(2), x=x_o)
    assert single.shape == () and torch.isfinite(single)
    assert post.log_prob(np.zeros((3, 2)), x=x_o.numpy()).shape == (3,)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\).*got \(5, 3\)"):
        post.log_prob(torch.zeros(5, 3), x=x_o)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\)"):
        post.log_prob(torch.zeros(3), x=x_o)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\).*got \(2, 2, 2\)"):
        post.log_prob(torch.zeros(2, 2, 2), x=x_o)
    with pytest.raises(ValueError, match="rows"):
        post.log_prob(torch.zeros(5, 2), x=torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(2,\)"):
        post.log_prob(torch.zeros(5, 2), x=torch.zeros(3))


def test_log_prob_error_names_the_shape_passed(gl) -> None:
    post, _ = gl
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        post.log_prob(torch.zeros(3), x=torch.zeros(2))


def test_log_prob_has_no_autograd_graph(gl) -> None:
    post, _ = gl
    lp = post.log_prob(torch.zeros(3, 2, requires_grad=True), x=torch.zeros(2))
    assert not lp.requires_grad


# -- MAP -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["gl", "moons"])
def test_map_is_in_support_and_beats_samples(fixture: str, request: pytest.FixtureRequest) -> None:
    post, sim = request.getfixturevalue(fixture)
    x_o = sim.simulate(sim.prior.sample(1, seed=9)[0], seed=4)
    theta_map = post.map(x_o, num_steps=100)
    assert theta_map.shape == (2,)
    assert post.prior.in_support(theta_map)
    samples = post.sample(1000, x=x_o, seed=11)
    best_sample = post.log_prob(samples, x=x_o).max()
    # Adam with lr=0.01 on u ends within ~1e-3 nats of a mode; 0.01 leaves room for that.
    assert post.log_prob(theta_map, x=x_o) >= best_sample - 0.01


def test_map_of_a_batch(gl) -> None:
    post, _ = gl
    xs = torch.tensor([[0.3, -0.2], [-0.5, 0.4]])
    out = post.map(xs, num_init=200, num_steps=20)
    assert out.shape == (2, 2)
    # map leaves the flow trainable
    assert all(p.requires_grad for p in post.flow.parameters())
    for i in range(2):
        torch.testing.assert_close(out[i], post.map(xs[i], num_init=200, num_steps=20))


def test_map_restores_requires_grad_flags() -> None:
    prior = BoxUniform([-1.0], [1.0])
    post = _train(prior, lambda th, rng: th + 0.3 * rng.standard_normal(th.shape), n=200, max_epochs=1)
    frozen = next(post.flow.parameters())
    frozen.requires_grad_(False)  # e.g. a user freezing part of the network before fine-tuning
    post.map(torch.tensor([0.2]), num_init=50, num_steps=2)
    assert not frozen.requires_grad


def test_npe_fit_is_repeatable_with_a_seed() -> None:
    sim = simulators.get("gaussian_linear", dim=2)
    theta = sim.prior.sample(300, seed=0)
    x = sim.simulate(theta, seed=1)
    posts = [
        NPE(sim.prior, device="cpu", **SMALL).fit(theta, x, seed=s, max_epochs=2, progress=False) for s in (4, 4, 5)
    ]
    probe = theta[:20]
    lps = [p.log_prob(probe, x=x[:20]) for p in posts]
    assert torch.equal(lps[0], lps[1])
    assert posts[0].info["val_loss"] == posts[1].info["val_loss"]
    assert not torch.equal(lps[0], lps[2])


# -- save / load ------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["gl", "moons"])
def test_save_load_round_trip(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    post, sim = request.getfixturevalue(fixture)
    path = post.save(tmp_path / "sub" / "post.pt")
    assert path == tmp_path / "sub" / "post.pt" and path.exists()
    loaded = sbikit.load(path, device="cpu")
    assert isinstance(loaded, FlowPosterior)
    assert loaded.device.type == "cpu"
    assert loaded.x_shape == post.x_shape and loaded.theta_names == post.theta_names
    assert loaded.prior.to_config() == post.prior.to_config()
    assert loaded.info == post.info
    x_o = sim.simulate(sim.prior.sample(1, seed=2)[0], seed=3)
    theta = post.sample(200, x=x_o, seed=1)
    torch.testing.assert_close(loaded.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o), atol=1e-6, rtol=0)
    assert torch.equal(loaded.sample(300, x=x_o, seed=8), post.sample(300, x=x_o, seed=8))
    # load accepts a str path as well
    assert isinstance(sbikit.load(str(path)), FlowPosterior)


def test_save_is_atomic_and_leaves_no_temporary_files(gl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    post, _ = gl
    path = tmp_path / "post.pt"
    post.save(path)
    post.save(path)  # overwriting works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.pt"]
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        post.save(path)
    monkeypatch.undo()
    # A failed save leaves the old file untouched and no temporary file behind.
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.pt"]
    assert isinstance(sbikit.load(path), FlowPosterior)


def test_load_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "post.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        sbikit.load(missing)


def test_load_non_posterior_torch_file_raises_value_error(tmp_path: Path) -> None:
    for i, obj in enumerate([{"a": torch.zeros(2)}, [1, 2, 3], {"format": "something-else"}]):
        path = tmp_path / f"other{i}.pt"
        torch.save(obj, path)
        with pytest.raises(ValueError, match="not an sbikit posterior"):
            sbikit.load(path)


def test_load_newer_format_version_raises(gl, tmp_path: Path) -> None:
    post, _ = gl
    path = post.save(tmp_path / "post.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = 999
    torch.save(payload, path)
    with pytest.raises(ValueError, match="newer"):
        sbikit.load(path)


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "sbikit-posterior", "version": 1, "payload": _Evil(marker)}, path)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do here; its type is tested below
        sbikit.load(path)
    assert not marker.exists()
    # Positive control: the file really is malicious when unpickled without weights_only.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    return path


def _evil_file(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"payload": _Evil(tmp_path / "pwned")}, path)
    return path


@pytest.mark.parametrize("make", [_text_file, _empty_file, _evil_file], ids=["text", "empty", "malicious"])
def test_load_unreadable_file_raises_value_error(make: Callable[[Path], Path], tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError, match="not an sbikit posterior"):
        sbikit.load(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("cls", ["os:system", "subprocess:Popen", "builtins:dict"])
def test_load_refuses_embedding_classes_that_are_not_modules(cls: str, gl, tmp_path: Path) -> None:
    """The config names an embedding by import path; only nn.Module subclasses may be built."""
    import json

    post, _ = gl
    path = post.save(tmp_path / "post.pt")
    payload = torch.load(path, weights_only=True)
    cfg = json.loads(payload["config"])
    cfg["embedding"] = {"class": cls, "kwargs": {"args": ["touch", str(tmp_path / "pwned")]}}
    payload["config"] = json.dumps(cfg)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not an nn.Module"):
        sbikit.load(path)
    assert not (tmp_path / "pwned").exists()


def test_save_with_embedding_without_get_config_raises(tmp_path: Path) -> None:
    prior = BoxUniform([-1.0, -1.0], [1.0, 1.0])
    theta = prior.sample(200, seed=0)
    x = theta.repeat(1, 2) + 0.1 * torch.randn(200, 4)
    post = NPE(prior, embedding=nn.Sequential(nn.Linear(4, 3), nn.Tanh()), device="cpu", **SMALL).fit(
        theta, x, seed=0, max_epochs=1, progress=False
    )
    assert post.sample(3, x=x[0], seed=0).shape == (3, 2)
    with pytest.raises(ValueError, match="get_config"):
        post.save(tmp_path / "post.pt")
    assert list(tmp_path.iterdir()) == []


# -- devices ----------------------------------------------------------------------------


def test_to_cpu_works(gl) -> None:
    post, _ = gl
    assert post.to("cpu") is post
    assert post.device.type == "cpu"
    assert post.sample(10, x=torch.zeros(2), seed=0).shape == (10, 2)
    assert "FlowPosterior" in repr(post)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_without_cuda_raises(gl, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        NPE(BoxUniform([0.0], [1.0]), device="cuda")
    post, _ = gl
    with pytest.raises(ValueError, match="CUDA"):
        post.to("cuda")
    path = post.save(tmp_path / "post.pt")
    with pytest.raises(ValueError, match="CUDA"):
        sbikit.load(path, device="cuda")
    assert post.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_on_cuda_save_load_on_cpu(tmp_path: Path) -> None:
    sim = simulators.get("gaussian_linear", dim=2)
    theta = sim.prior.sample(1000, seed=0)
    x = sim.simulate(theta, seed=1)
    post = NPE(sim.prior, device="cuda", **SMALL).fit(theta, x, seed=0, max_epochs=3, progress=False)
    assert post.device.type == "cuda"
    x_o = torch.tensor([0.3, -0.2])
    s = post.sample(100, x=x_o, seed=0)
    assert s.device.type == "cpu" and s.dtype == torch.float32 and s.shape == (100, 2)
    lp_gpu = post.log_prob(s, x=x_o)
    assert lp_gpu.device.type == "cpu"
    loaded = sbikit.load(post.save(tmp_path / "post.pt"), device="cpu")
    assert loaded.device.type == "cpu"
    # Same weights on another device: equal up to float32 kernel differences.
    torch.testing.assert_close(loaded.log_prob(s, x=x_o), lp_gpu, atol=1e-4, rtol=1e-5)
    assert loaded.sample(10, x=x_o, seed=0).shape == (10, 2)
