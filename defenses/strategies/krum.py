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
    distance : {"squared", "euclidean"} (default: "squared")
        What a score sums: Blanchard et al.'s squared distances, or the distances (the
        ALIE authors' code).
    neighbours : {"n-f-2", "n-f", "n-f-3"} (default: "n-f-2")
        How many nearest neighbours a score sums: Blanchard et al.'s, the ALIE authors'
        code's ``n - f``, or the NDSS'21 authors' code's ``n - f - 3``.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = KrumRule

    def __init__(
        self,
        num_malicious: int = 1,
        distance: str = "squared",
        neighbours: str = "n-f-2",
        **strategy_kwargs: Any,
    ) -> None:
        rule = KrumRule(num_malicious=num_malicious, distance=distance, neighbours=neighbours)
        super().__init__(rule, **strategy_kwargs)
