"""FLAME (Nguyen et al., USENIX Security 2022) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import FLAMERule


class FLAME(DefenseStrategy):
    """HDBSCAN on cosine distances of the updates, median-norm clipping, adaptive noise.

    Parameters
    ----------
    noise_lambda : float (default: 0.001)
    seed : int (default: 0)
        See :class:`~defenses.rules.FLAMERule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = FLAMERule

    def __init__(self, noise_lambda: float = 0.001, seed: int = 0, **strategy_kwargs: Any) -> None:
        super().__init__(FLAMERule(noise_lambda=noise_lambda, seed=seed), **strategy_kwargs)
