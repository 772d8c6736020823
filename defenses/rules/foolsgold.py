"""FoolsGold (Fung, Yoon, Beschastnikh; RAID 2020, arXiv 1808.04866).

"The Limitations of Federated Learning in Sybil Settings".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import (
    AggregationResult,
    AggregationRule,
    ClientBatch,
    combine,
    cosine_from_gram,
    gram,
    normalized,
    param,
    positive,
)


@dataclass(kw_only=True)
class FoolsGoldRule(AggregationRule):
    """Down-weight clients whose update histories point the same way (sybils).

    Each client's history is the sum of all its updates ``w_i - w_0`` so far, kept by
    client id across rounds. With ``cs`` the cosine similarities of this round's
    histories (self-similarity set to 0) and ``v_i = max_j cs_ij``:

    1. pardoning: ``cs_ij *= v_i / v_j`` where ``v_i < v_j``;
    2. ``a_i = 1 - max_j cs_ij`` clipped to [0, 1], divided by its maximum, 1 -> 0.99;
    3. logit: ``a_i = kappa (ln(a_i / (1 - a_i)) + 0.5)`` clipped to [0, 1].

    The new model is ``w_0 + sum_i a_i u_i / sum_i a_i`` (the FL form of the paper's
    weighted gradient step; data sizes are not used, as in the paper). Clients with
    ``a_i = 0`` are rejected; if all are, the round keeps the model.

    Parameters
    ----------
    kappa : float (default: 1.0)
        Confidence of the logit step (the paper's kappa; its code uses 1).

    Cost: O(n d) to update and stack the histories, O(n^2 d) for their Gram matrix;
    state of O(K d) for the K distinct clients seen so far (on the models' device).
    Scores: the weights ``a_i``. Needs ``client_ids``.
    """

    name = "foolsgold"
    higher_score_is_suspicious = False  # the score is a weight
    kappa: float = param(1.0, positive, "a number > 0")
    _history: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        if batch.client_ids is None:
            raise ValueError("FoolsGold needs client_ids to keep per-client histories")
        histories = self._update_histories(batch)
        similarity = cosine_from_gram(gram(histories))
        weights = self._weights(similarity)
        accepted = weights > 0
        if not bool(accepted.any()):
            note = "FoolsGold gave every client weight 0"
            return AggregationResult(None, accepted, weights, note)
        coefficients = normalized(weights)
        return AggregationResult(
            combine(batch, coefficients), accepted, weights, coefficients=coefficients
        )

    def _update_histories(self, batch: ClientBatch) -> torch.Tensor:
        """Add this round's updates to the histories; return them stacked ``(n, d)``."""
        for row, client in enumerate(batch.client_ids):
            update = batch.models[row] - batch.global_model
            known = self._history.get(client)
            self._history[client] = update if known is None else known.to(update) + update
        return torch.stack([self._history[client] for client in batch.client_ids])

    def _weights(self, similarity: torch.Tensor) -> torch.Tensor:
        cs = similarity.fill_diagonal_(0)
        top = cs.max(dim=1).values
        pardon = top[:, None] < top[None, :]
        cs = torch.where(pardon, cs * top[:, None] / top[None, :].clamp_min(1e-300), cs)
        weights = (1 - cs.max(dim=1).values).clamp(0, 1)
        weights = weights / weights.max().clamp_min(1e-300)
        weights = weights.masked_fill(weights == 1, 0.99)
        logit = self.kappa * (torch.log(weights / (1 - weights)) + 0.5)
        return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {client: h.clone() for client, h in self._history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = {int(client): h.clone() for client, h in state["history"].items()}
