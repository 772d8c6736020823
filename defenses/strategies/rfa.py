"""Robust Federated Aggregation (Pillutla et al., IEEE TSP 2022) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import RFARule


class RFA(DefenseStrategy):
    """Data-size-weighted geometric median of the models (smoothed Weiszfeld).

    Parameters
    ----------
    max_iter : int (default: 10)
    smoothing : float (default: 1e-6)
        See :class:`~defenses.rules.RFARule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = RFARule

    def __init__(self, max_iter: int = 10, smoothing: float = 1e-6, **strategy_kwargs: Any) -> None:
        super().__init__(RFARule(max_iter=max_iter, smoothing=smoothing), **strategy_kwargs)
