"""Multi-Krum (Blanchard et al., NeurIPS 2017) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import MultiKrumRule


class MultiKrum(DefenseStrategy):
    """Multi-Krum: the weighted mean of ``m`` models chosen by their Krum scores.

    Parameters
    ----------
    num_malicious : int (default: 1)
        ``f``; needs ``n >= 2f + 3``.
    num_selected : int or None (default: None)
        ``m``; ``None`` means ``n - f``. See :class:`~defenses.rules.MultiKrumRule`.
    distance : {"squared", "euclidean"} (default: "squared")
        What a Krum score sums (the ALIE authors' code: ``"euclidean"``).
    neighbours : {"n-f-2", "n-f", "n-f-3"} (default: "n-f-2")
        How many nearest neighbours a Krum score sums (the ALIE authors' code: ``"n-f"``;
        the NDSS'21 authors' code: ``"n-f-3"``).
    selection : {"once", "repeated"} (default: "once")
        Blanchard et al.'s one round of Krum scores, or Krum repeated on the models not
        yet chosen (the NDSS'21 paper's Multi-Krum).
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
        selection: str = "once",
        **strategy_kwargs: Any,
    ) -> None:
        rule = MultiKrumRule(
            num_malicious=num_malicious,
            num_selected=num_selected,
            distance=distance,
            neighbours=neighbours,
            selection=selection,
        )
        super().__init__(rule, **strategy_kwargs)
