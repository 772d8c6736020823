"""Weak differential privacy (Sun et al., 2019) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import WeakDPRule


class WeakDP(DefenseStrategy):
    """Norm clipping, then Gaussian noise of std ``noise_std`` on the aggregated model.

    Parameters
    ----------
    norm_bound : float (default: 1.5)
    noise_std : float (default: 0.025)
    seed : int (default: 0)
        See :class:`~defenses.rules.WeakDPRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = WeakDPRule

    def __init__(
        self,
        norm_bound: float = 1.5,
        noise_std: float = 0.025,
        seed: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        rule = WeakDPRule(norm_bound=norm_bound, noise_std=noise_std, seed=seed)
        super().__init__(rule, **strategy_kwargs)
