"""The server's own step on the round's aggregate, chosen by ``train.server_optimizer``:

- ``"sgd"`` (:class:`ServerOptimizer`): a learning rate and momentum over the rounds
  (``train.server_lr``, ``train.server_momentum``), as in FedAvgM (Hsu, Qi & Brown,
  "Measuring the effects of non-identical data distribution", 2019) and as the ALIE
  authors' code runs its server (SGD, lr 0.1, momentum 0.9 on the aggregated gradient);
- ``"adam"`` (:class:`ServerAdam`): Adam on the aggregate's step, as the NDSS'21 authors'
  code runs its FedSGD server (``Adam(fed_model.parameters(), lr=fed_lr)``, ``fed_lr =
  0.001``, stepped with the aggregated gradient; ``femnist/adam.py``).

SGD. The rule decides the round's aggregate ``a``; with ``w`` the global model the round
started from, the server keeps a velocity ``v`` and moves::

    v <- momentum * v + (a - w)
    w <- w + server_lr * v

With the defaults (lr 1, momentum 0) the step is the identity and is skipped: the new
model is the aggregate, bit for bit, as before this option existed. A round that kept
the previous model (too few replies, a rule that kept it) takes no step and leaves ``v``
as it is.

Only the model's parameters move this way. Floating buffers (BatchNorm's running
statistics) take the aggregate as it is: momentum on a running variance can push it
below zero. The optimiser's state (velocity, Adam's moments) goes into the checkpoint,
so a resumed run steps as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

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


@dataclass
class ServerAdam:
    """Adam over the rounds on the pseudo-gradient ``g = w - a`` (the round's start minus
    the rule's aggregate), in float64, as the NDSS'21 authors' ``adam.py`` steps::

        t <- t + 1
        m <- beta1 * m + (1 - beta1) * g
        s <- beta2 * s + (1 - beta2) * g * g
        w <- w - lr * sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * m / (sqrt(s) + eps)

    With FedSGD clients (one local step, client lr 1, no momentum or weight decay) a
    client's update is minus its minibatch gradient, so ``g`` is the aggregated
    gradient and this is the authors' server exactly. Adam's step is nearly invariant to
    the scale of ``g`` (only through ``eps``), so with another client lr it is the same
    server on a rescaled gradient.

    ``eps`` is added to ``sqrt(s)`` before the bias correction, as in the authors' code
    (the PyTorch Adam of 2019, Kingma & Ba's "efficient version"); today's
    ``torch.optim.Adam`` adds it after (``sqrt(s) / sqrt(1 - beta2 ** t) + eps``). The two
    agree where ``sqrt(s)`` is far above ``eps``. This is not Reddi et al.'s FedAdam
    ("Adaptive federated optimization", ICLR 2021), which has no bias correction and a
    larger ``tau`` in place of ``eps``.

    Parameters
    ----------
    lr : float (default: 0.001)
        ``train.server_lr``; the NDSS'21 code's ``fed_lr``.
    betas : (float, float) (default: (0.9, 0.999))
        The moments' decay rates, the authors' (and torch's) defaults; fixed.
    eps : float (default: 1e-8)
        Fixed, as above.
    keys : tuple of str
        The parameters' names in the model's state dict (the arrays the step moves).
    """

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    keys: tuple[str, ...] = ()
    _step: int = field(default=0, repr=False)
    _exp_avg: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def is_identity(self) -> bool:
        """Never: Adam rescales every step."""
        return False

    def step(self, previous: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """The new global model from the round's start ``previous`` and the rule's
        ``aggregate``; the moments are kept in float64 and the model keeps its dtypes."""
        beta1, beta2 = self.betas
        self._step += 1
        step_size = self.lr * math.sqrt(1 - beta2**self._step) / (1 - beta1**self._step)
        out = ArrayRecord({key: aggregate[key] for key in aggregate.keys()})
        for key in self.keys:
            start = previous[key].numpy()
            w = torch.from_numpy(start).to(torch.float64)
            grad = w - torch.from_numpy(aggregate[key].numpy()).to(torch.float64)
            exp_avg = self._exp_avg.setdefault(key, torch.zeros_like(w))
            exp_avg_sq = self._exp_avg_sq.setdefault(key, torch.zeros_like(w))
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            moved = w.addcdiv(exp_avg, exp_avg_sq.sqrt().add_(self.eps), value=-step_size)
            out[key] = Array(moved.numpy().astype(start.dtype))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The step count and both moments, for checkpoints."""
        return {
            "adam_step": self._step,
            "exp_avg": {k: v.clone() for k, v in self._exp_avg.items()},
            "exp_avg_sq": {k: v.clone() for k, v in self._exp_avg_sq.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty state: no step taken yet)."""
        self._step = int(state.get("adam_step", 0))
        self._exp_avg = {k: v.clone() for k, v in (state.get("exp_avg") or {}).items()}
        self._exp_avg_sq = {k: v.clone() for k, v in (state.get("exp_avg_sq") or {}).items()}


class ServerStep(Protocol):
    """What the server loop asks of its optimiser (both classes above)."""

    keys: tuple[str, ...]

    @property
    def is_identity(self) -> bool: ...

    def step(self, previous: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def server_optimizer(name: str, lr: float, momentum: float) -> ServerStep:
    """The server's step named by ``train.server_optimizer`` (one of the config's
    ``SERVER_OPTIMIZERS``; validation has checked that ``momentum`` is 0 for Adam)."""
    if name == "adam":
        return ServerAdam(lr=lr)
    return ServerOptimizer(lr=lr, momentum=momentum)
