"""Base class of the attacks whose update is crafted from the round's benign updates
(``alie``, ``ipm``, ``min-max``, ``min-sum``; the math is in ``attacks.crafted``).

Such an attacker cannot act alone on its client: its update is a function of benign
updates that other processes compute. The round's attackers therefore collude in a
round-level stage, ``attacks.stages.CraftingStage``, that runs in the server process
after local training and before the defense. It is the simulation's adversary, not
something a Flower client does; it gives the same result on every engine because it
sees the replies in partition order.

On its client a colluding attacker trains honestly on its own data (the default hooks):
its reply is its benign update, which is all it knows with ``knowledge = "partial"``.
The stage then replaces every attacker's reply in the round with one crafted update,
computed from the attackers' view of the round:

- ``knowledge = "partial"`` (default): the attackers' own benign updates only (they
  know what they compute themselves on their own clean data);
- ``knowledge = "full"``: every valid reply of the round, the attackers' own benign
  updates included (the omniscient colluding attacker of Baruch et al., Xie et al. and
  Shejwalkar & Houmansadr). A real deployment gives no one that view, so ``full`` is a
  config error on the ``deployment`` engine.
- ``knowledge = "honest"``: the honest clients' replies only, the attackers' own benign
  updates left out: the full knowledge of Shejwalkar & Houmansadr's code (its attackers
  compute no benign gradient; the view is the ``n - m`` benign ones). A config error on
  the ``deployment`` engine, as ``full``.

``space`` says what the formula is applied to. ``"update"`` (default): the clients'
model updates, ``w_client - w_global``. ``"gradient"``: their gradients, as the NDSS'21
paper states its formulas and the ALIE and NDSS'21 authors' codes compute them; a client's
update is read as minus a gradient (one step of SGD at lr 1: exact for FedSGD, the
sign for any SGD), so the stage crafts ``-craft(-updates)``. The two agree for every
formula but a shift along the per-coordinate standard deviation, which has no sign of
its own: ALIE's ``mean - z std`` of gradients is ``mean + z std`` of updates, and
Min-Max / Min-Sum's ``mean - gamma std`` (``direction = "std"``) likewise; ``unit``,
``sign`` and IPM are the same in both spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from attacks.untargeted import UntargetedAttack
from fedsec_core.errors import ConfigError
from fedsec_core.params import one_of, param

#: Who the defense-aware backdoors see (``attack.knowledge``).
KNOWLEDGE = ("partial", "full")
#: Who the colluding attackers see: also ``honest``, the view of the NDSS'21 code.
COLLUSION_KNOWLEDGE = (*KNOWLEDGE, "honest")
#: What the crafting formula is applied to (``attack.space``).
SPACES = ("update", "gradient")


def check_knowledge(knowledge: str, config) -> None:
    """Knowing other clients' updates is a simulation's: a config error on the
    deployment engine."""
    if knowledge != "partial" and config.engine.name == "deployment":
        raise ConfigError(
            f"attack.knowledge = {knowledge!r} needs other clients' updates, which no one "
            "holds in a real deployment; use 'partial' or the inprocess / flower engine"
        )


@dataclass(kw_only=True, eq=False)
class CollusionAttack(UntargetedAttack):
    """An untargeted attack crafted from the round's benign updates; subclasses set
    ``min_view`` and implement :meth:`craft`."""

    #: Fewest benign updates :meth:`craft` needs (a standard deviation needs two).
    min_view: ClassVar[int] = 1

    knowledge: str = param(
        "partial", one_of(*COLLUSION_KNOWLEDGE), "one of 'partial', 'full', 'honest'"
    )
    space: str = param("update", one_of(*SPACES), "one of 'update', 'gradient'")

    def crafted_update(
        self, benign: torch.Tensor, num_clients: int, num_attackers: int
    ) -> torch.Tensor:
        """:meth:`craft` in ``space``: on the updates, or on the gradients they stand for
        (``-craft(-benign)``, an update back)."""
        if self.space == "gradient":
            return -self.craft(-benign, num_clients, num_attackers)
        return self.craft(benign, num_clients, num_attackers)

    def craft(self, benign: torch.Tensor, num_clients: int, num_attackers: int) -> torch.Tensor:
        """The malicious update every attacker of the round sends, from ``benign``, the
        ``(k, d)`` benign updates of the attackers' view, in a round of ``num_clients``
        clients of which ``num_attackers`` attack."""
        raise NotImplementedError

    def server_stage(self, resources):
        """The crafting stage: the round's attackers act together in the server loop."""
        from attacks.stages import CraftingStage

        return CraftingStage(self)

    def check_round(self, num_clients: int, num_attackers: int) -> str:
        """What makes a round of this shape impossible to attack (empty: nothing)."""
        return ""

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        check_knowledge(self.knowledge, config)
        from fedsec_core.sampling import AttackSchedule

        schedule = AttackSchedule.for_config(config)
        for server_round in range(1, config.train.rounds + 1):
            clients, malicious = schedule.sample(server_round)
            if not malicious:
                continue
            view = {
                "partial": len(malicious),
                "full": len(clients),
                "honest": len(clients) - len(malicious),
            }[self.knowledge]
            if view < self.min_view:
                raise ConfigError(
                    f"attack {self.name!r} with attack.knowledge = {self.knowledge!r} needs "
                    f"at least {self.min_view} benign updates in its view, but round "
                    f"{server_round} has {view}; raise attack.attackers_per_round or use "
                    "attack.knowledge = 'full'"
                )
            problem = self.check_round(len(clients), len(malicious))
            if problem:
                raise ConfigError(f"attack {self.name!r} in round {server_round}: {problem}")
