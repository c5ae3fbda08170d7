"""Misspecification checks: how typical is an observation among the training simulations?

A posterior trained on simulations can only be trusted for observations that look like
those simulations. :class:`TypicalityCheck` keeps a *bank* of summaries of training
simulations and a *reference* set of held-out simulations' scores, and rates an observation
by the density of its summary, estimated from its ``k``-th nearest neighbour in the bank::

    log p(s) ~= log k - log N_bank - log V_m - m log r_k(s)

(``m`` summary dimensions, ``V_m = pi^(m/2) / Gamma(m/2 + 1)`` the unit ball's volume,
``r_k`` the distance, in per-dimension standardised units, to the ``k``-th nearest bank
summary). Its p-value is the share of held-out simulations with a density at most as high,
``(1 + #{reference <= log p(s)}) / (N_reference + 1)``. The reference summaries are not in
the bank, so under the null hypothesis (the observation comes from the simulator at some
prior draw) the observation and the references are exchangeable and the p-value is valid
at every level, whatever the shape of the summary distribution; only its power depends on
the summaries and on ``k``.

Posteriors from :class:`sbikit.NPE` carry a check fitted on the flow's embedded context
(the z-scored ``x``, or the embedding's summaries for images): see
:func:`check_observation` and ``FlowPosterior.check_observation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import betabinom
from torch import Tensor

from sbikit.utils import as_float_tensor

__all__ = [
    "TypicalityCheck",
    "ResidualStatistic",
    "ObservationCheck",
    "OutOfDistributionWarning",
    "check_observation",
    "DEFAULT_NEIGHBOURS",
    "min_simulations",
    "WARN_P_VALUE",
    "atypical_count_tail",
]

#: Neighbour whose distance estimates the density (a bias/variance trade-off; 10 is common).
DEFAULT_NEIGHBOURS = 10
#: ``FlowPosterior.sample`` warns when an observation's p-value is below this.
WARN_P_VALUE = 1e-3
# Default sizes of the bank and of the reference set (their product bounds the fit's work).
_BANK_ROWS = 4000
_REFERENCE_ROWS = 2000
# Query rows per distance block (bounds memory to ~ 4096 x bank floats).
_BLOCK = 4096


def min_simulations(neighbours: int = DEFAULT_NEIGHBOURS) -> int:
    """Fewest simulations :meth:`TypicalityCheck.fit` accepts: 20 reference rows (a third) and a bank of ``k + 1``."""
    return max(60, math.ceil(1.5 * (neighbours + 1)))


def atypical_count_tail(k: int, m: int, num_reference: int, level: float) -> float:
    """Null probability that at least ``k`` of ``m`` observations get a p-value ``<= level``.

    The p-values ``(1 + #{reference <= t}) / (N + 1)`` of ``m`` observations share one
    reference set of ``N`` rows, so they are dependent: under the null hypothesis (all
    ``m + N`` statistics exchangeable) the number ``K`` of observations with ``p <= level``
    is the number of observations ranked below the ``(j + 1)``-th smallest reference, with
    ``j = floor(level (N + 1)) - 1``. That order statistic is ``Beta(j + 1, N - j)`` on the
    probability scale and each observation falls below it independently, so ``K`` is
    beta-binomial,

        P(K = i) = C(i + j, j) C(m - i + N - j - 1, N - j - 1) / C(m + N, N).

    Its tail is heavier than a binomial's (with ``m = 1000``, ``N = 999`` and ``level = 1e-3``,
    ``P(K >= 6)`` is 1.6% against 0.06% for ``Binomial(m, level)``).

    Args:
        k: observed count (``>= 0``).
        m: number of observations.
        num_reference: ``N``.
        level: the p-value threshold.

    Returns:
        ``P(K >= k)``; ``1`` for ``k <= 0``, ``0`` when ``level`` resolves no p-value
        (``level < 1 / (N + 1)``) and ``k >= 1``.
    """
    if k <= 0:
        return 1.0
    n = int(num_reference)
    j = math.floor(level * (n + 1) * (1 + 1e-9)) - 1
    if j < 0:
        return 0.0
    if j >= n:  # every p-value is <= level
        return 1.0 if k <= m else 0.0
    return float(betabinom.sf(k - 1, m, j + 1, n - j))


class OutOfDistributionWarning(UserWarning):
    """An observation is atypical of the simulations a posterior was trained on."""


@dataclass(frozen=True)
class ObservationCheck:
    """The verdict of :meth:`TypicalityCheck.check` for ``m`` observations.

    Attributes:
        log_density: ``(m,)`` k-NN log density of each summary (standardised units).
        p_value: ``(m,)`` share of held-out simulations that are at most as typical.
        alpha: the level of the test.
        reference_median: median log density of the held-out simulations (for scale).
    """

    log_density: Tensor
    p_value: Tensor
    alpha: float
    reference_median: float

    @property
    def typical(self) -> Tensor:
        """``(m,)`` bool: ``p_value >= alpha``."""
        return self.p_value >= self.alpha

    @property
    def all_typical(self) -> bool:
        return bool(self.typical.all())

    def __len__(self) -> int:
        return len(self.p_value)

    def __str__(self) -> str:
        lines = []
        for i, (lp, p) in enumerate(zip(self.log_density.tolist(), self.p_value.tolist(), strict=True)):
            verdict = "typical" if p >= self.alpha else f"OUT OF DISTRIBUTION at alpha={self.alpha:g}"
            lines.append(
                f"observation {i}: p = {p:.3g}, log density {lp:.2f} "
                f"(median of the training simulations {self.reference_median:.2f}): {verdict}"
            )
        return "\n".join(lines)


class ResidualStatistic:
    """``log`` RMS of what the leading principal components of the data do not explain.

    Summaries learned to predict parameters discard what does not inform them, such as the
    noise level; appended to them, this statistic keeps the check sensitive to it. Fitted
    on flattened training data ``(n, p)``: the mean ``(p,)`` and the leading
    ``num_components`` principal directions ``(p, k)`` (randomised SVD).

    Args:
        mean: ``(p,)``.
        components: ``(p, k)`` orthonormal columns.
    """

    def __init__(self, mean: Tensor, components: Tensor) -> None:
        if mean.ndim != 1 or components.ndim != 2 or components.shape[0] != mean.shape[0]:
            raise ValueError(
                f"mean (p,) and components (p, k) expected, got {tuple(mean.shape)}, {tuple(components.shape)}"
            )
        self.mean = mean.float()
        self.components = components.float()

    @classmethod
    def fit(cls, x: Tensor, *, num_components: int = 8, seed: int | None = 0) -> ResidualStatistic:
        """Principal directions of ``x`` ``(n, *shape)`` (flattened), ``n > num_components``."""
        flat = x.reshape(len(x), -1).float()
        n, p = flat.shape
        k = max(0, min(int(num_components), p - 1, n - 1))
        mean = flat.mean(0)
        if k == 0:  # one feature (or one row): the residual is all of x - mean
            return cls(mean, flat.new_zeros(p, 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else int(seed))
            _, _, v = torch.pca_lowrank(flat - mean, q=min(k + 4, n, p), center=False, niter=4)
        return cls(mean, v[:, :k])

    def __call__(self, x: Tensor) -> Tensor:
        """``(n, 1)``: log RMS residual of ``x`` ``(n, *shape)`` after projecting out the components."""
        r = x.reshape(len(x), -1).float().to(self.mean.device) - self.mean
        r = r - (r @ self.components) @ self.components.T
        return torch.log(r.pow(2).mean(1).sqrt().clamp_min(1e-30))[:, None]

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "components": self.components.clone()}


class TypicalityCheck:
    """k-nearest-neighbour density of summaries, with p-values from held-out simulations.

    Build it with :meth:`fit` from summaries of simulations from the prior predictive (the
    training set), then :meth:`check` observations' summaries.

    Args:
        bank: ``(N_bank, m)`` summaries the densities are estimated from.
        reference: ``(N_ref,)`` log densities of held-out summaries (not in the bank).
        shift: ``(m,)`` per-dimension mean used to standardise summaries.
        scale: ``(m,)`` per-dimension standard deviation used to standardise summaries.
        neighbours: ``k``.
        residual: a :class:`ResidualStatistic` of the raw data that the summaries' last
            column holds (posteriors with an embedding append it); ``None`` where there is
            none. Carried here so that it is saved with the check.
    """

    def __init__(
        self,
        bank: Tensor,
        reference: Tensor,
        shift: Tensor,
        scale: Tensor,
        *,
        neighbours: int,
        residual: ResidualStatistic | None = None,
    ) -> None:
        if bank.ndim != 2 or reference.ndim != 1:
            raise ValueError(
                f"bank must be (N, m) and reference (N_ref,), got {tuple(bank.shape)}, {tuple(reference.shape)}"
            )
        if not 1 <= int(neighbours) <= len(bank):
            raise ValueError(f"neighbours must be in [1, {len(bank)}] (the bank size), got {neighbours}")
        self.bank = bank.float()
        self.reference = torch.sort(reference.double()).values
        self.shift = shift.float()
        self.scale = scale.float()
        self.neighbours = int(neighbours)
        self.residual = residual

    @property
    def dim(self) -> int:
        """Summary dimension ``m``."""
        return int(self.bank.shape[1])

    # -- construction --------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        summaries: Any,
        *,
        neighbours: int = DEFAULT_NEIGHBOURS,
        bank_rows: int = _BANK_ROWS,
        reference_rows: int = _REFERENCE_ROWS,
        seed: int | None = 0,
        residual: ResidualStatistic | None = None,
    ) -> TypicalityCheck:
        """Split summaries of simulations into a bank and a held-out reference set.

        Args:
            summaries: ``(n, m)`` summaries of simulations drawn from the prior predictive.
            neighbours: ``k``, the neighbour whose distance estimates the density.
            bank_rows: most rows kept in the bank (distance work grows with it).
            reference_rows: most held-out rows scored for the p-values (their resolution is
                ``1 / (reference_rows + 1)``).
            seed: seed of the random split.
            residual: kept with the check (see the class docstring); the caller appends its
                values to ``summaries``.

        Raises:
            ValueError: for summaries that are not ``(n, m)``, not finite, or too few
                (at least ``neighbours + 1`` bank rows and 20 reference rows).
        """
        s = as_float_tensor(summaries, "summaries")
        if s.ndim != 2:
            raise ValueError(f"summaries must have shape (n, m), got {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError("summaries hold NaN or inf")
        n = len(s)
        num_ref = min(int(reference_rows), n // 3)
        num_bank = min(int(bank_rows), n - num_ref)
        if num_ref < 20 or num_bank < int(neighbours) + 1:
            raise ValueError(
                f"{n} simulations are too few for a typicality check with {neighbours} neighbours "
                f"(needs at least {min_simulations(int(neighbours))})"
            )
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        perm = torch.randperm(n, generator=gen)
        bank, held = s[perm[:num_bank]], s[perm[num_bank : num_bank + num_ref]]
        shift = bank.mean(0)
        scale = bank.std(0).clamp_min(1e-12)
        check = cls(bank, torch.zeros(1), shift, scale, neighbours=neighbours, residual=residual)
        check.reference = torch.sort(check.log_density(held)).values
        return check

    # -- scoring ---------------------------------------------------------------------------
    def log_density(self, summaries: Any) -> Tensor:
        """k-NN log density ``(m_obs,)`` of summaries ``(m_obs, m)`` (standardised units), float64."""
        s = self._check(summaries)
        bank = (self.bank - self.shift) / self.scale
        z = (s - self.shift) / self.scale
        r = torch.empty(len(z), dtype=torch.float64)
        for i in range(0, len(z), _BLOCK):
            d = torch.cdist(z[i : i + _BLOCK], bank)
            r[i : i + _BLOCK] = d.kthvalue(self.neighbours, dim=1).values.double()
        m = self.dim
        log_unit_ball = 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m + 1)
        log_r = torch.log(r.clamp_min(1e-30))
        return math.log(self.neighbours) - math.log(len(self.bank)) - log_unit_ball - m * log_r

    def p_value(self, summaries: Any) -> Tensor:
        """``(m_obs,)``: ``(1 + #{reference <= log density}) / (N_ref + 1)``."""
        return self._p_from_log_density(self.log_density(summaries))

    def _p_from_log_density(self, lp: Tensor) -> Tensor:
        below = torch.searchsorted(self.reference, lp, right=True)
        return (1.0 + below.double()) / (len(self.reference) + 1.0)

    def check(self, summaries: Any, *, alpha: float = 0.05) -> ObservationCheck:
        """Test each summary row for typicality at level ``alpha``."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        lp = self.log_density(summaries)
        return ObservationCheck(lp, self._p_from_log_density(lp), float(alpha), float(self.reference.median()))

    def _check(self, summaries: Any) -> Tensor:
        s = as_float_tensor(summaries, "summaries")
        if s.ndim == 1:
            s = s[None]
        if s.ndim != 2 or s.shape[1] != self.dim:
            raise ValueError(f"summaries must have shape (n, {self.dim}), got {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError("summaries hold NaN or inf")
        return s.cpu()

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Tensors and ints only (loadable with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "bank": self.bank.clone(),
            "reference": self.reference.clone(),
            "shift": self.shift.clone(),
            "scale": self.scale.clone(),
            "neighbours": self.neighbours,
        }
        if self.residual is not None:
            out["residual"] = self.residual.state()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TypicalityCheck:
        res = state.get("residual")
        return cls(
            state["bank"],
            state["reference"],
            state["shift"],
            state["scale"],
            neighbours=int(state["neighbours"]),
            residual=None if res is None else ResidualStatistic(res["mean"], res["components"]),
        )

    def __repr__(self) -> str:
        return (
            f"TypicalityCheck(m={self.dim}, bank={len(self.bank)}, reference={len(self.reference)}, "
            f"neighbours={self.neighbours})"
        )


def check_observation(posterior: Any, x_o: Any, *, alpha: float = 0.05) -> ObservationCheck:
    """How typical ``x_o`` is among the simulations ``posterior`` was trained on.

    Args:
        posterior: any object with a ``check_observation(x, alpha=)`` method (sbikit's NPE
            posteriors).
        x_o: one observation or a batch ``(m, *x_shape)``.
        alpha: level of the test.

    Returns:
        An :class:`ObservationCheck` (``str()`` of it is a readable report).

    Raises:
        TypeError: when ``posterior`` cannot check observations.
    """
    method = getattr(posterior, "check_observation", None)
    if method is None:
        raise TypeError(
            f"{type(posterior).__name__} has no check_observation(); fit a TypicalityCheck on summaries of "
            "your training simulations instead: TypicalityCheck.fit(summaries).check(summary_of_x_o)"
        )
    return method(x_o, alpha=alpha)
