"""FLDetector (Zhang et al., KDD 2022) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import FLDetectorRule


class FLDetector(DefenseStrategy):
    """Flag clients whose updates an L-BFGS prediction from their history misses;
    reject them from then on and average the rest.

    Parameters
    ----------
    window : int (default: 10)
    start_round : int (default: -1, i.e. window + 1)
    seed : int (default: 0)
        See :class:`~defenses.rules.FLDetectorRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = FLDetectorRule

    def __init__(
        self, window: int = 10, start_round: int = -1, seed: int = 0, **strategy_kwargs: Any
    ) -> None:
        rule = FLDetectorRule(window=window, start_round=start_round, seed=seed)
        super().__init__(rule, **strategy_kwargs)
