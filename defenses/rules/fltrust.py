"""FLTrust (Cao, Fang, Liu, Gong; NDSS 2021, arXiv 2012.13995).

"FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    AggregationRule,
    ClientBatch,
    blockwise_sums,
    combine,
    param,
)


@dataclass(kw_only=True)
class FLTrustRule(AggregationRule):
    """Weight each update by its agreement with the server's own update on root data.

    With ``g_0`` the server's update (its model after training on a small clean root
    set, minus ``w_0``) and ``g_i = w_i - w_0``:
    trust ``TS_i = ReLU(cos(g_i, g_0))``; each update is rescaled to ``||g_0||``;
    new model ``w_0 + sum_i TS_i (||g_0|| / ||g_i||) g_i / sum_i TS_i``.
    Clients with ``TS_i = 0`` (pointing away from ``g_0``, or zero) are rejected; if
    all are, the round keeps the model. Data sizes are not used (as in the paper).

    Parameters
    ----------
    root_size : int (default: 100)
        Examples in the server's clean root set, a seeded sample of the training split
        (Cao et al. sample it from the training data; their root sets hold 100 examples
        by default). The platform trains the global model on it each round and hands
        the rule that update as ``root_update`` (``needs_root_update``).

    Cost: one pass over the ``(n, d)`` models for the dot products and norms, one to
    average. Scores: the trust scores ``TS_i``.
    """

    name = "fltrust"
    higher_score_is_suspicious = False  # the score is a trust
    needs_root_update = True
    root_size: int = param(100, lambda v: v >= 1, "an int >= 1 (examples in the root set)")

    def root_set_size(self) -> int:
        return self.root_size

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        if batch.root_update is None:
            raise ValueError("FLTrust needs the server's root update")

        def kernel(
            block: torch.Tensor, start: torch.Tensor, root: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            update = block - start
            return update @ root, (update * update).sum(dim=1), (root * root).sum()

        dots, squares, root_square = blockwise_sums(
            kernel, batch.models, batch.global_model, batch.root_update
        )
        tiny = torch.finfo(torch.float64).tiny
        norms, root_norm = squares.sqrt(), root_square.sqrt()
        trust = torch.relu(dots / (norms * root_norm).clamp_min(tiny))
        accepted = trust > 0
        if not bool(accepted.any()):
            return AggregationResult(None, accepted, trust, "FLTrust trusted no client")
        coefficients = trust * root_norm / norms.clamp_min(tiny) / trust.sum()
        return AggregationResult(
            combine(batch, coefficients), accepted, trust, coefficients=coefficients
        )
