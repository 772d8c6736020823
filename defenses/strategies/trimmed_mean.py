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
    around : str (default: "ends")
        ``"ends"`` (Yin et al.) or ``"median"`` (the mean of the ``n - int(beta n) - 1``
        values nearest the median, as Baruch et al.'s code).
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = TrimmedMeanRule

    def __init__(self, beta: float = 0.1, around: str = "ends", **strategy_kwargs: Any) -> None:
        super().__init__(TrimmedMeanRule(beta=beta, around=around), **strategy_kwargs)
