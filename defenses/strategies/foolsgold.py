"""FoolsGold (Fung et al., RAID 2020) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import FoolsGoldRule


class FoolsGold(DefenseStrategy):
    """Down-weight clients whose update histories are alike (sybils).

    Histories are kept per client key (``partition-id``, else node id);
    ``state_dict()`` checkpoints them.

    Parameters
    ----------
    kappa : float (default: 1.0)
        See :class:`~defenses.rules.FoolsGoldRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = FoolsGoldRule

    def __init__(self, kappa: float = 1.0, **strategy_kwargs: Any) -> None:
        super().__init__(FoolsGoldRule(kappa=kappa), **strategy_kwargs)
