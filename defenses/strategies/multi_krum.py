"""Multi-Krum (Blanchard et al., NeurIPS 2017) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import MultiKrumRule


class MultiKrum(DefenseStrategy):
    """Multi-Krum: the weighted mean of the ``m`` models with the lowest Krum scores.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``; needs ``n >= 2f + 3``.
    num_selected : int or None (default: None)
        ``m``; ``None`` means ``n - f``. See :class:`~defenses.rules.MultiKrumRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = MultiKrumRule

    def __init__(
        self, num_malicious: int = 1, num_selected: int | None = None, **strategy_kwargs: Any
    ) -> None:
        rule = MultiKrumRule(num_malicious=num_malicious, num_selected=num_selected)
        super().__init__(rule, **strategy_kwargs)
