"""Robust learning rate (Ozdayi, Kantarcioglu, Gel; AAAI 2021, arXiv 2007.03767).

"Defending against Backdoors in Federated Learning with Robust Learning Rate".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    AggregationRule,
    ClientBatch,
    column_blocks,
    normalized,
    param,
    positive,
)


@dataclass(kw_only=True)
class RLRRule(AggregationRule):
    """Flip the server learning rate on coordinates where the clients' signs disagree.

    Per coordinate k, with updates ``u_i = w_i - w_0``: if ``|sum_i sign(u_ik)| <
    threshold`` the learning rate there is ``-server_lr``, else ``+server_lr``; the new
    model is ``w_0 + lr * (data-size-weighted mean of the updates)``. Every valid client
    is accepted (the defense acts on coordinates, not clients).

    Parameters
    ----------
    threshold : int (default: 4)
        ``theta``, the sign agreement a coordinate needs. It should exceed the number
        of attackers per round and stay below the number of clients (the default fits
        the paper's schedule of one attacker among 10 sampled clients).
    server_lr : float (default: 1.0)
        ``eta``; 1 makes agreeing coordinates plain FedAvg.

    Cost: two passes over the ``(n, d)`` models in column blocks. No scores.
    """

    name = "rlr"
    selects_clients = False
    threshold: int = param(4, lambda v: v >= 0, "an int >= 0")
    server_lr: float = param(1.0, positive, "a number > 0")

    def round_problem(self, num_clients: int, num_attackers: int) -> str:
        if self.threshold > num_clients:
            return (
                f"threshold = {self.threshold} exceeds the {num_clients} clients of a round: "
                "no coordinate can reach it, so every coordinate's learning rate is flipped"
            )
        return ""

    def round_caveat(self, num_clients: int, num_attackers: int) -> str:
        if 0 < num_attackers and self.threshold <= num_attackers:
            return (
                f"rlr's threshold = {self.threshold} should exceed the attackers a round "
                f"({num_attackers} in some rounds)"
            )
        return ""

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        weights = normalized(batch.weights).to(batch.models.dtype)
        model = torch.empty_like(batch.global_model, dtype=batch.models.dtype)
        for cols in column_blocks(batch.models.shape[1]):
            updates = batch.models[:, cols] - batch.global_model[cols]
            votes = torch.sign(updates).sum(dim=0).abs()
            lr = torch.where(votes >= self.threshold, self.server_lr, -self.server_lr)
            model[cols] = batch.global_model[cols] + lr.to(updates.dtype) * (weights @ updates)
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        return AggregationResult(model, accepted)
