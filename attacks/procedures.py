"""Training procedures and update transforms that several attacks share.

- :func:`project_to_ball` / :func:`projected_train`: PGD as Wang et al. (2020) run it:
  plain local SGD, and every ``project_every`` optimizer steps (and once more after the
  last step) the WHOLE parameter vector is projected onto the L2 ball of radius ``eps``
  around the round's global model. Inside the ball the projection changes nothing.
- :func:`scale_update`: ``w <- w0 + factor (w - w0)``; model replacement (Bagdasaryan
  et al. 2020) uses ``factor = N_round / N_attacker``.
- :class:`ProjectedGradientMixin`, :class:`ModelReplacementMixin`: the two as mix-ins
  that put them into an attack's ``train`` / ``transform_update`` hooks (list them
  before the attack class they modify: ``class X(ProjectedGradientMixin, Base)``).

Everything works on the flat parameter vector (``fedsec.training.flatten_params``),
on the device the model trains on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from attacks.base import AttackContext
from fedsec.params import at_least, in_unit_interval, one_of, param, positive
from fedsec.training import TrainStats, assign_flat_params, flatten_params, train

#: What ``attack.eps`` is measured in (:class:`ProjectedGradientMixin`).
EPS_UNITS = ("absolute", "benign-norm")


def project_to_ball(model: torch.nn.Module, center: torch.Tensor, eps: float) -> bool:
    """Project the model's parameters onto {w : ||w - center||_2 <= eps}, in place.

    Returns whether the model moved; a model inside the ball is left bit-for-bit as it
    was (no copy back).
    """
    w = flatten_params(model)
    diff = w - center.to(w.device)
    norm = float(torch.linalg.vector_norm(diff))
    if norm <= eps:
        return False
    assign_flat_params(model, center.to(w.device) + diff * (eps / norm))
    return True


def projected_train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    center: torch.Tensor,
    eps: float,
    project_every: int,
    train_kwargs: dict[str, Any],
) -> TrainStats:
    """Local SGD with an L2-ball projection around ``center`` every ``project_every`` steps
    and after the last step (so the returned model always lies in the ball)."""
    device = torch.device(train_kwargs.get("device", "cpu"))
    model.to(device)
    center = center.to(device)

    def after_step(step: int) -> None:
        if step % project_every == 0:
            project_to_ball(model, center, eps)

    stats = train(model, x, y, **train_kwargs, after_step=after_step)
    project_to_ball(model, center, eps)
    return stats


def benign_update(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train_kwargs: dict[str, Any]
) -> torch.Tensor:
    """The flat update ``w - w0`` that honest training on ``(x, y)`` would make from
    ``model``'s parameters, with the round's settings (seed included); ``model`` is left
    as it was. A malicious client learns from it how large an honest update is."""
    clone = copy.deepcopy(model)
    w0 = flatten_params(clone).detach().clone()
    # without the attacker's penalty and constraint (attack.evasion)
    honest = {k: v for k, v in train_kwargs.items() if k not in ("penalty", "constraint")}
    train(clone, x, y, **honest)
    return flatten_params(clone).detach() - w0.to(flatten_params(clone).device)


def scale_update(model: torch.nn.Module, global_flat: torch.Tensor, factor: float) -> None:
    """``w <- w0 + factor * (w - w0)`` on the flat parameter vector, in place."""
    w = flatten_params(model)
    w0 = global_flat.to(w.device)
    assign_flat_params(model, w0 + factor * (w - w0))


def replacement_factor(ctx: AttackContext, stats: TrainStats) -> float:
    """N_round / N_attacker: the boost that lets one update replace the FedAvg average."""
    return ctx.round_examples / stats.num_examples


@dataclass(kw_only=True, eq=False)
class ProjectedGradientMixin:
    """Makes an attack's training PGD: SGD projected onto the L2 ball of radius
    ``eps * eps_decay ** (round - 1)`` around the round's global model every
    ``project_every`` steps and after the last step. ``eps_decay = 0.998`` reproduces the
    decaying radius that Wang et al.'s code uses against Krum / Multi-Krum (and Huang et
    al.'s against Multi-metrics); 1.0 (the default) keeps it fixed.

    ``eps_unit`` says what ``eps`` is measured in: ``"absolute"`` (parameter-space L2
    distance, the papers' setting) or ``"benign-norm"``: multiples of the norm of the
    update the attacker's own clean data would give in this round (it trains a copy of
    the global model honestly first, :func:`benign_update`). An absolute radius means
    something else on every model, data set and stage of training; a radius relative to
    the honest update is the same attacker strength everywhere (0.5: inside the honest
    crowd, 2: twice as far out)."""

    eps: float = param(1.0, positive, "> 0 (the PGD radius)")
    eps_unit: str = param("absolute", one_of(*EPS_UNITS), "one of 'absolute', 'benign-norm'")
    project_every: int = param(10, at_least(1), ">= 1 (optimizer steps)")
    eps_decay: float = param(1.0, in_unit_interval, "in (0, 1]")

    def radius(self, server_round: int) -> float:
        """The radius in ``eps_unit`` units."""
        return self.eps * self.eps_decay ** (server_round - 1)

    def local_update(
        self, model: torch.nn.Module, ctx: AttackContext, train_kwargs: dict[str, Any]
    ) -> TrainStats:
        kwargs = {**train_kwargs, "device": ctx.device}
        radius = self.radius(ctx.server_round)
        if self.eps_unit == "benign-norm":
            radius *= float(torch.linalg.vector_norm(benign_update(model, *ctx.examples, kwargs)))
        x, y = self.attacker_data(ctx)
        global_flat = flatten_params(model).detach().clone()
        stats = projected_train(
            model, x, y, global_flat.to(ctx.device), radius, self.project_every, kwargs
        )
        self.transform_update(model, global_flat, ctx, stats)
        return stats


class ModelReplacementMixin:
    """Makes an attack's ``transform_update`` model replacement:
    ``w <- w0 + (N_round / N_attacker) (w - w0)`` with ``N_round = ctx.round_examples``
    and ``N_attacker`` the size of the attacker's (poisoned) training set."""

    def transform_update(self, model, global_flat, ctx: AttackContext, stats: TrainStats) -> None:
        scale_update(model, global_flat, replacement_factor(ctx, stats))
