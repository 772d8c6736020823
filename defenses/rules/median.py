"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett; ICML 2018, arXiv 1803.01498)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AggregationResult, AggregationRule, ClientBatch, column_blocks, sorted_columns


@dataclass(kw_only=True)
class MedianRule(AggregationRule):
    """Each coordinate of the new model is the median of the clients' values there.

    For an even number of clients the median is the mean of the two middle values
    (as ``numpy.median``). Unweighted; every valid client counts as accepted.

    No parameters. Cost: a sort of n values per coordinate, O(n d log n), done in
    column blocks (extra memory about three blocks). No scores.
    """

    name = "median"
    selects_clients = False

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        n = batch.n
        model = torch.empty_like(batch.global_model, dtype=batch.models.dtype)
        for cols in column_blocks(batch.models.shape[1]):
            ordered = sorted_columns(batch.models[:, cols])
            model[cols] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        accepted = torch.ones(n, dtype=torch.bool, device=batch.models.device)
        return AggregationResult(model, accepted)
