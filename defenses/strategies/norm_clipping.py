"""Norm-difference clipping (Sun et al., 2019) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import NormClippingRule


class NormClipping(DefenseStrategy):
    """Clip each update ``w_i - w_0`` to L2 norm ``norm_bound``, then FedAvg.

    Parameters
    ----------
    norm_bound : float (default: 1.5)
        See :class:`~defenses.rules.NormClippingRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = NormClippingRule

    def __init__(self, norm_bound: float = 1.5, **strategy_kwargs: Any) -> None:
        super().__init__(NormClippingRule(norm_bound=norm_bound), **strategy_kwargs)
