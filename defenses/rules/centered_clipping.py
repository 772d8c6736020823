"""Centered clipping (Karimireddy, He, Jaggi; ICML 2021, arXiv 2012.10333).

"Learning from History for Byzantine Robust Optimization".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import AggregationResult, AggregationRule, ClientBatch, distances_to, param, positive
from .norm_clipping import clipping_factors


@dataclass(kw_only=True)
class CenteredClippingRule(AggregationRule):
    """Clip every update around the previous round's aggregate, and iterate.

    With ``v`` the previous round's aggregated update (zero before the first round) and
    ``u_i = w_i - w_0``, each of ``iterations`` steps sets
    ``v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||)``; the new model is
    ``w_0 + v`` and ``v`` is kept for the next round (a checkpoint holds it). Updates
    near the center count in full, far ones with norm at most ``tau``, so ``tau`` is in
    the units of the updates: set it near the honest updates' spread. The mean is
    uniform over clients, as in the paper (one worker, one vote). Every valid client is
    accepted.

    Parameters
    ----------
    tau : float (default: 10.0)
        The clipping radius around the center. Karimireddy et al.'s code explores 0.1,
        10 and 1000 (on momentum-averaged gradients).
    iterations : int (default: 1)
        Clipping steps per round (their code explores 1, 3 and 5).

    Cost: per iteration one blocked pass over the ``(n, d)`` models for the distances
    and one matrix-vector product, no ``(n, d)`` copy. Scores: the distances
    ``||u_i - v||`` to the previous aggregate before clipping.
    """

    name = "centered-clipping"
    selects_clients = False
    tau: float = param(10.0, positive, "a number > 0")
    iterations: int = param(1, lambda v: v >= 1, "an int >= 1")
    _center: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        models, w0 = batch.models, batch.global_model
        v = torch.zeros_like(w0) if self._center is None else self._center.to(w0)
        scores = None
        for _ in range(self.iterations):
            center = w0 + v
            distances = distances_to(models, center)
            if scores is None:
                scores = distances
            factors = clipping_factors(distances, self.tau)
            pulled = factors.to(models.dtype) @ models - center * factors.sum().to(models.dtype)
            v = v + pulled / batch.n
        self._center = v.clone()
        accepted = torch.ones(batch.n, dtype=torch.bool, device=models.device)
        return AggregationResult(w0 + v, accepted, scores)

    def state_dict(self) -> dict[str, Any]:
        return {"center": None if self._center is None else self._center.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        center = state["center"]
        self._center = None if center is None else center.clone()
