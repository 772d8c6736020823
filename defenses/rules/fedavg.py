"""Federated Averaging (McMahan et al., AISTATS 2017, arXiv 1602.05629).

No defense: the baseline every robust rule is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AggregationResult, AggregationRule, ClientBatch, combine, normalized


@dataclass(kw_only=True)
class FedAvgRule(AggregationRule):
    """Data-size-weighted mean of all client models.

    No parameters. Cost: one pass over the ``(n, d)`` models, no extra memory.
    """

    name = "fedavg"
    selects_clients = False

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        coefficients = normalized(batch.weights)
        return AggregationResult(combine(batch, coefficients), accepted, coefficients=coefficients)
