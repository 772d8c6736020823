"""FLAME (Nguyen et al.; USENIX Security 2022, arXiv 2101.02281).

"FLAME: Taming Backdoors in Federated Learning".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    cosine_from_gram,
    gram,
    non_negative,
    param,
)
from .norm_clipping import clipping_factors


@dataclass(kw_only=True)
class FLAMERule(SeededRule):
    """Cluster the updates, keep the majority, clip to the median norm, add noise.

    1. Cosine distances ``1 - cos(u_i, u_j)`` of the updates ``u_i = w_i - w_0``.
    2. HDBSCAN on them (``min_cluster_size = n // 2 + 1``, ``min_samples = 1``, one
       cluster allowed): the clients of the largest cluster are accepted, the rest
       (other clusters and noise) rejected. If HDBSCAN finds no cluster at all, every
       client is accepted (clipping and noise still apply).
    3. ``S`` = median of all ``||u_i||``; each accepted update is scaled by
       ``min(1, S / ||u_i||)`` and they are averaged without weights (as in the paper).
    4. Gaussian noise ``N(0, (lambda S)^2)`` is added to every parameter.

    Parameters
    ----------
    noise_lambda : float (default: 0.001)
        ``lambda``; the paper uses 0.001 for image classification (0.01 for NLP).
    seed : int (default: 0)
        Seeds the noise: each call draws from a stream derived from the seed and the
        number of earlier calls, so a run (and a resumed run) is reproducible.

    Cost: O(n^2 d) for the Gram matrix of the updates, HDBSCAN on the ``(n, n)``
    distances (on the host, the only data that leaves the device), one pass to
    average, ``d`` normal draws. Scores: each client's mean cosine distance to the
    others.
    """

    name = "flame"
    noise_lambda: float = param(0.001, non_negative, "a number >= 0")

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        products = gram(batch.models, batch.global_model)
        norms = products.diagonal().clamp_min(0).sqrt()
        distances = (1 - cosine_from_gram(products)).fill_diagonal_(0)
        accepted = _majority_cluster(distances).to(batch.models.device)
        bound = norms.quantile(0.5)
        scale = clipping_factors(norms, bound) * accepted / accepted.sum()
        model = combine(batch, scale)
        noise = self._standard_normal_like(model)
        model.add_(noise.mul_((self.noise_lambda * bound).to(model.dtype)))
        scores = distances.sum(dim=1) / max(batch.n - 1, 1)
        return AggregationResult(model, accepted, scores, coefficients=scale)


def _majority_cluster(distances: torch.Tensor) -> torch.Tensor:
    """Bool mask of the largest HDBSCAN cluster (all True if there is no cluster)."""
    n = distances.shape[0]
    if n < 2:
        return torch.ones(n, dtype=torch.bool)
    from sklearn.cluster import HDBSCAN  # imported here: scikit-learn takes seconds to load

    matrix = distances.to("cpu", torch.float64).numpy()
    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1,
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    ).fit_predict((matrix + matrix.T) / 2)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return torch.ones(n, dtype=torch.bool)
    return torch.from_numpy(labels == np.bincount(clustered).argmax())
