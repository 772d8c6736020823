"""Federated Averaging (McMahan et al., AISTATS 2017, arXiv 1602.05629).

No defense: the baseline every robust rule is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec_core.params import one_of

from .base import AggregationResult, AggregationRule, ClientBatch, combine, normalized, param


@dataclass(kw_only=True)
class FedAvgRule(AggregationRule):
    """Mean of all client models, weighted by data size (or equally).

    Parameters
    ----------
    weighting : str (default: "examples")
        ``"examples"``: client ``i`` weighs ``n_i / sum n`` (McMahan et al.'s FedAvg,
        Flower's). ``"equal"``: every client ``1 / n``, as the servers of several attack
        papers' code average (DBA's ``average_shrink_models``: ``eta / no_models`` times
        the sum of updates). With Dirichlet partitions the two differ most for a client
        with a large share, e.g. a lone attacker. Model replacement's boost
        ``N_round / N_attacker`` (``attacks/``) replaces the model exactly under
        ``"examples"`` only.

    Cost: one pass over the ``(n, d)`` models, no extra memory.
    """

    name = "fedavg"
    selects_clients = False
    weighting: str = param("examples", one_of("examples", "equal"), "one of 'examples', 'equal'")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        weights = batch.weights if self.weighting == "examples" else torch.ones_like(batch.weights)
        coefficients = normalized(weights)
        return AggregationResult(combine(batch, coefficients), accepted, coefficients=coefficients)
