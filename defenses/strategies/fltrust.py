"""FLTrust (Cao et al., NDSS 2021) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy, RootUpdateFn
from ..rules import FLTrustRule


class FLTrust(DefenseStrategy):
    """Trust-weighted mean of updates rescaled to the norm of the server's root update.

    Parameters
    ----------
    root_size : int (default: 100)
        Examples in the server's clean root set (see :class:`~defenses.rules.FLTrustRule`).
    root_update_fn : callable (default: None)
        ``root_update_fn(server_round, global_arrays) -> ArrayRecord``: the global
        model after the server trained it on its small clean root set (``root_size``
        examples), with the global model's keys, shapes and dtypes. The platform
        supplies it (``defenses.build_defense(..., root_update_fn=...)``); without it
        ``configure_train`` refuses to start a round.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.

    Cost: one training pass on the root data per round, plus the rule's
    (see :class:`~defenses.rules.FLTrustRule`).
    """

    rule_class = FLTrustRule

    def __init__(
        self,
        root_size: int = 100,
        root_update_fn: RootUpdateFn | None = None,
        **strategy_kwargs: Any,
    ) -> None:
        super().__init__(
            FLTrustRule(root_size=root_size), root_update_fn=root_update_fn, **strategy_kwargs
        )
