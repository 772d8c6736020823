"""Training procedures and update transforms that several attacks share.

- :func:`project_to_ball` / :func:`projected_train`: PGD (Wang et al. 2020): plain local
  SGD, and every few optimizer steps the WHOLE parameter vector is projected onto the L2
  ball of radius ``eps`` around the round's global model. Inside the ball the projection
  changes nothing. When it projects (:func:`projects_after`, ``attack.projection``):
  ``"global-steps"`` (default, fedsec's schedule) after global steps ``k x N`` (N =
  ``project_every``, steps counted over all local epochs) and once more after the last
  step; ``"per-epoch"`` (the authors' code, ``fl_trainer.train`` of
  ksreenivasan/OOD_Federated_Learning, one call per epoch) after every batch whose index
  within its epoch (0-based) is a multiple of N, and after the last batch of every epoch.
  Both project once more after the last step (:func:`projected_train`), so they are
  bit-identical at N = 1; at N > 1 they differ by where the projections fall (the
  authors' code projects right after the first batch of every epoch and at every
  epoch's end).
- :func:`scale_update`: ``w <- w0 + factor (w - w0)``; model replacement (Bagdasaryan
  et al. 2020) uses ``factor = N_round / N_attacker``.
- :class:`ProjectedGradientMixin`, :class:`ModelReplacementMixin`: the two as mix-ins
  that put them into an attack's ``train`` / ``transform_update`` hooks (list them
  before the attack class they modify: ``class X(ProjectedGradientMixin, Base)``).

Everything works on the flat parameter vector (``fedsec_core.training.flatten_params``, the
parameters view of ``fedsec_core.layout``), on the device the model trains on;
:func:`benign_update` also gives the state view, the vector the server's rule sees (the
scaling evasion's).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from attacks.base import AttackContext
from fedsec_core.layout import ModelLayout
from fedsec_core.params import at_least, in_unit_interval, one_of, param, positive
from fedsec_core.training import TrainStats, assign_flat_params, flatten_params, train

#: What ``attack.eps`` is measured in (:class:`ProjectedGradientMixin`).
EPS_UNITS = ("absolute", "benign-norm")
#: When PGD projects (``attack.projection``): fedsec's schedule, or the authors' code's.
PROJECTIONS = ("global-steps", "per-epoch")


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


def projects_after(step: int, steps_per_epoch: int, every: int, projection: str) -> bool:
    """Whether PGD projects right after optimizer step ``step`` (1, 2, ... over all local
    epochs of ``steps_per_epoch`` steps each; the final projection of ``"global-steps"``,
    after the last step, is not included):

    - ``"global-steps"``: ``step % every == 0``;
    - ``"per-epoch"`` (Wang et al.'s code): the step's batch index within its epoch,
      ``b = (step - 1) % steps_per_epoch``, is a multiple of ``every`` or the epoch's last
      (``b == steps_per_epoch - 1``).
    """
    if projection == "global-steps":
        return step % every == 0
    if projection == "per-epoch":
        batch = (step - 1) % steps_per_epoch
        return batch % every == 0 or batch == steps_per_epoch - 1
    raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")


def projected_train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    center: torch.Tensor,
    eps: float,
    project_every: int,
    train_kwargs: dict[str, Any],
    projection: str = "global-steps",
) -> TrainStats:
    """Local SGD with an L2-ball projection around ``center`` after the steps
    :func:`projects_after` names (with ``"global-steps"`` every ``project_every`` steps,
    with ``"per-epoch"`` at batch indices ``0, N, 2N, ...`` and the last batch of every
    epoch), and once more after the last step, so the returned model lies in the ball.
    With ``"per-epoch"`` that last projection follows the projection of the last batch:
    it moves the weights by rounding only (the norm just set to ``eps`` may come out a
    few ulps above it; about 4e-9 on digits + mlp), and it keeps the two schedules
    bit-identical at ``project_every = 1``, where both project after every step."""
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")
    device = torch.device(train_kwargs.get("device", "cpu"))
    model.to(device)
    center = center.to(device)
    steps_per_epoch = math.ceil(y.shape[0] / train_kwargs["batch_size"])

    def after_step(step: int) -> None:
        if projects_after(step, steps_per_epoch, project_every, projection):
            project_to_ball(model, center, eps)

    stats = train(model, x, y, **train_kwargs, after_step=after_step)
    project_to_ball(model, center, eps)
    return stats


def benign_update(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train_kwargs: dict[str, Any],
    layout: ModelLayout | None = None,
) -> torch.Tensor:
    """The flat update ``w - w0`` that honest training on ``(x, y)`` would make from
    ``model``, with the round's settings (seed included); ``model`` is left as it was. A
    malicious client learns from it how large an honest update is. The vector is
    ``layout``'s view of the model (``fedsec_core.layout``), by default its parameters."""
    clone = copy.deepcopy(model)
    if layout is None:
        layout = ModelLayout.of_module(clone, buffers=False)
    w0 = layout.flatten_module(clone)
    # without the attacker's penalty and constraint (attack.evasion)
    honest = {k: v for k, v in train_kwargs.items() if k not in ("penalty", "constraint")}
    train(clone, x, y, **honest)
    trained = layout.flatten_module(clone)
    return trained - w0.to(trained.device)


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
    ``project_every`` steps and after the last step (``projection = "global-steps"``,
    default), or at the batches Wang et al.'s code projects after
    (``projection = "per-epoch"``: batch indices 0, N, 2N, ... of every epoch and its
    last batch; :func:`projects_after`). ``eps_decay = 0.998`` reproduces the
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
    projection: str = param(
        "global-steps", one_of(*PROJECTIONS), "one of 'global-steps', 'per-epoch'"
    )

    def radius(self, server_round: int) -> float:
        """The radius in ``eps_unit`` units."""
        return self.eps * self.eps_decay ** (server_round - 1)

    def local_update(
        self, model: torch.nn.Module, ctx: AttackContext, train_kwargs: dict[str, Any]
    ) -> TrainStats:
        kwargs = {**train_kwargs, "device": ctx.device}
        radius = self.radius(ctx.server_round)
        if self.eps_unit == "benign-norm":  # the honest update trains with the round's settings
            radius *= float(torch.linalg.vector_norm(benign_update(model, *ctx.examples, kwargs)))
        x, y = self.attacker_data(ctx)
        global_flat = flatten_params(model).detach().clone()
        stats = projected_train(
            model,
            x,
            y,
            global_flat.to(ctx.device),
            radius,
            self.project_every,
            self.poison_train_kwargs(ctx, kwargs),  # attacks.backdoor.BackdoorAttack
            self.projection,
        )
        self.transform_update(model, global_flat, ctx, stats)
        return stats


class ModelReplacementMixin:
    """Makes an attack's ``transform_update`` model replacement:
    ``w <- w0 + (N_round / N_attacker) (w - w0)`` with ``N_round = ctx.round_examples``
    and ``N_attacker`` the size of the attacker's (poisoned) training set."""

    def transform_update(self, model, global_flat, ctx: AttackContext, stats: TrainStats) -> None:
        scale_update(model, global_flat, replacement_factor(ctx, stats))


#: The attacker's learning-rate schedule within its local training
#: (``attack.poison_lr_schedule``, :class:`attacks.backdoor.BackdoorAttack`).
LR_SCHEDULES = ("constant", "step", "step-ahead")
#: The step schedule of DBA's and Bagdasaryan et al.'s code: ``MultiStepLR`` with
#: milestones at these fractions of the attacker's epochs, factor ``STEP_GAMMA`` at each.
STEP_MILESTONES = (0.2, 0.8)
STEP_GAMMA = 0.1


def step_lr_factor(epochs: int, ahead: bool = False):
    """The step schedule as a function of the epoch ``e`` (0-based) of ``epochs`` local
    epochs: ``STEP_GAMMA ** (number of milestones m <= e)``, milestones ``0.2 epochs`` and
    ``0.8 epochs`` (``MultiStepLR(milestones=[0.2 E, 0.8 E], gamma=0.1)`` in its closed
    form, ``gamma ** bisect_right(milestones, last_epoch)``).

    ``ahead = False``: the scheduler steps after every epoch, so epoch ``e`` trains at
    ``last_epoch = e`` (DBA's ``image_train.py``); ``ahead = True``: it steps before
    every epoch, so epoch ``e`` trains at ``last_epoch = e + 1`` and every decay comes one
    epoch earlier (Bagdasaryan et al.'s ``training.py``, PyTorch 1.0). PyTorch >= 1.4's
    chainable ``MultiStepLR`` decays only when ``last_epoch`` equals a milestone, so for a
    number of epochs that is not a multiple of 5 (fractional milestones) it never decays;
    the closed form here is what the authors' PyTorch computed, and the two agree
    whenever the milestones are whole epochs (tests)."""
    milestones = tuple(f * epochs for f in STEP_MILESTONES)
    shift = 1 if ahead else 0

    def factor(epoch: int) -> float:
        return STEP_GAMMA ** sum(m <= epoch + shift for m in milestones)

    return factor
