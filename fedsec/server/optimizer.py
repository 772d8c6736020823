"""The server's own step on the round's aggregate: a learning rate and momentum over the
rounds (``train.server_lr``, ``train.server_momentum``), as in FedAvgM (Hsu, Qi & Brown,
"Measuring the effects of non-identical data distribution", 2019) and as the ALIE
authors' code runs its server (SGD, lr 0.1, momentum 0.9 on the aggregated gradient).

The rule decides the round's aggregate ``a``; with ``w`` the global model the round
started from, the server keeps a velocity ``v`` and moves::

    v <- momentum * v + (a - w)
    w <- w + server_lr * v

With the defaults (lr 1, momentum 0) the step is the identity and is skipped: the new
model is the aggregate, bit for bit, as before this option existed. A round that kept
the previous model (too few replies, a rule that kept it) takes no step and leaves ``v``
as it is.

Only the model's parameters move this way. Floating buffers (BatchNorm's running
statistics) take the aggregate as it is: momentum on a running variance can push it
below zero. The velocity goes into the checkpoint, so a resumed run steps as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Array, ArrayRecord


@dataclass
class ServerOptimizer:
    """The server's step (see the module docstring).

    Parameters
    ----------
    lr : float (default: 1.0)
        ``train.server_lr``; the step's length along the velocity.
    momentum : float (default: 0.0)
        ``train.server_momentum``, in ``[0, 1)``.
    keys : tuple of str
        The parameters' names in the model's state dict (the arrays the step moves).
    """

    lr: float = 1.0
    momentum: float = 0.0
    keys: tuple[str, ...] = ()
    _velocity: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def is_identity(self) -> bool:
        """Whether the step leaves the aggregate as it is (lr 1, no momentum)."""
        return self.lr == 1.0 and self.momentum == 0.0

    def step(self, previous: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """The new global model from the round's start ``previous`` and the rule's
        ``aggregate``; the velocity is kept in float64 and the model keeps its dtypes."""
        if self.is_identity:
            return aggregate
        out = ArrayRecord({key: aggregate[key] for key in aggregate.keys()})
        for key in self.keys:
            start = previous[key].numpy()
            w = torch.from_numpy(start).to(torch.float64)
            delta = torch.from_numpy(aggregate[key].numpy()).to(torch.float64) - w
            velocity = self._velocity.get(key)
            velocity = delta if velocity is None else velocity.mul_(self.momentum).add_(delta)
            self._velocity[key] = velocity
            moved = w.add(velocity, alpha=self.lr).numpy().astype(start.dtype)
            out[key] = Array(moved)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The velocity, for checkpoints (empty for the identity step)."""
        return {"velocity": {k: v.clone() for k, v in self._velocity.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty state: no velocity yet)."""
        self._velocity = {k: v.clone() for k, v in (state.get("velocity") or {}).items()}
