"""Robust learning rate (Ozdayi et al., AAAI 2021) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import RLRRule


class RLR(DefenseStrategy):
    """FedAvg whose server learning rate flips sign on coordinates without sign consensus.

    Parameters
    ----------
    threshold : int (default: 4)
    server_lr : float (default: 1.0)
        See :class:`~defenses.rules.RLRRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = RLRRule

    def __init__(self, threshold: int = 4, server_lr: float = 1.0, **strategy_kwargs: Any) -> None:
        super().__init__(RLRRule(threshold=threshold, server_lr=server_lr), **strategy_kwargs)
