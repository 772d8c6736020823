"""SignGuard (Xu et al., ICDCS 2022) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import SignGuardRule


class SignGuard(DefenseStrategy):
    """Norm filter and sign-statistics clustering, then median-norm clipping and the mean.

    Parameters
    ----------
    lower : float (default: 0.1)
    upper : float (default: 3.0)
    coordinate_fraction : float (default: 0.1)
    seed : int (default: 0)
        See :class:`~defenses.rules.SignGuardRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = SignGuardRule

    def __init__(
        self,
        lower: float = 0.1,
        upper: float = 3.0,
        coordinate_fraction: float = 0.1,
        seed: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        rule = SignGuardRule(
            lower=lower, upper=upper, coordinate_fraction=coordinate_fraction, seed=seed
        )
        super().__init__(rule, **strategy_kwargs)
