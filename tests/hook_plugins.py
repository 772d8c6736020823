"""Plug-ins added from tests/ alone, through the hooks (``fedsec_core.hooks``): an attack with
a server-side stage that keeps state between rounds, and a rule with a post-training
step. ``tests/test_hooks.py`` runs them end to end on both engines.

- ``test-constant-stage`` (:class:`ConstantStageAttack`): an untargeted attack whose
  clients train honestly and send back, beside their update, the fact the stage told
  them (``ctx.facts``, ``AttackReply.records``). Its stage (:class:`ConstantStage`) tells
  every attacker how many rounds it has acted in, checks their echoes, takes the echo
  records out, and replaces EVERY valid reply's floating-point arrays with the constant
  ``value``: whatever the weights, FedAvg's aggregate is then that constant model.
- ``test-final-step`` (:class:`FinalStepRule`): FedAvg whose post-training step reports
  the final model's mean, its size and the run facts it was given.

How a process knows them: importing this module registers them (:func:`register`). The
in-process engine runs in the test's process; the Flower engine runs the ServerApp and
every ClientApp in processes of their own, so the test names :data:`serverapp` and
:data:`clientapp` of this module with ``fedsec.engines.flower.run_flower(...,
serverapp=..., clientapp=...)``: every process that loads them imports this module (see
the comment above them for why the ClientApp's handlers must live here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.clientapp import ClientApp

from attacks import ATTACKS
from attacks.untargeted import UntargetedAttack
from defenses import DEFENSES
from defenses.adapter import DefenseStrategy
from defenses.rules import RULES, FedAvgRule
from fedsec_core.hooks import ServerStage, StageOutcome
from fedsec_core.params import param, positive

ATTACK = "test-constant-stage"
DEFENSE = "test-final-step"
#: The fact the stage tells its attackers, and the record they echo it in.
FACT = "test-stage-rounds"
ECHO = "test-stage-echo"


@dataclass(kw_only=True, eq=False)
class ConstantStageAttack(UntargetedAttack):
    """Trains honestly and echoes the stage's fact; the stage sets the round's model."""

    name = ATTACK

    value: float = param(0.25, positive, "> 0 (the constant of every float array)")

    def update(self, model, ctx, train_kwargs):
        reply = super().update(model, ctx, train_kwargs)
        told = float(ctx.facts[FACT])
        reply.records[ECHO] = {"told": torch.tensor([told], dtype=torch.float64)}
        return reply

    def server_stage(self, resources):
        return ConstantStage(self.value)


class ConstantStage(ServerStage):
    """Tells each attacker ``FACT`` = the rounds it acted in so far (its state, which
    the checkpoint holds), then sets every valid reply's float arrays to ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.rounds = 0

    def facts(self, facts):
        return {pid: {**told, FACT: self.rounds} for pid, told in facts.items()}

    def __call__(self, global_arrays, replies, partition_of, num_clients, malicious):
        echoes = {}
        for reply in replies:
            pid = partition_of[reply.metadata.src_node_id]
            if ECHO in reply.content:
                echoes[str(pid)] = float(reply.content[ECHO]["told"].numpy()[0])
                del reply.content[ECHO]  # the defense sees plain replies
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord(
                {
                    key: Array(
                        np.full_like(a.numpy(), self.value)
                        if np.issubdtype(a.numpy().dtype, np.floating)
                        else a.numpy()
                    )
                    for key, a in arrays.items()
                }
            )
        self.rounds += 1
        crafted = sorted(partition_of[r.metadata.src_node_id] for r in replies)
        return StageOutcome(
            crafted=[pid for pid in crafted if pid in malicious],
            log={"test_stage_rounds": self.rounds, "test_stage_echoes": echoes},
        )

    def state_dict(self):
        return {"rounds": self.rounds}

    def load_state_dict(self, state):
        self.rounds = int(state.get("rounds", 0))


@dataclass(kw_only=True)
class FinalStepRule(FedAvgRule):
    """FedAvg; after the last round, the final model's mean and the facts it was given."""

    name = DEFENSE

    def after_training(self, final):
        flat = final.flat()
        return {
            "test_final_step": {
                "mean": float(flat.double().mean()),
                "size": flat.numel(),
                "rounds": final.train.rounds,
                "attack_rounds": list(final.attack_rounds),
            }
        }


class FinalStep(DefenseStrategy):
    """The user-facing Flower strategy of :class:`FinalStepRule` (no parameters)."""

    rule_class = FinalStepRule

    def __init__(self, **strategy_kwargs) -> None:
        super().__init__(FinalStepRule(), **strategy_kwargs)


def register() -> None:
    """Add the plug-ins to the registries (once; again after a test restored them)."""
    if ATTACK not in ATTACKS:
        ATTACKS.register(ATTACK, ConstantStageAttack)
    if DEFENSE not in RULES:
        RULES.register(DEFENSE, FinalStepRule)
    if DEFENSE not in DEFENSES:
        DEFENSES.register(DEFENSE, f"{__name__}:FinalStep")


register()

# The apps the Flower engine is told to run. The ServerApp's process imports
# ``serverapp`` by module, and with it this module. Ray hands each worker the ClientApp
# object pickled, which refers to its handler functions by module: fedsec's own handlers
# would import fedsec's client app only, so ``clientapp`` has handlers of this module,
# which call fedsec's (``fedsec.apps.client_app``), and a worker that unpickles it
# imports this module first.
from fedsec.apps import client_app  # noqa: E402
from fedsec.apps.server_app import app as serverapp  # noqa: E402

clientapp = ClientApp()


@clientapp.query("identify")
def identify(msg, context):
    return client_app.identify(msg, context)


@clientapp.train()
def train(msg, context):
    return client_app.local_train(msg, context)


@clientapp.train("batch")
def train_together(msg, context):  # engine.batch_clients on Flower's engine
    return client_app.train_together(msg, context)


__all__ = ["clientapp", "register", "serverapp"]
