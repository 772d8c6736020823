"""Krum (Blanchard, El Mhamdi, Guerraoui, Stainer; NeurIPS 2017).

"Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    ByzantineRule,
    ClientBatch,
    keep_mask,
    lowest,
    squared_distances,
)


def krum_scores(distances: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """Krum score of each client: the sum of its ``n - f - 2`` smallest squared distances.

    ``distances`` is the ``(n, n)`` squared-distance matrix; a client's distance to
    itself never counts. At least one neighbour counts (for ``n - f - 2 < 1``).
    """
    others = distances.clone().fill_diagonal_(torch.inf)
    return sum_of_nearest(others, krum_neighbours(distances.shape[0], num_malicious))


def krum_neighbours(n: int, num_malicious: int) -> int:
    """How many nearest neighbours a Krum score sums over among ``n`` clients."""
    return min(max(1, n - num_malicious - 2), n - 1)


def sum_of_nearest(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Row-wise sum of the ``k`` smallest entries (excluded pairs hold ``inf``)."""
    return torch.topk(distances, k, dim=1, largest=False).values.sum(dim=1)


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

    Cost: O(n^2 d) flops for the Gram matrix, O(n^2) memory. Scores: Krum scores.
    """

    name = "krum"

    def selection_quota(self, num_clients: int) -> str:
        return f"keeps exactly 1 of the {num_clients} clients of each round by design"

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        scores = krum_scores(squared_distances(batch.models), self.num_malicious)
        best = lowest(scores, 1)
        model = batch.models.index_select(0, best).squeeze(0)
        chosen = keep_mask(batch.n, best, batch.models.device)
        return AggregationResult(model, chosen, scores, coefficients=chosen.double())
