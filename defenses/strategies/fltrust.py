"""FLTrust (Cao et al., NDSS 2021) as a Flower strategy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from ..adapter import DefenseStrategy, RecordLayout
from ..rules import FLTrustRule

#: ``(server_round, global_arrays) -> the server's model after training on root data``.
RootUpdateFn = Callable[[int, ArrayRecord], ArrayRecord]


class FLTrust(DefenseStrategy):
    """Trust-weighted mean of updates rescaled to the norm of the server's root update.

    Parameters
    ----------
    root_update_fn : callable (default: None)
        ``root_update_fn(server_round, global_arrays) -> ArrayRecord``: the global
        model after the server trained it on its small clean root set, with the
        global model's keys, shapes and dtypes. The platform supplies it
        (``defenses.build_defense(..., root_update_fn=...)``); without it
        ``configure_train`` refuses to start a round.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.

    Cost: one training pass on the root data per round, plus the rule's
    (see :class:`~defenses.rules.FLTrustRule`).
    """

    rule_class = FLTrustRule
    needs_root_update = True

    def __init__(self, root_update_fn: RootUpdateFn | None = None, **strategy_kwargs: Any) -> None:
        super().__init__(FLTrustRule(), **strategy_kwargs)
        self.root_update_fn = root_update_fn

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Refuse to start a round without ``root_update_fn``; else as the adapter."""
        if self.root_update_fn is None:
            raise RuntimeError("FLTrust needs root_update_fn(server_round, arrays) -> ArrayRecord")
        return super().configure_train(server_round, arrays, config, grid)

    def _root_update(
        self, server_round: int, layout: RecordLayout, global_model: torch.Tensor
    ) -> torch.Tensor:
        trained = self.root_update_fn(server_round, self._global_arrays)
        return layout.flatten(trained, self.device) - global_model
