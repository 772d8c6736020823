"""Base class of the backdoor attacks: ``attack.evasion``, the defense-aware step.

Every backdoor attack (the edge-case family, the pattern-trigger family, label flipping)
takes ``attack.evasion``:

- ``"none"`` (default): the attack as its paper runs it;
- ``"scaling"``: the attacker knows the server's rule (``ctx.defense_name``, its
  parameters) and sends ``u_benign + lam (u_backdoor - u_benign)`` with the largest
  ``lam`` in [0, 1] the rule keeps in its view of the round
  (``attacks.evasion.largest_kept_scale``). ``u_benign`` is the update its own clean data
  give (``attacks.procedures.benign_update``). Its view (``attack.knowledge``):

  - ``"partial"`` (default): ``u_benign`` and ``evasion_estimates - 1`` more benign
    updates it estimates itself, each trained on a bootstrap resample of its own clean
    data (-1: as many estimates as the round has other clients); it scales on its client;
  - ``"full"``: the round's honest updates. It sends its benign model beside its update
    and its server stage (``attacks.stages.ScalingStage``) scales it there (the
    simulation's adversary, as for the colluding attacks); a config error on the
    ``deployment`` engine.

  ``rule_state`` sets which rule it runs: ``"fresh"`` (default), a copy built from the
  config, which knows nothing of earlier rounds; ``"server"`` (full knowledge only), a
  copy of the server's own rule as it stands this round: the histories of FoolsGold and
  FLDetector, a seeded rule's random stream (it matters only for a rule that selects
  clients; the others are matched by norm).
- ``"multi-metrics"``: "constrain and scale" on the three features Multi-metrics scores
  (the update's Manhattan and Euclidean norms, its cosine distance to the global model):
  the backdoor trains with a penalty (weight ``evasion_weight``) that pulls them towards
  those of ``u_benign`` and, after every optimizer step, a projection that keeps the
  Euclidean norm and the cosine distance at most ``u_benign``'s; the update sent is
  scaled so that all three are at most ``u_benign``'s and the tightest equals it
  (``attacks.evasion``).

Every backdoor also takes the attacker's own local training, which its authors' code
gives it (DBA, ``AI-secure/DBA`` ``image_train.py``: ``poison_lr`` 0.05 against the
benign 0.1, ``internal_poison_epochs`` 10 on MNIST and 6 on CIFAR-10 against 1 and 2, a
step schedule; Bagdasaryan et al., ``ebagdasa/backdoor_federated_learning``: 0.05, 15
epochs, a step schedule; Neurotoxin, ``jhcknzzm/Federated-Learning-Backdoor``: 0.05,
10 epochs, constant; Wang et al., ``ksreenivasan/OOD_Federated_Learning``: ``adv_lr``
decayed like the round's lr). Every default is the round's setting (the papers' text
does not single the attacker out, and every committed result used it):

- ``poison_lr`` [-1 = the round's lr, ``train.lr * train.lr_decay^(round-1)``]: > 0,
  the attacker's own lr in round 1, times ``poison_lr_decay^(round-1)`` [1.0: the same
  every round, as DBA's, Bagdasaryan et al.'s and Neurotoxin's code; set it to
  ``train.lr_decay`` for the round's decay, as Wang et al.'s code];
- ``poison_local_epochs`` [-1 = ``train.local_epochs``]: its own number of local epochs,
  each in full (the round's ``train.max_steps`` does not cut them short);
- ``poison_lr_schedule`` ["constant"]: the lr through its local epochs; ``"step"``
  multiplies it by 0.1 from the epochs after 20% and 80% of them (DBA's code:
  ``MultiStepLR`` stepped after each epoch), ``"step-ahead"`` one epoch earlier
  (Bagdasaryan et al.'s: stepped before each epoch); :func:`attacks.procedures.step_lr_factor`.

They change only its poisoned training (:meth:`BackdoorAttack.poison_train_kwargs`):
the honest updates it computes for the evasions and for PGD's ``benign-norm`` radius use
the round's settings. The poisoned share of each batch (``poison_scope = "batch"``) is
a parameter of the pattern-trigger attacks (``attacks.triggers``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from attacks.base import Attack, AttackReply
from attacks.collusion import KNOWLEDGE, check_knowledge
from attacks.evasion import (
    EVASIONS,
    RULE_STATES,
    benign_metric_bounds,
    benign_metrics_constraint,
    benign_metrics_scale,
    largest_kept_scale,
    multi_metrics_penalty,
)
from attacks.procedures import LR_SCHEDULES, benign_update, step_lr_factor
from fedsec_core.errors import ConfigError
from fedsec_core.layout import ModelLayout
from fedsec_core.params import in_unit_interval, one_of, param, positive
from fedsec_core.seeding import derive_seed
from fedsec_core.training import train


@dataclass(kw_only=True, eq=False)
class BackdoorAttack(Attack):
    """An attack with a backdoor test set; adds the ``evasion`` step around
    :meth:`local_update`."""

    evasion: str = param("none", one_of(*EVASIONS), "one of 'none', 'scaling', 'multi-metrics'")
    knowledge: str = param("partial", one_of(*KNOWLEDGE), "one of 'partial', 'full'")
    evasion_estimates: int = param(
        -1, lambda v: v == -1 or v >= 2, ">= 2 benign estimates (or -1: the round's size - 1)"
    )
    evasion_weight: float = param(1.0, positive, "> 0 (the multi-metrics penalty's weight)")
    rule_state: str = param("fresh", one_of(*RULE_STATES), "one of 'fresh', 'server'")
    poison_lr: float = param(
        -1.0,
        lambda v: v == -1 or positive(v),
        "> 0 (the attacker's own learning rate) or -1 (the round's)",
    )
    poison_lr_decay: float = param(
        1.0, in_unit_interval, "in (0, 1] (poison_lr x poison_lr_decay^(round-1))"
    )
    poison_local_epochs: int = param(
        -1, lambda v: v == -1 or v >= 1, ">= 1 (the attacker's local epochs) or -1 (the round's)"
    )
    poison_lr_schedule: str = param(
        "constant", one_of(*LR_SCHEDULES), "one of 'constant', 'step', 'step-ahead'"
    )

    _probe: Any = field(default=None, init=False, repr=False)  # see _rule

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        if self.poison_lr == -1 and self.poison_lr_decay != 1.0:
            raise ConfigError(
                "attack.poison_lr_decay decays attack.poison_lr, but poison_lr is -1 (the "
                "round's lr, decayed by train.lr_decay); give attack.poison_lr > 0 or "
                f"leave poison_lr_decay at 1.0 (got {self.poison_lr_decay})"
            )
        if self.knowledge == "full" and self.evasion != "scaling":
            raise ConfigError(
                "attack.knowledge = 'full' only changes attack.evasion = 'scaling' (the "
                f"other evasions use the attacker's own update alone); got evasion "
                f"{self.evasion!r}"
            )
        if self.rule_state == "server" and (self.evasion, self.knowledge) != ("scaling", "full"):
            raise ConfigError(
                "attack.rule_state = 'server' needs attack.evasion = 'scaling' and "
                "attack.knowledge = 'full' (only the server loop's adversary holds the "
                f"server's rule); got evasion {self.evasion!r}, knowledge {self.knowledge!r}"
            )
        check_knowledge(self.knowledge, config)

    def server_stage(self, resources):
        """With ``evasion = "scaling"`` and full knowledge, the scaling stage
        (``attacks.stages.ScalingStage``), which runs the rule of the config's defense
        (``defenses.build_rule``, with the server's model probe) or, with ``rule_state =
        "server"``, the server's own rule, copied at each trial so that the copy holds the
        state the server has that round; else none."""
        if self.evasion != "scaling" or self.knowledge != "full":
            return super().server_stage(resources)
        from attacks.stages import ScalingStage

        if self.rule_state == "server":
            if resources.server_rule is None:
                raise ValueError("attack.rule_state = 'server' needs the server's rule")
            return ScalingStage(self, resources.server_rule)
        from defenses import build_rule

        d = resources.config.defense
        rule = build_rule(
            d.name, d.params, seed=resources.config.seed, model_probe=resources.model_probe
        )
        return ScalingStage(self, rule)

    def update(self, model, ctx, train_kwargs) -> AttackReply:
        if self.evasion == "none":
            return super().update(model, ctx, train_kwargs)
        kwargs = {**train_kwargs, "device": ctx.device}
        # scaling: the vector the server's rule sees, the state view (BatchNorm's running
        # statistics included, as the full-knowledge stage sees them); multi-metrics
        # constrains local training, so the parameters (fedsec_core.layout)
        layout = ModelLayout.of_module(model, buffers=self.evasion == "scaling")
        w0 = layout.flatten_module(model)
        benign = benign_update(model, *ctx.examples, kwargs, layout)
        if self.evasion == "multi-metrics":
            constrained = {
                **train_kwargs,
                "penalty": multi_metrics_penalty(w0, benign, self.evasion_weight),
                "constraint": benign_metrics_constraint(w0, benign),
            }
            stats = self.local_update(model, ctx, constrained)
            # the update transform (e.g. model replacement) may have scaled it past the
            # bounds; scale it so that its tightest feature is the benign one's
            update = layout.flatten_module(model) - w0
            gamma = benign_metrics_scale(update, benign_metric_bounds(benign, w0), w0)
            layout.load_module(model, w0 + gamma * update)
            return AttackReply(stats)
        stats = self.local_update(model, ctx, train_kwargs)
        if self.knowledge == "full":  # scaled by the server loop's adversary stage
            benign_model = _copy_with(model, layout, w0 + benign)
            return AttackReply(stats, benign_state=benign_model.state_dict())
        view = torch.stack([benign, *self._estimates(model, ctx, kwargs, layout)])
        n = torch.full((view.shape[0],), float(ctx.examples[1].shape[0]), dtype=torch.float64)
        candidate = layout.flatten_module(model) - w0
        lam = largest_kept_scale(
            self._rule(ctx, model), view, n, benign, candidate, stats.num_examples, w0
        )
        layout.load_module(model, w0 + benign + lam * (candidate - benign))
        return AttackReply(stats, evasion_scale=float(lam))

    # ------------------------------------------------------------------- training
    def poison_train_kwargs(self, ctx, train_kwargs) -> dict:
        """The keyword arguments of ``fedsec_core.training.train`` for the attacker's poisoned
        training: the round's ``train_kwargs`` with its own lr (``poison_lr`` x
        ``poison_lr_decay^(round-1)``), epochs and lr schedule where set, and the batch
        transform of :meth:`poison_batch` if any; with the defaults, ``train_kwargs``
        unchanged."""
        kwargs = dict(train_kwargs)
        if self.poison_lr != -1:
            kwargs["lr"] = self.poison_lr * self.poison_lr_decay ** (ctx.server_round - 1)
        if self.poison_local_epochs != -1:
            kwargs["epochs"] = self.poison_local_epochs
            kwargs["max_steps"] = 0
        if self.poison_lr_schedule != "constant":
            ahead = self.poison_lr_schedule == "step-ahead"
            kwargs["lr_factor"] = step_lr_factor(kwargs["epochs"], ahead=ahead)
        transform = self.poison_batch(ctx, kwargs["batch_size"])
        if transform is not None:
            kwargs["batch_transform"] = transform
        return kwargs

    def poison_batch(self, ctx, batch_size: int):
        """A function ``(xb, yb) -> (xb, yb)`` that poisons part of every minibatch of
        ``batch_size`` examples, or None
        (the attacker's data are poisoned once, in ``attacker_data``); the pattern-trigger
        attacks return one with ``poison_scope = "batch"``."""
        return None

    def train(self, model, x, y, global_flat, ctx, train_kwargs):
        """Plain local SGD with :meth:`poison_train_kwargs`."""
        return train(model, x, y, **self.poison_train_kwargs(ctx, train_kwargs))

    def _estimates(self, model, ctx, kwargs, layout) -> list[torch.Tensor]:
        """Benign updates beyond ``u_benign``: honest training on bootstrap resamples of
        the attacker's own clean data, each with its own seed, as vectors of ``layout``."""
        count = self.evasion_estimates if self.evasion_estimates != -1 else ctx.round_clients - 1
        x, y = ctx.examples
        out = []
        for i in range(max(count, 2) - 1):
            generator = torch.Generator().manual_seed(derive_seed(ctx.seed, "benign-estimate", i))
            index = torch.randint(len(y), (len(y),), generator=generator)
            seeded = {**kwargs, "seed": derive_seed(ctx.seed, "benign-estimate-train", i)}
            out.append(benign_update(model, x[index], y[index], seeded, layout))
        return out

    def _rule(self, ctx, model):
        """The server's rule, as the config makes it public (``defenses.build_rule``, no
        Flower); a rule that inspects models (DeepSight) looks at the attacker's copy of
        the architecture, built once per process (it loads every model it probes, so the
        copy's own weights never matter)."""
        from defenses import build_rule
        from defenses.rules import RULES, ModelProbe

        if self._probe is None and RULES.resolve(ctx.defense_name).needs_model_probe:
            self._probe = ModelProbe(copy.deepcopy(model), ctx.input_shape)
        params = dict(ctx.defense_params)
        return build_rule(ctx.defense_name, params, seed=ctx.seed, model_probe=self._probe)


def _copy_with(model: torch.nn.Module, layout: ModelLayout, flat: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` that holds ``flat`` in ``layout``'s view."""
    clone = copy.deepcopy(model)
    layout.load_module(clone, flat)
    return clone
