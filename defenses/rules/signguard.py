"""SignGuard (Xu, Huang, Song, Lan, Wang; ICDCS 2022, arXiv 2109.05872).

"Byzantine-robust Federated Learning through Collaborative Malicious Gradient Filtering".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsec_core.params import in_unit_interval

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    distances_to,
    normalized,
    param,
)
from .norm_clipping import clipping_factors


@dataclass(kw_only=True)
class SignGuardRule(SeededRule):
    """Keep the clients that pass a norm filter and fall in the largest sign cluster;
    clip them to the median norm and average.

    1. Norm filter: with ``M`` the median update norm, keep ``lower < ||u_i|| / M <
       upper``. For an even number of clients ``M`` is the mean of the two middle norms
       (numpy's median); the authors' code
       takes the lower of the two (``torch.median``). The two differ only for even
       ``n``, and only in the bound and the clipping norm, by half the gap between the
       middle norms.
    2. Sign filter: on a random ``coordinate_fraction`` of the coordinates (the
       authors' code takes a contiguous block at a random offset; the paper says a
       random subset), each client's shares of positive, zero and negative update
       values, each divided by its largest value over the clients; Mean-Shift
       clustering of these 3-vectors (bandwidth by scikit-learn's
       ``estimate_bandwidth``, quantile 0.5, at most 50 samples; clients no kernel
       reaches are in no cluster; all as the authors' code); keep the largest cluster
       (ties: the one holding the lowest row). A bandwidth of 0 (all clients alike) is
       one cluster.
    3. The clients passing both are clipped to norm ``M`` and averaged with data-size
       weights (the authors' code: uniform). If none passes, the round keeps the
       previous model.

    Parameters
    ----------
    lower, upper : float (default: 0.1, 3.0)
        The norm filter's bounds, relative to the median norm (the paper's L and R).
    coordinate_fraction : float (default: 0.1)
        Share of the coordinates the sign statistics are taken on (the paper's 10%).
    seed : int (default: 0)
        Seeds the coordinate subset and the clustering.

    Cost: one blocked pass for the norms, a gather of ``(n, fraction * d)`` values,
    Mean-Shift on ``n`` points in 3-D. Scores: ``||u_i|| / M``.
    """

    name = "signguard"
    lower: float = param(0.1, lambda v: 0 <= v < 1, "a number in [0, 1)")
    upper: float = param(3.0, lambda v: v > 1, "a number > 1")
    coordinate_fraction: float = param(0.1, in_unit_interval, "in (0, 1]")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        models, device = batch.models, batch.models.device
        norms = distances_to(models, batch.global_model)
        median = norms.quantile(0.5)  # the mean of the middle two (the authors' code: the lower)
        ratio = norms / median.clamp_min(torch.finfo(norms.dtype).tiny)
        by_norm = (ratio > self.lower) & (ratio < self.upper)
        d = models.shape[1]
        size = max(1, int(self.coordinate_fraction * d))
        generator = self._generator(device)
        columns = torch.randperm(d, generator=generator, device=device)[:size]
        signs = torch.sign(models[:, columns] - batch.global_model[columns])
        shares = torch.stack([(signs > 0), (signs == 0), (signs < 0)], dim=1).double().mean(2)
        features = shares / (shares.max(dim=0).values + 1e-8)  # each share over its largest
        seed = int(torch.randint(2**31, (1,), generator=generator, device=device))
        by_sign = torch.from_numpy(largest_cluster(features.cpu().numpy(), seed))
        kept = by_norm & by_sign.to(device)
        if not kept.any():
            note = "no client passed both the norm filter and the sign filter"
            return AggregationResult(None, kept, ratio, note)
        coefficients = normalized(batch.weights, kept) * clipping_factors(norms, median)
        return AggregationResult(
            combine(batch, coefficients), kept, ratio, coefficients=coefficients
        )


def largest_cluster(points: np.ndarray, seed: int) -> np.ndarray:
    """Bool mask of the largest Mean-Shift cluster of ``points`` (rows); points no
    kernel reaches (``cluster_all=False``, as the authors' code) are in none."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    if len(points) < 2:
        return np.ones(len(points), dtype=bool)
    bandwidth = estimate_bandwidth(points, quantile=0.5, n_samples=50, random_state=seed)
    if not bandwidth > 0:
        return np.ones(len(points), dtype=bool)
    labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(points).labels_
    if (labels < 0).all():
        return np.zeros(len(points), dtype=bool)
    counts = np.bincount(labels[labels >= 0])
    largest = np.flatnonzero(counts == counts.max())
    best = min(largest, key=lambda c: int(np.argmax(labels == c)))  # holds the lowest row
    return labels == best
