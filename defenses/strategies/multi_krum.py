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
    distance : {"squared", "euclidean"} (default: "squared")
        What a Krum score sums (the ALIE authors' code: ``"euclidean"``).
    neighbours : {"n-f-2", "n-f"} (default: "n-f-2")
        How many nearest neighbours a Krum score sums (the ALIE authors' code: ``"n-f"``).
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = MultiKrumRule

    def __init__(
        self,
        num_malicious: int = 1,
        num_selected: int | None = None,
        distance: str = "squared",
        neighbours: str = "n-f-2",
        **strategy_kwargs: Any,
    ) -> None:
        rule = MultiKrumRule(
            num_malicious=num_malicious,
            num_selected=num_selected,
            distance=distance,
            neighbours=neighbours,
        )
        super().__init__(rule, **strategy_kwargs)
