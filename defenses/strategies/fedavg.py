"""FedAvg (McMahan et al., AISTATS 2017) with fedsec's reply checks and reports."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import FedAvgRule


class FedAvg(DefenseStrategy):
    """No defense: the data-size-weighted mean of all valid replies.

    Unlike Flower's ``FedAvg``, one bad reply (error, NaN, wrong shapes) is refused
    alone instead of failing the round, and ``aggregate_round`` returns the verdicts.

    Parameters
    ----------
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = FedAvgRule

    def __init__(self, **strategy_kwargs: Any) -> None:
        super().__init__(FedAvgRule(), **strategy_kwargs)
