"""FedAvg (McMahan et al., AISTATS 2017) with fedsec's reply checks and reports."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import FedAvgRule


class FedAvg(DefenseStrategy):
    """No defense: the mean of all valid replies, weighted by data size (or equally).

    Unlike Flower's ``FedAvg``, one bad reply (error, NaN, wrong shapes) is refused
    alone instead of failing the round, and ``aggregate_round`` returns the verdicts.

    Parameters
    ----------
    weighting : str (default: "examples")
        ``"examples"`` (``n_i / sum n``, McMahan et al.) or ``"equal"`` (``1 / n``, as
        the DBA authors' server); see :class:`~defenses.rules.FedAvgRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = FedAvgRule

    def __init__(self, weighting: str = "examples", **strategy_kwargs: Any) -> None:
        super().__init__(FedAvgRule(weighting=weighting), **strategy_kwargs)
