"""Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer; NeurIPS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
from .krum import (
    KRUM_DISTANCES,
    KRUM_NEIGHBOURS,
    NEIGHBOURS_VALID,
    krum_distances,
    krum_scores,
    repeated_krum,
)

#: How the ``m`` models are chosen: by one round of Krum scores, or by Krum repeated on
#: the models not yet chosen.
SELECTIONS = ("once", "repeated")


@dataclass(kw_only=True)
class MultiKrumRule(ByzantineRule):
    """Multi-Krum: data-size-weighted mean of ``m`` models chosen by Krum scores.

    Krum scores as in :class:`~defenses.rules.krum.KrumRule`. Two selections, both
    called Multi-Krum in the literature: Blanchard et al.'s (``"once"``: the ``m`` lowest
    scores of one round of scoring; the edge-case paper's code and Flower's), and the
    one Shejwalkar and Houmansadr's NDSS'21 paper describes and its code runs
    (``"repeated"``: Krum on the remaining models, the winner moved to the selection, the
    next Krum without it, ``m`` times, as Bulyan selects; their ``multi_krum(...,
    multi_k=True)`` picks until ``2f + 2`` remain, so ``m = n - 2f - 2``, with
    ``neighbours = "n-f-3"`` and an unweighted mean, the same as this rule's weighted one
    when the clients hold equal data). The two differ when colluding attackers sit close
    together: each of them counts the others as near neighbours in every repetition, so
    the repeated selection takes them first, and with the smaller ``m`` they are a larger
    share of the mean.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``, the number of attackers to tolerate per round.
    num_selected : int or None (default: None)
        ``m``, the number of models averaged; ``None`` means ``n - f`` (as the
        edge-case paper's reference code does). Capped at the number of valid clients.
    distance : {"squared", "euclidean"} (default: "squared")
        What a Krum score sums; see :class:`~defenses.rules.krum.KrumRule`.
    neighbours : {"n-f-2", "n-f", "n-f-3"} (default: "n-f-2")
        How many nearest neighbours a Krum score sums; see
        :class:`~defenses.rules.krum.KrumRule`. With ``"repeated"``, counted among the
        ``r`` models that remain (``r - f - 2`` and so on).
    selection : {"once", "repeated"} (default: "once")
        Blanchard et al.'s one round of scores, or Krum repeated ``m`` times on the
        models not yet chosen (the NDSS'21 paper's, Sec. II-B).

    Needs ``n >= 2f + 3`` valid clients. Cost: O(n^2 d) flops, O(n^2) memory (and ``m``
    passes over the ``(n, n)`` matrix when repeated). Scores: Krum scores (of the first
    repetition).
    """

    name = "multi-krum"
    num_selected: int | None = param(None, lambda v: v is None or v >= 1, "an int >= 1 or None")
    distance: str = param("squared", one_of(*KRUM_DISTANCES), "one of 'squared', 'euclidean'")
    neighbours: str = param("n-f-2", one_of(*KRUM_NEIGHBOURS), NEIGHBOURS_VALID)
    selection: str = param("once", one_of(*SELECTIONS), "one of 'once', 'repeated'")

    def selection_quota(self, num_clients: int) -> str:
        m = num_clients - self.num_malicious if self.num_selected is None else self.num_selected
        return f"keeps the {min(m, num_clients)} of the {num_clients} clients of each round " + (
            "with the lowest Krum scores by design"
            if self.selection == "once"
            else "that repeated Krum picks by design"
        )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        distances = krum_distances(batch.models, self.distance)
        scores = krum_scores(distances, self.num_malicious, self.neighbours)
        m = batch.n - self.num_malicious if self.num_selected is None else self.num_selected
        m = min(m, batch.n)
        if self.selection == "once":
            picked = lowest(scores, m)
        else:
            others = distances.clone().fill_diagonal_(torch.inf)
            slack = KRUM_NEIGHBOURS[self.neighbours]
            picked = repeated_krum(others, self.num_malicious, m, slack)
        chosen = keep_mask(batch.n, picked, batch.models.device)
        coefficients = normalized(batch.weights, chosen)
        model = combine(batch, coefficients)
        return AggregationResult(model, chosen, scores, coefficients=coefficients)
