"""Divide-and-Conquer (Shejwalkar, Houmansadr; NDSS 2021).

"Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
Federated Learning", Algorithm 2 ("DnC").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    keep_mask,
    lowest,
    normalized,
    param,
)


@dataclass(kw_only=True)
class DnCRule(SeededRule):
    """Drop the updates that project far along the top singular vector, on random
    coordinate subsets.

    Each of ``iterations`` passes draws ``subsample`` coordinates at random (all of them
    when the model is smaller), centres the clients' updates there, takes the top right
    singular vector ``v`` of that ``(n, b)`` matrix and scores client ``i`` by
    ``<u_i - mean, v>^2``; it keeps the ``n - int(filter_fraction * num_malicious)``
    lowest scores. The clients kept in every pass are averaged (data-size weights).

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``m``, the attackers a round is assumed to hold.
    filter_fraction : float (default: 1.0)
        ``c``: each pass removes ``int(c * m)`` clients (the paper's default 1).
    subsample : int (default: 10000)
        ``b``, coordinates per pass (the paper's 10,000).
    iterations : int (default: 1)
        Passes (the paper's default 1).
    seed : int (default: 0)
        Seeds the coordinate subsets (a stream per round, resumed from a checkpoint).

    Cost: per pass a gather of ``(n, b)`` values and its thin SVD (on the CPU; on
    other devices the top eigenvector of the ``(n, n)`` Gram matrix: see
    ``top_right_singular_vector``). Scores: each client's projection score summed over
    the passes.
    """

    name = "dnc"
    num_malicious: int = param(1, lambda v: v >= 0, "an int >= 0")
    filter_fraction: float = param(1.0, lambda v: v > 0, "a number > 0")
    subsample: int = param(10_000, lambda v: v >= 1, "an int >= 1")
    iterations: int = param(1, lambda v: v >= 1, "an int >= 1")

    def removed(self) -> int:
        return int(self.filter_fraction * self.num_malicious)

    def min_clients(self) -> int:
        return self.removed() + 1

    def _min_clients_formula(self) -> str:
        return (
            f"int(filter_fraction * num_malicious) + 1 = int({self.filter_fraction} * "
            f"{self.num_malicious}) + 1"
        )

    def round_caveat(self, num_clients: int, num_attackers: int) -> str:
        if num_attackers <= self.removed():
            return ""
        return (
            f"dnc removes int(filter_fraction * num_malicious) = {self.removed()} clients a "
            f"round, but some rounds have {num_attackers} attackers"
        )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        models, device = batch.models, batch.models.device
        d = models.shape[1]
        keep = batch.n - self.removed()
        kept = torch.ones(batch.n, dtype=torch.bool, device=device)
        scores = torch.zeros(batch.n, dtype=torch.float64, device=device)
        for _ in range(self.iterations):
            generator = self._generator(device)
            columns = torch.randperm(d, generator=generator, device=device)[: self.subsample]
            part = (models[:, columns] - batch.global_model[columns]).double()
            centred = part - part.mean(dim=0)
            top = top_right_singular_vector(centred)
            score = (centred @ top) ** 2
            scores += score
            kept &= keep_mask(batch.n, lowest(score, keep), device)
        coefficients = normalized(batch.weights, kept)
        return AggregationResult(
            combine(batch, coefficients), kept, scores, coefficients=coefficients
        )


def top_right_singular_vector(matrix: torch.Tensor) -> torch.Tensor:
    """The unit right singular vector of the largest singular value of an ``(n, b)``
    matrix with ``n`` small (its sign is arbitrary; DnC squares the projections).

    On the CPU: LAPACK's thin SVD (what every committed DnC result ran). On CUDA,
    cuSOLVER's SVD rejects a matrix as wide as VGG-9's model (10 x 9,225,610: its
    ``gesvdj`` buffer query fails with CUSOLVER_STATUS_INVALID_VALUE, found by the GPU
    check of 2026-11-30), so there the vector comes from the ``(n, n)`` Gram matrix
    ``M M^T = U S^2 U^T``: ``v = M^T u_1 / ||M^T u_1||`` is the same vector in exact
    arithmetic, and costs one ``(n, b)`` product instead of an SVD.
    """
    if matrix.device.type == "cpu":
        return torch.linalg.svd(matrix, full_matrices=False).Vh[0]
    return _top_right_singular_vector_gram(matrix)


def _top_right_singular_vector_gram(matrix: torch.Tensor) -> torch.Tensor:
    top_left = torch.linalg.eigh(matrix @ matrix.T).eigenvectors[:, -1]
    vector = top_left @ matrix
    # all rows equal (centred: all zero): no direction; any unit vector scores 0
    return vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)
