"""Norm-difference clipping (Sun, Kairouz, Suresh, McMahan; arXiv 1911.07963, 2019).

"Can You Really Backdoor Federated Learning?"; the "NDC" baseline of the edge-case
backdoor paper (Wang et al., NeurIPS 2020) and of Multi-metrics (Huang et al., 2023).
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


def clipping_factors(norms: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """``min(1, bound / ||u_i||)`` per client (1 for a zero update)."""
    return (bound / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp(max=1)


@dataclass(kw_only=True)
class NormClippingRule(AggregationRule):
    """Clip every update ``u_i = w_i - w_0`` to L2 norm ``norm_bound``, then FedAvg.

    New model: ``w_0 + sum_i p_i u_i min(1, norm_bound / ||u_i||)`` with data-size
    weights ``p_i``. Every valid client is accepted.

    Parameters
    ----------
    norm_bound : float (default: 1.5)
        The L2 bound; the Multi-metrics paper uses 1.5 on EMNIST and 2 on CIFAR-10.

    Cost: two passes over the ``(n, d)`` models, no extra memory beyond blocks.
    Scores: the update norms before clipping.
    """

    name = "norm-clipping"
    selects_clients = False
    norm_bound: float = param(1.5, positive, "a number > 0")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        norms = distances_to(batch.models, batch.global_model)
        coefficients = normalized(batch.weights) * clipping_factors(norms, self.norm_bound)
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        return AggregationResult(
            combine(batch, coefficients), accepted, norms, coefficients=coefficients
        )
