"""Krum (Blanchard et al., NeurIPS 2017) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import KrumRule


class Krum(DefenseStrategy):
    """Krum: the new model is the client model closest to its ``n - f - 2`` neighbours.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``; see :class:`~defenses.rules.KrumRule` (needs ``n >= 2f + 3``).
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = KrumRule

    def __init__(self, num_malicious: int = 1, **strategy_kwargs: Any) -> None:
        super().__init__(KrumRule(num_malicious=num_malicious), **strategy_kwargs)
