"""Weak differential privacy (Sun, Kairouz, Suresh, McMahan; arXiv 1911.07963, 2019).

Norm-difference clipping followed by Gaussian noise on the aggregate, as the edge-case
backdoor paper (Wang et al., NeurIPS 2020) and Multi-metrics (Huang et al., 2023) run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    distances_to,
    non_negative,
    normalized,
    param,
    positive,
)
from .norm_clipping import clipping_factors


@dataclass(kw_only=True)
class WeakDPRule(SeededRule):
    """Norm clipping to ``norm_bound``, then add ``N(0, noise_std^2)`` to every parameter.

    Parameters
    ----------
    norm_bound : float (default: 1.5)
        L2 bound of each update (the EMNIST setting; 2 on CIFAR-10).
    noise_std : float (default: 0.025)
        Standard deviation of the noise added to the aggregated model (the EMNIST
        setting; 0.0025 on CIFAR-10).
    seed : int (default: 0)
        Seeds the noise: each call draws from a stream derived from the seed and the
        number of earlier calls, so a run (and a resumed run) is reproducible.

    Cost: as norm clipping plus drawing ``d`` normal numbers. Scores: update norms.
    """

    name = "weak-dp"
    selects_clients = False
    norm_bound: float = param(1.5, positive, "a number > 0")
    noise_std: float = param(0.025, non_negative, "a number >= 0")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        norms = distances_to(batch.models, batch.global_model)
        coefficients = normalized(batch.weights) * clipping_factors(norms, self.norm_bound)
        model = combine(batch, coefficients)
        noise = self._standard_normal_like(model)
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        model.add_(noise, alpha=self.noise_std)
        return AggregationResult(model, accepted, norms, coefficients=coefficients)
