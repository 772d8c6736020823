"""Krum (Blanchard, El Mhamdi, Guerraoui, Stainer; NeurIPS 2017).

"Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec_core.params import one_of

from .base import (
    AggregationResult,
    ByzantineRule,
    ClientBatch,
    keep_mask,
    lowest,
    param,
    squared_distances,
)

#: What a Krum score sums: Blanchard et al.'s squared L2 distances, or the L2 distances
#: themselves, as the ALIE authors' Krum (``defences.py``, ``np.linalg.norm``) sums them.
KRUM_DISTANCES = ("squared", "euclidean")
#: How many nearest neighbours a Krum score sums: Blanchard et al.'s ``n - f - 2``, the
#: ALIE authors' ``n - f`` (``sum(errors[:non_malicious_count])``), or the NDSS'21
#: authors' ``n - f - 3`` (``multi_krum``: the ``n - f - 2`` smallest entries of a row
#: that holds the client's own zero distance).
KRUM_NEIGHBOURS = {"n-f-2": 2, "n-f": 0, "n-f-3": 3}
#: The ``neighbours`` parameter's description of what is valid.
NEIGHBOURS_VALID = "one of " + ", ".join(f"'{name}'" for name in KRUM_NEIGHBOURS)


def krum_scores(
    distances: torch.Tensor, num_malicious: int, neighbours: str = "n-f-2"
) -> torch.Tensor:
    """Krum score of each client: the sum of its ``n - f - 2`` (or ``n - f``, see
    :data:`KRUM_NEIGHBOURS`) smallest entries of ``distances``.

    ``distances`` is the ``(n, n)`` matrix of squared (or plain) distances; a client's
    distance to itself never counts. At least one neighbour counts.
    """
    others = distances.clone().fill_diagonal_(torch.inf)
    count = krum_neighbours(distances.shape[0], num_malicious, KRUM_NEIGHBOURS[neighbours])
    return sum_of_nearest(others, count)


def krum_distances(models: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """Pairwise distances ``(n, n)`` in float64 that a Krum score sums (:data:`KRUM_DISTANCES`)."""
    squared = squared_distances(models)
    return squared if distance == "squared" else squared.sqrt()


def krum_neighbours(n: int, num_malicious: int, slack: int = 2) -> int:
    """How many nearest neighbours a Krum score sums over among ``n`` clients:
    ``n - f - slack``, at least 1 and at most ``n - 1``."""
    return min(max(1, n - num_malicious - slack), n - 1)


def sum_of_nearest(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Row-wise sum of the ``k`` smallest entries (excluded pairs hold ``inf``)."""
    return torch.topk(distances, k, dim=1, largest=False).values.sum(dim=1)


def repeated_krum(
    distances: torch.Tensor, num_malicious: int, count: int, slack: int = 2
) -> torch.Tensor:
    """Indices of ``count`` clients picked one by one by Krum among those not yet picked
    (Bulyan's selection; the NDSS'21 paper's Multi-Krum). Among ``r`` remaining, each
    Krum counts ``r - f - slack`` neighbours (:func:`krum_neighbours`).

    ``distances`` has ``inf`` on its diagonal. Picked clients get ``inf`` distances so
    that they no longer count as neighbours; the loop never syncs with the host.
    """
    n = distances.shape[0]
    distances = distances.clone()
    taken = torch.zeros(n, dtype=torch.bool, device=distances.device)
    picked = []
    for step in range(count):
        scores = sum_of_nearest(distances, krum_neighbours(n - step, num_malicious, slack))
        winner = torch.argmin(scores.masked_fill(taken, torch.inf)).reshape(1)
        picked.append(winner)
        taken.index_fill_(0, winner, True)
        distances.index_fill_(1, winner, torch.inf)
    return torch.cat(picked)


@dataclass(kw_only=True)
class KrumRule(ByzantineRule):
    """Krum: the new global model is the one client model with the lowest Krum score.

    Score of client i = sum of squared L2 distances from w_i to its ``n - f - 2``
    nearest other models, computed on the full models from a Gram matrix. Blanchard et
    al. need ``n >= 2f + 3``; with fewer valid clients the round keeps the model.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``, the number of attackers to tolerate per round (the paper's schedule
        has one attacker per round).
    distance : {"squared", "euclidean"} (default: "squared")
        What a score sums: Blanchard et al.'s squared distances, or the distances
        themselves, as the Krum of Baruch et al.'s code
        (``moranant/attacking_distributed_learning``, ``defences.py``), against which
        ALIE was published. The choice decides whom Krum picks when one group of
        identical updates lies farther from the honest ones than they lie from each
        other: a sum of squares weighs the far neighbours more.
    neighbours : {"n-f-2", "n-f", "n-f-3"} (default: "n-f-2")
        How many nearest neighbours a score sums: Blanchard et al.'s ``n - f - 2``, the
        ``n - f`` of Baruch et al.'s code, or the ``n - f - 3`` of Shejwalkar and
        Houmansadr's (NDSS'21) code, whose ``n - f - 2`` smallest entries of a row
        include the client's own zero. Either way at least 1 and at most ``n - 1``.

    Cost: O(n^2 d) flops for the Gram matrix, O(n^2) memory. Scores: Krum scores.
    """

    name = "krum"
    distance: str = param("squared", one_of(*KRUM_DISTANCES), "one of 'squared', 'euclidean'")
    neighbours: str = param("n-f-2", one_of(*KRUM_NEIGHBOURS), NEIGHBOURS_VALID)

    def selection_quota(self, num_clients: int) -> str:
        return f"keeps exactly 1 of the {num_clients} clients of each round by design"

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        distances = krum_distances(batch.models, self.distance)
        scores = krum_scores(distances, self.num_malicious, self.neighbours)
        best = lowest(scores, 1)
        model = batch.models.index_select(0, best).squeeze(0)
        chosen = keep_mask(batch.n, best, batch.models.device)
        return AggregationResult(model, chosen, scores, coefficients=chosen.double())
