"""Multi-metrics (Huang, Li, Chen, Shi, Gao; ICCV 2023, arXiv 2303.06601).

"Multi-Metrics Adaptively Identifies Backdoors in Federated Learning".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import (
    AggregationResult,
    AggregationRule,
    ClientBatch,
    blockwise_sums,
    chunks,
    combine,
    keep_mask,
    lowest,
    normalized,
    param,
)

#: Relative eigenvalue cut-off of the pseudo-inverse of the (correlation) matrix.
PINV_RTOL = 1e-10


@dataclass(kw_only=True)
class MultiMetricsRule(AggregationRule):
    """Score clients by three distances whitened by their covariance; keep the lowest.

    ``variant = "paper"`` (the paper's definition, O(n d)): per client the Manhattan
    and Euclidean norms of ``w_i - w_0`` and the cosine of ``w_i`` with ``w_0``; each
    becomes its sum of absolute differences to the other clients, ``x'_i``; the score
    is ``sqrt(x'_i^T Sigma^+ x'_i)`` with ``Sigma`` the covariance of the ``x'``.

    ``variant = "reference"`` (the authors' code behind the paper's tables): over the
    other clients j, ``t_i = (sum (1 - cos(w_i, w_j))^2, sum ||w_i - w_j||_1,
    sum | ||w_i|| - ||w_j|| |)`` on the full models; score ``t_i Sigma^+ t_i^T`` (no
    square root), ``Sigma = cov(t)``. The pairwise terms come from a float64-summed
    Gram matrix and a column-blocked ``pdist``; no loop over pairs.

    Both keep the ``k = max(1, int(keep_fraction * n))`` LOWEST scores (the paper's
    page says highest; its code and any outlier filter keep the lowest) and return the
    data-size-weighted mean of the kept models. The reference code computes
    ``int(0.3 n)``, which is 0 for ``n < 4`` and then divides by zero: here at least
    one client is kept. Ties go to the lower row index.

    ``Sigma`` is singular whenever a feature is constant (identical clients, and
    always for n = 2) or features are collinear. Each feature is first divided by its
    standard deviation (the quadratic form does not change when ``Sigma`` is
    invertible), constant features are dropped, and the pseudo-inverse of the
    resulting correlation matrix ignores eigenvalues below ``1e-10`` of the largest.
    With one client the score is 0.

    Parameters
    ----------
    keep_fraction : float (default: 0.3)
        ``p``, the fraction of clients averaged, in (0, 1].
    variant : str (default: "paper")
        ``"paper"`` or ``"reference"``.

    Precision: ``Sigma`` is badly conditioned on real models (about 1e8 to 1e10 on the
    benchmark's VGG-9 and LeNet rounds), so the scores amplify rounding in the three
    terms. Float32 models are summed in float32 over chunks of 4,096 columns and in
    float64 across chunks: the reference scores then match a float64 loop over pairs
    to about 1e-5 relative, the paper scores their float64 values to about 1e-4 (its
    summed absolute differences of nearly equal norms cancel more); float64 models
    give float64 results. A float32 loop over pairs, as the reference code runs, is off by up to
    24% there and can keep other clients (``benchmarks/README.md``).

    Cost: ``paper``: one pass over the ``(n, d)`` models for the features, one to
    average. ``reference``: O(n^2 d) flops for the L1 distances (``pdist``) and the
    Gram matrix, no loop over pairs. Extra memory: a few column blocks.
    Scores: the Multi-metrics scores.
    """

    name = "multi-metrics"
    keep_fraction: float = param(0.3, lambda v: 0 < v <= 1, "a number in (0, 1]")
    variant: str = param("paper", lambda v: v in ("paper", "reference"), "'paper' or 'reference'")

    def selection_quota(self, num_clients: int) -> str:
        k = max(1, int(self.keep_fraction * num_clients))
        return (
            f"keeps the {k} of the {num_clients} clients of each round with the lowest "
            f"scores (keep_fraction = {self.keep_fraction}) by design"
        )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        if self.variant == "paper":
            scores = whitened_square_norms(paper_features(batch)).sqrt()
        else:
            scores = whitened_square_norms(reference_features(batch.models))
        kept = keep_mask(
            batch.n, lowest(scores, max(1, int(self.keep_fraction * batch.n))), batch.models.device
        )
        coefficients = normalized(batch.weights, kept)
        return AggregationResult(
            combine(batch, coefficients), kept, scores, coefficients=coefficients
        )


def paper_features(batch: ClientBatch) -> torch.Tensor:
    """``x'`` of the paper, ``(n, 3)`` float64: summed absolute differences of the
    Manhattan and Euclidean distances to ``w_0`` and of the cosine with ``w_0``."""

    def kernel(block: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _added(_paper_chunk_sums(*parts) for parts in chunks(block, start))

    manhattan, euclid_sq, dot_update, global_sq = blockwise_sums(
        kernel, batch.models, batch.global_model
    )
    # <w_i, w_0> and ||w_i||^2 from the update terms keep the cosines accurate to
    # far below their spread across clients (the clamp only matters for absurd inputs).
    dot = dot_update + global_sq
    norm_sq = (euclid_sq + 2 * dot_update + global_sq).clamp_min(0)
    tiny = torch.finfo(torch.float64).tiny
    cosine = (dot / (norm_sq * global_sq).sqrt().clamp_min(tiny)).clamp(-1, 1)
    features = torch.stack([manhattan, euclid_sq.sqrt(), cosine], dim=1)
    return (features[:, None, :] - features[None, :, :]).abs().sum(dim=1)


def reference_features(models: torch.Tensor) -> torch.Tensor:
    """``t`` of the reference code, ``(n, 3)`` float64: per client the sums over the
    other clients of ``(1 - cos)^2``, of the L1 distance and of the norm difference."""
    n = models.shape[0]
    rows, cols = torch.triu_indices(n, n, 1, device=models.device)

    def kernel(block: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _added(_reference_chunk_sums(*parts) for parts in chunks(block, anchor))

    l1, shifted_gram, shifted_dot, anchor_sq = blockwise_sums(kernel, models, models[0])
    # Gram of the models from the Gram of their shift by models[0] (exact algebra,
    # but no float32 cancellation of the large common part of all models). Rows far
    # smaller than the largest one get inexact cosines; the clamp keeps them in [-1, 1].
    products = shifted_gram + shifted_dot[:, None] + shifted_dot[None, :] + anchor_sq
    norms = products.diagonal().clamp_min(0).sqrt()
    tiny = torch.finfo(torch.float64).tiny
    cosine = (products / (norms[:, None] * norms[None, :]).clamp_min(tiny)).clamp(-1, 1)
    cos_term = ((1 - cosine) ** 2).fill_diagonal_(0).sum(dim=1)
    manhattan = torch.zeros(n, dtype=torch.float64, device=models.device)
    manhattan.index_add_(0, rows, l1).index_add_(0, cols, l1)
    length = (norms[:, None] - norms[None, :]).abs().sum(dim=1)
    return torch.stack([cos_term, manhattan, length], dim=1)


def _paper_chunk_sums(models: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Over chunks ``(n, m, C)`` of the models and ``(m, C)`` of ``w_0``, in float64:
    ``||u_i||_1``, ``||u_i||^2`` and ``<u_i, w_0>`` with ``u_i = w_i - w_0``, and
    ``||w_0||^2``. The norms sum chunk by chunk; the dot product, whose rounding the
    cosines tolerate, is one float32 product over all chunks."""
    update = models - start
    wide = torch.float64
    dot = (update.reshape(update.shape[0], -1) @ start.reshape(-1)).to(wide)
    square = torch.linalg.vector_norm(update, dim=2).to(wide).square().sum(dim=1)
    manhattan = update.abs_().sum(dim=2).sum(dim=1, dtype=wide)  # faster than ord=1 norms
    return manhattan, square, dot, torch.linalg.vector_norm(start, dim=1).to(wide).square().sum()


def _reference_chunk_sums(models: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Over chunks ``(n, m, C)`` of the models and ``(m, C)`` of ``a = w_1``, in float64:
    the pairwise L1 distances (``pdist`` order), the Gram matrix of ``w_i - a``,
    ``<w_i - a, a>`` and ``||a||^2``."""
    shifted = (models - anchor).transpose(0, 1)  # (m, n, C)
    wide = torch.float64
    l1 = torch.stack([F.pdist(part, p=1) for part in models.unbind(dim=1)])
    return (
        l1.sum(dim=0, dtype=wide),
        torch.bmm(shifted, shifted.transpose(1, 2)).sum(dim=0, dtype=wide),
        torch.einsum("mnc,mc->mn", shifted, anchor).sum(dim=0, dtype=wide),
        torch.linalg.vector_norm(anchor, dim=1).to(wide).square().sum(),
    )


def _added(parts: Iterator[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Element-wise sum of tuples of tensors."""
    return tuple(sum(terms) for terms in zip(*parts, strict=True))


def whitened_square_norms(features: torch.Tensor) -> torch.Tensor:
    """``t_i Sigma^+ t_i^T`` per row with ``Sigma`` the (n - 1)-normalised covariance.

    Scale-invariant: features are divided by their standard deviation first, and a
    feature whose standard deviation is below ``1e-12`` of its root mean square counts
    as constant and is dropped (the pseudo-inverse would ignore it too).
    """
    n = features.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=features.dtype, device=features.device)
    centered = features - features.mean(dim=0)
    std = (centered.square().sum(dim=0) / (n - 1)).sqrt()
    rms = features.square().mean(dim=0).sqrt()
    scale = torch.where(std > 1e-12 * rms, 1 / std.clamp_min(torch.finfo(std.dtype).tiny), 0)
    scaled, centered = features * scale, centered * scale
    correlation = centered.T @ centered / (n - 1)
    inverse = torch.linalg.pinv(correlation, rtol=PINV_RTOL, hermitian=True)
    return ((scaled @ inverse) * scaled).sum(dim=1)
