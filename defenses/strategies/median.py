"""Coordinate-wise median (Yin et al., ICML 2018) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import MedianRule


class Median(DefenseStrategy):
    """Coordinate-wise median of the valid client models (unweighted).

    Parameters
    ----------
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = MedianRule

    def __init__(self, **strategy_kwargs: Any) -> None:
        super().__init__(MedianRule(), **strategy_kwargs)
