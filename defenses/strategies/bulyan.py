"""Bulyan (El Mhamdi et al., ICML 2018) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import BulyanRule


class Bulyan(DefenseStrategy):
    """Bulyan: repeated-Krum selection of ``n - 2f`` models, then a trimmed mean around
    their coordinate-wise median.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``; needs ``n >= 4f + 3``. See :class:`~defenses.rules.BulyanRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = BulyanRule

    def __init__(self, num_malicious: int = 1, **strategy_kwargs: Any) -> None:
        super().__init__(BulyanRule(num_malicious=num_malicious), **strategy_kwargs)
