"""Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import DnCRule


class DnC(DefenseStrategy):
    """Drop the updates that project far on the top singular vector of random
    coordinate subsets, average the rest.

    Parameters
    ----------
    num_malicious : int (default: 1)
    filter_fraction : float (default: 1.0)
    subsample : int (default: 10000)
    iterations : int (default: 1)
    seed : int (default: 0)
        See :class:`~defenses.rules.DnCRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = DnCRule

    def __init__(
        self,
        num_malicious: int = 1,
        filter_fraction: float = 1.0,
        subsample: int = 10_000,
        iterations: int = 1,
        seed: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        rule = DnCRule(
            num_malicious=num_malicious,
            filter_fraction=filter_fraction,
            subsample=subsample,
            iterations=iterations,
            seed=seed,
        )
        super().__init__(rule, **strategy_kwargs)
