"""KLoM: KL divergence of margins (Georgiev et al. 2024, "Attribute-to-Delete: Machine
Unlearning via Datamodel Matching", Sec. 2).

For each example, the margins of N unlearned models and of N oracles (retrained without
the forget set) are two samples; KLoM is KL(unlearned || oracle) between their histograms
over 20 equal-width bins spanning the joint range of both samples, the oracle's empty
bins floored at 1e-5 (no renormalisation). Everything is vectorised over examples.
"""

from __future__ import annotations

import torch

MARGIN_CLIP = 100.0
BINS = 20
EMPTY_BIN_FLOOR = 1e-5


def margins(logits: torch.Tensor, labels: torch.Tensor, clip: float = MARGIN_CLIP) -> torch.Tensor:
    """z_y - logsumexp_{j != y} z_j for logits (..., n, K) and labels (n,), clipped to +-clip."""
    labels = labels.to(torch.long)
    idx = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    correct = logits.gather(-1, idx).squeeze(-1)
    others = logits.scatter(-1, idx, float("-inf"))
    return (correct - torch.logsumexp(others, dim=-1)).clamp(-clip, clip)


def klom(
    unlearned: torch.Tensor, oracle: torch.Tensor, bins: int = BINS, floor: float = EMPTY_BIN_FLOOR
) -> torch.Tensor:
    """Per-example KL(unlearned || oracle) of margin histograms.

    ``unlearned`` (N_u, n) and ``oracle`` (N_o, n): margins of each model on n examples.
    Returns (n,). An example whose samples are all equal (zero range) has KLoM 0.
    """
    if unlearned.dim() != 2 or oracle.dim() != 2 or unlearned.shape[1] != oracle.shape[1]:
        raise ValueError(
            f"need (N_u, n) and (N_o, n) margins, got {tuple(unlearned.shape)} "
            f"and {tuple(oracle.shape)}"
        )
    u, o = unlearned.to(torch.float64), oracle.to(torch.float64)
    lo = torch.minimum(u.min(0).values, o.min(0).values)
    hi = torch.maximum(u.max(0).values, o.max(0).values)
    width = (hi - lo) / bins
    safe = torch.where(width > 0, width, torch.ones_like(width))

    def histogram(sample: torch.Tensor) -> torch.Tensor:
        index = ((sample - lo) / safe).floor().clamp(0, bins - 1).long()
        index = torch.where(width > 0, index, torch.zeros_like(index))
        counts = torch.zeros(sample.shape[1], bins, dtype=torch.float64)
        counts.scatter_add_(1, index.T, torch.ones_like(index.T, dtype=torch.float64))
        return counts / sample.shape[0]

    p, q = histogram(u), histogram(o)
    q = torch.where(q > 0, q, torch.full_like(q, floor))
    terms = torch.where(p > 0, p * torch.log(p / q), torch.zeros_like(p))
    return terms.sum(1)


def percentile(values: torch.Tensor, q: float = 95.0) -> float:
    """The q-th percentile (linear interpolation) of a 1-D tensor."""
    return torch.quantile(values.to(torch.float64), q / 100.0).item()
