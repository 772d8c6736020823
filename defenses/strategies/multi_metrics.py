"""Multi-metrics (Huang et al., ICCV 2023) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import MultiMetricsRule


class MultiMetrics(DefenseStrategy):
    """Multi-metrics: whitened Manhattan/Euclidean/cosine scores, keep the lowest fraction.

    Parameters
    ----------
    keep_fraction : float (default: 0.3)
        ``p``; ``max(1, int(p n))`` clients are averaged.
    variant : str (default: "paper")
        ``"paper"`` (features against the global model, O(n d)) or ``"reference"``
        (the authors' pairwise code, O(n^2 d)). See
        :class:`~defenses.rules.MultiMetricsRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = MultiMetricsRule

    def __init__(
        self, keep_fraction: float = 0.3, variant: str = "paper", **strategy_kwargs: Any
    ) -> None:
        rule = MultiMetricsRule(keep_fraction=keep_fraction, variant=variant)
        super().__init__(rule, **strategy_kwargs)
