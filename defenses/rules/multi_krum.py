"""Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer; NeurIPS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from fedsec_core.params import one_of

from .base import (
    AggregationResult,
    ByzantineRule,
    ClientBatch,
    combine,
    keep_mask,
    lowest,
    normalized,
    param,
)
from .krum import KRUM_DISTANCES, KRUM_NEIGHBOURS, krum_distances, krum_scores


@dataclass(kw_only=True)
class MultiKrumRule(ByzantineRule):
    """Multi-Krum: data-size-weighted mean of the ``m`` models with the lowest Krum score.

    Krum scores as in :class:`~defenses.rules.krum.KrumRule`.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``, the number of attackers to tolerate per round.
    num_selected : int or None (default: None)
        ``m``, the number of models averaged; ``None`` means ``n - f`` (as the
        edge-case paper's reference code does). Capped at the number of valid clients.
    distance : {"squared", "euclidean"} (default: "squared")
        What a Krum score sums; see :class:`~defenses.rules.krum.KrumRule`.
    neighbours : {"n-f-2", "n-f"} (default: "n-f-2")
        How many nearest neighbours a Krum score sums; see
        :class:`~defenses.rules.krum.KrumRule`.

    Needs ``n >= 2f + 3`` valid clients. Cost: O(n^2 d) flops, O(n^2) memory.
    Scores: Krum scores.
    """

    name = "multi-krum"
    num_selected: int | None = param(None, lambda v: v is None or v >= 1, "an int >= 1 or None")
    distance: str = param("squared", one_of(*KRUM_DISTANCES), "one of 'squared', 'euclidean'")
    neighbours: str = param("n-f-2", one_of(*KRUM_NEIGHBOURS), "one of 'n-f-2', 'n-f'")

    def selection_quota(self, num_clients: int) -> str:
        m = num_clients - self.num_malicious if self.num_selected is None else self.num_selected
        return (
            f"keeps the {min(m, num_clients)} of the {num_clients} clients of each round "
            "with the lowest Krum scores by design"
        )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        distances = krum_distances(batch.models, self.distance)
        scores = krum_scores(distances, self.num_malicious, self.neighbours)
        m = batch.n - self.num_malicious if self.num_selected is None else self.num_selected
        chosen = keep_mask(batch.n, lowest(scores, min(m, batch.n)), batch.models.device)
        coefficients = normalized(batch.weights, chosen)
        model = combine(batch, coefficients)
        return AggregationResult(model, chosen, scores, coefficients=coefficients)
