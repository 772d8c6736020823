"""Malicious updates crafted from benign ones: the update rules of the untargeted attacks
that know the aggregation's inputs (the math of issue 14, free of Flower and of the
round loop, as ``defenses/rules`` is for the defenses).

Every function takes ``benign``, an ``(n, d)`` float tensor of benign updates (rows:
clients, the attackers' view of the round) and returns one ``(d,)`` malicious update,
vectorised over clients and coordinates.

- :func:`alie_z`, :func:`alie`: "A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS
  2019): per coordinate ``mean - z_max * std``, with ``z_max`` chosen from the number of
  clients and attackers so that enough benign clients look farther from the mean
  (``z_formula``: the paper's ``Phi^-1((n - s) / n)``, or ``Phi^-1((n - m - s) / (n - m))``,
  the share among the benign clients, as other public implementations compute it).
- :func:`ipm`: inner-product manipulation (Xie, Koyejo, Gupta, UAI 2020): ``-eps * mean``.
- :func:`position`: where a crafted update lies against the round's honest updates, in
  the units the papers argue in (logged by the crafting stage every attack round).
- :func:`min_max`, :func:`min_sum`: the aggregation-agnostic attacks of Shejwalkar and
  Houmansadr (NDSS 2021): ``mean + gamma * p`` with the largest ``gamma`` (halving
  search) whose update is no farther from the benign ones than they are from each other:
  its largest distance (Min-Max) or its sum of squared distances (Min-Sum) at most the
  benign updates' largest one (Min-Sum's ``bound``: ``"max"`` as the paper's text says,
  ``"min"``, the smallest benign sum, as the authors' code computes it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass
class Position:
    """Where a crafted update ``c`` lies against the honest updates ``h_i`` of its round
    (mean ``mu``, per-coordinate standard deviation ``sd`` with Bessel's correction).

    z: the mean over coordinates of ``|c - mu| / sd`` (coordinates with ``sd = 0`` left
        out): an ALIE update crafted from every update sits about ``z_max`` away.
    norm_ratio: ``||c - mu||`` over the honest updates' root-mean-square distance to
        ``mu``; below 1 the crafted update is closer to the honest mean than a typical
        honest update, and a distance-based rule has no reason to drop it.
    shift: ``||c - mu|| / ||mu||``, its distance from the honest mean relative to the
        mean's own length; cos: its cosine with ``mu``. A kept update with a small
        ``shift`` and ``cos`` near 1 still points where the honest clients go.
    """

    z: float
    norm_ratio: float
    shift: float
    cos: float

    def as_log(self) -> dict[str, float]:
        """The round record's entries (``crafted_z``, ``crafted_norm_ratio``, ...)."""
        return {f"crafted_{k}": v for k, v in asdict(self).items()}


def position(honest: torch.Tensor, crafted: torch.Tensor) -> Position:
    """The ``(d,)`` crafted update against the ``(k, d)`` honest ones, ``k >= 2``
    (float64, vectorised over clients and coordinates; NaN where a measure is undefined)."""
    h, c = honest.double(), crafted.double()
    mu, sd = h.mean(dim=0), h.std(dim=0)
    gap = c - mu
    spread = sd > 0
    z = float((gap[spread].abs() / sd[spread]).mean()) if bool(spread.any()) else math.nan
    rms = float(((h - mu) ** 2).sum(dim=1).mean().sqrt())
    gap_norm, mu_norm, c_norm = float(gap.norm()), float(mu.norm()), float(c.norm())
    return Position(
        z=z,
        norm_ratio=gap_norm / rms if rms > 0 else math.nan,
        shift=gap_norm / mu_norm if mu_norm > 0 else math.nan,
        cos=float(c @ mu) / (c_norm * mu_norm) if mu_norm > 0 and c_norm > 0 else math.nan,
    )


#: Perturbation directions ``p`` of Min-Max / Min-Sum (the paper's three).
DIRECTIONS = ("unit", "std", "sign")


#: ALIE's ``z_max`` (:func:`alie_z`): the paper's formula, or the benign clients' share;
#: ``fixed`` (the attack's ``z``, as the authors' code's ``-z`` and the NDSS'21 code's
#: table) is the attack's, not a formula of n and m.
Z_FORMULAS = ("paper", "benign-share", "fixed")
#: Min-Sum's bound (:func:`min_sum`): the largest benign sum (paper), the smallest (code).
SUM_BOUNDS = ("max", "min")


def alie_z(num_clients: int, num_attackers: int, formula: str = "paper") -> float:
    """Baruch et al.'s ``z_max``: with ``s = floor(n / 2 + 1) - m`` benign clients needed
    beside the ``m`` attackers for a majority, ``z_max = Phi^-1((n - s) / n)``
    (``formula = "paper"``, Algorithm 1 of the paper). ``"benign-share"``:
    ``Phi^-1((n - m - s) / (n - m))``, the share of the ``n - m`` benign clients that must
    lie farther from the mean, as e.g. Karimireddy et al.'s bucketing code (epfml) and
    Blades compute it (defined for ``n - m - s > 0``)."""
    if not 0 < num_attackers < num_clients:
        raise ValueError(f"need 0 < attackers < clients, got {num_attackers} of {num_clients}")
    s = math.floor(num_clients / 2 + 1) - num_attackers
    if s <= 0:
        raise ValueError(f"{num_attackers} attackers of {num_clients} clients are a majority")
    from scipy.stats import norm  # 1 s to import: only when an ALIE update is crafted

    if formula == "paper":
        return float(norm.ppf((num_clients - s) / num_clients))
    if formula == "benign-share":
        benign = num_clients - num_attackers
        if benign - s <= 0:
            raise ValueError(
                f"the benign-share z_max needs n - m - s > 0, got n={num_clients}, "
                f"m={num_attackers}, s={s}"
            )
        return float(norm.ppf((benign - s) / benign))
    raise ValueError(f"unknown z formula {formula!r}; valid: {', '.join(Z_FORMULAS)}")


def alie(
    benign: torch.Tensor,
    num_clients: int,
    num_attackers: int,
    formula: str = "paper",
    z: float | None = None,
) -> torch.Tensor:
    """``mean - z_max * std`` per coordinate (std with Bessel's correction); with
    ``formula = "fixed"``, ``z`` itself instead of ``z_max``."""
    if formula == "fixed":
        if z is None:
            raise ValueError("formula 'fixed' needs z")
    else:
        z = alie_z(num_clients, num_attackers, formula)
    return benign.mean(dim=0) - z * benign.std(dim=0)


def ipm(benign: torch.Tensor, eps: float) -> torch.Tensor:
    """``-eps * mean``: for small eps the aggregate's inner product with the benign mean
    shrinks; for eps > n / m - 1 it turns negative."""
    return -eps * benign.mean(dim=0)


def deviation(benign: torch.Tensor, direction: str) -> torch.Tensor:
    """The perturbation direction ``p`` (the update is ``mean + gamma * p``): ``unit`` is
    ``-mean / ||mean||``, ``std`` is ``-std`` per coordinate, ``sign`` is ``-sign(mean)``."""
    mean = benign.mean(dim=0)
    if direction == "unit":
        return -mean / torch.linalg.vector_norm(mean)
    if direction == "std":
        return -benign.std(dim=0)
    if direction == "sign":
        return -torch.sign(mean)
    raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")


def _largest_gamma(fits, gamma: float, tolerance: float) -> float:
    """The paper's halving search: from ``gamma``, step up by half the last step when the
    update fits, down when it does not, until the step is below ``tolerance``; returns
    the last gamma that fit (0 if none did)."""
    best, step = 0.0, gamma
    while step > tolerance:
        if fits(gamma):
            best = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


def min_max(
    benign: torch.Tensor, direction: str = "unit", gamma: float = 10.0, tolerance: float = 1e-5
) -> torch.Tensor:
    """``mean + gamma * p`` with the largest gamma such that its largest distance to a
    benign update is at most the largest distance between two benign updates."""
    mean, p = benign.mean(dim=0), deviation(benign, direction)
    bound = torch.cdist(benign, benign).max()

    def fits(g: float) -> bool:
        return bool(torch.linalg.vector_norm(benign - (mean + g * p), dim=1).max() <= bound)

    return mean + _largest_gamma(fits, gamma, tolerance) * p


def min_sum(
    benign: torch.Tensor,
    direction: str = "unit",
    gamma: float = 10.0,
    tolerance: float = 1e-5,
    bound: str = "max",
) -> torch.Tensor:
    """``mean + gamma * p`` with the largest gamma such that its sum of squared distances
    to the benign updates is at most the largest such sum of a benign update
    (``bound = "max"``, the paper's text) or the smallest (``"min"``, the authors' code,
    ``our_attack_dist`` of the NDSS'21 release: ``min_score = torch.min(scores)``), a
    smaller gamma (10-20% in the issue's check)."""
    if bound not in SUM_BOUNDS:
        raise ValueError(f"unknown bound {bound!r}; valid: {', '.join(SUM_BOUNDS)}")
    mean, p = benign.mean(dim=0), deviation(benign, direction)
    sums = (torch.cdist(benign, benign) ** 2).sum(dim=1)
    limit = sums.max() if bound == "max" else sums.min()

    def fits(g: float) -> bool:
        return bool((torch.linalg.vector_norm(benign - (mean + g * p), dim=1) ** 2).sum() <= limit)

    return mean + _largest_gamma(fits, gamma, tolerance) * p
