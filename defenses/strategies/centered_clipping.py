"""Centered clipping (Karimireddy et al., ICML 2021) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import CenteredClippingRule


class CenteredClipping(DefenseStrategy):
    """Clip each update around the previous round's aggregate, ``iterations`` times.

    Parameters
    ----------
    tau : float (default: 10.0)
        See :class:`~defenses.rules.CenteredClippingRule`.
    iterations : int (default: 1)
        See :class:`~defenses.rules.CenteredClippingRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = CenteredClippingRule

    def __init__(self, tau: float = 10.0, iterations: int = 1, **strategy_kwargs: Any) -> None:
        super().__init__(CenteredClippingRule(tau=tau, iterations=iterations), **strategy_kwargs)
