"""Robust Federated Aggregation (Pillutla, Kakade, Harchaoui; IEEE TSP 2022, arXiv 1912.13445).

"Robust Aggregation for Federated Learning": the geometric median of the client models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    AggregationRule,
    ClientBatch,
    combine,
    distances_to,
    normalized,
    param,
    positive,
)


@dataclass(kw_only=True)
class RFARule(AggregationRule):
    """Weighted geometric median of the models by the smoothed Weiszfeld algorithm.

    Minimises ``sum_i p_i max(nu, ||v - w_i||)`` over v, with data-size weights
    ``p_i``: start at the weighted mean, then repeat
    ``beta_i = p_i / max(nu, ||v - w_i||)``, ``v = sum_i beta_i w_i / sum_i beta_i``.
    A fixed number of iterations (no early stop) keeps the device free of host syncs;
    the RFA paper observes that a few iterations suffice. Every valid client is
    accepted (far models get small weights, not zero).

    Parameters
    ----------
    max_iter : int (default: 10)
        Weiszfeld iterations.
    smoothing : float (default: 1e-6)
        ``nu``, the smallest distance used in a weight (avoids division by zero when
        v meets a client model).

    Cost: ``max_iter + 1`` passes over the ``(n, d)`` models. Scores: each client's
    L2 distance to the geometric median.
    """

    name = "rfa"
    selects_clients = False
    max_iter: int = param(10, lambda v: v >= 1, "an int >= 1")
    smoothing: float = param(1e-6, positive, "a number > 0")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        prior = normalized(batch.weights)
        coefficients = prior
        median = combine(batch, coefficients)
        for _ in range(self.max_iter):
            distances = distances_to(batch.models, median)
            coefficients = normalized(prior / distances.clamp_min(self.smoothing))
            median = combine(batch, coefficients)
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        scores = distances_to(batch.models, median)
        return AggregationResult(median, accepted, scores, coefficients=coefficients)
