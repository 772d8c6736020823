"""Bulyan (El Mhamdi, Guerraoui, Rouault; ICML 2018, arXiv 1802.07927).

"The Hidden Vulnerability of Distributed Learning in Byzantium".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    ByzantineRule,
    ClientBatch,
    column_blocks,
    keep_mask,
    sorted_columns,
    squared_distances,
)
from .krum import krum_neighbours, repeated_krum, sum_of_nearest


@dataclass(kw_only=True)
class BulyanRule(ByzantineRule):
    """Bulyan: select ``theta = n - 2f`` models by repeated Krum, then a coordinate-wise
    trimmed mean around their median.

    1. Selection (as in the paper, not Flower's one-shot Multi-Krum): run Krum on the
       remaining models, move the winner to the selected set, repeat ``theta`` times.
       Each Krum counts ``max(1, r - f - 2)`` neighbours among the ``r`` remaining.
    2. Per coordinate, average the ``beta = theta - 2f`` selected values closest to
       the selected models' median there. Unweighted.

    The NDSS'21 authors' code (Shejwalkar & Houmansadr, ``bulyan`` in their
    ``release-fedsgd-alexnet-bulyan.ipynb``) differs in two details; fedsec follows El
    Mhamdi et al.'s Krum (``r - f - 2`` neighbours) and the usual median instead: each
    of the code's Krum passes sums the ``r - f - 2`` smallest entries of a row that
    holds the model's own zero distance (``r - f - 3`` neighbours; what
    :class:`~defenses.rules.KrumRule`'s ``neighbours = "n-f-3"`` selects for Krum), and
    its median is ``torch.median``'s lower middle value where ``theta`` is even (60 of
    100 at ``f = 20``), where fedsec's is the mean of the two middle values.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``; Bulyan needs ``n >= 4f + 3`` valid clients, else the round keeps the
        model.

    Cost: O(n^2 d) for the distances, ``theta`` Krum passes over an ``(n, n)`` matrix,
    a sort of ``theta`` values per coordinate in column blocks. Scores: the Krum scores
    of the first selection step.
    """

    name = "bulyan"
    clients_per_attacker = 4

    def selection_quota(self, num_clients: int) -> str:
        return (
            f"selects {num_clients - 2 * self.num_malicious} of the {num_clients} clients "
            "of each round (n - 2f) by design"
        )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        f, n = self.num_malicious, batch.n
        distances = squared_distances(batch.models).fill_diagonal_(torch.inf)
        first_scores = sum_of_nearest(distances, krum_neighbours(n, f))
        chosen = repeated_krum(distances, f, n - 2 * f)
        model = torch.empty_like(batch.global_model, dtype=batch.models.dtype)
        for cols in column_blocks(batch.models.shape[1]):
            model[cols] = mean_around_median(batch.models[chosen, cols], n - 4 * f)
        return AggregationResult(model, keep_mask(n, chosen, distances.device), first_scores)


def distance_to_median(values: torch.Tensor) -> torch.Tensor:
    """Per column, each value's distance to the column's median (the mean of the two
    middle values when the count is even)."""
    ordered = sorted_columns(values)
    rows = values.shape[0]
    median = (ordered[(rows - 1) // 2] + ordered[rows // 2]) / 2
    return (values - median).abs()


def mean_around_median(values: torch.Tensor, beta: int) -> torch.Tensor:
    """Per column, the mean of the ``beta`` values closest to the column's median (also
    the ALIE authors' trimmed mean, :class:`~defenses.rules.TrimmedMeanRule`'s
    ``around = "median"``). Ties in distance are broken by ``torch.topk``, in no set
    order."""
    closest = torch.topk(distance_to_median(values), beta, dim=0, largest=False).indices
    return torch.gather(values, 0, closest).mean(dim=0)
