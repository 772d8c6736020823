"""Coordinate-wise trimmed mean (Yin et al., ICML 2018) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import TrimmedMeanRule


class TrimmedMean(DefenseStrategy):
    """Per coordinate, the mean after dropping the ``int(beta n)`` lowest and highest values.

    Parameters
    ----------
    beta : float (default: 0.1)
        Fraction trimmed from each end, in [0, 0.5); see
        :class:`~defenses.rules.TrimmedMeanRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = TrimmedMeanRule

    def __init__(self, beta: float = 0.1, **strategy_kwargs: Any) -> None:
        super().__init__(TrimmedMeanRule(beta=beta), **strategy_kwargs)
