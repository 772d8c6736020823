"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett; ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AggregationResult, AggregationRule, ClientBatch, column_blocks, param


@dataclass(kw_only=True)
class TrimmedMeanRule(AggregationRule):
    """Per coordinate, drop the ``k = int(beta n)`` largest and smallest values, average the rest.

    Unweighted; every valid client counts as accepted (each is trimmed only on some
    coordinates).

    Parameters
    ----------
    beta : float (default: 0.1)
        Fraction trimmed from each end, in [0, 0.5). It should be at least the
        fraction of attackers per round (the paper's schedule: 1 of 10 or 30).

    Cost: a sort of n values per coordinate, O(n d log n), in column blocks. No scores.
    """

    name = "trimmed-mean"
    selects_clients = False
    beta: float = param(0.1, lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")

    def round_problem(self, num_clients: int, num_attackers: int) -> str:
        if num_clients > 1 and int(self.beta * num_clients) == 0:
            return (
                f"trims int(beta * n) = int({self.beta} * {num_clients}) = 0 values from "
                f"each end in a round of {num_clients} clients, which is plain averaging; "
                f"beta must be >= {1 / num_clients:.3g} at this round size"
            )
        return ""

    def round_caveat(self, num_clients: int, num_attackers: int) -> str:
        cut = int(self.beta * num_clients)
        if 0 < cut < num_attackers:
            return (
                f"trimmed-mean trims {cut} value(s) from each end, fewer than the "
                f"{num_attackers} attackers some rounds have"
            )
        return ""

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        n = batch.n
        cut = int(self.beta * n)
        model = torch.empty_like(batch.global_model, dtype=batch.models.dtype)
        for cols in column_blocks(batch.models.shape[1]):
            ordered = torch.sort(batch.models[:, cols], dim=0).values
            model[cols] = ordered[cut : n - cut].mean(dim=0)
        accepted = torch.ones(n, dtype=torch.bool, device=batch.models.device)
        return AggregationResult(model, accepted)
