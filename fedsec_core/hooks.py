"""The hooks between the server loop and the plug-ins: what a plug-in declares, what the
server asks.

The server loop (``fedsec.server``) knows no attack and no rule by name. It asks:

- the attack, :meth:`attacks.base.Attack.server_stage`: the :class:`ServerStage` it needs
  in the server loop (None: it needs none). A stage acts for the round's attackers
  after their replies arrive and before the defense sees them (the colluding attacks'
  crafting, the full-knowledge scaling evasion, A3FL's trigger); it may tell the
  attackers more facts, change the inputs backdoor accuracy is measured on and keep
  state between rounds, which goes into the checkpoint. Stages compose as PyTorch
  modules do: an attack's stage may hold its parent class's stage and call it first
  (A3FL's trigger stage runs the scaling stage of the backdoor it subclasses);
- the rule (``defenses.rules.AggregationRule``): the resources it needs from the
  platform (``needs_root_update`` with ``root_set_size()``: the server's own update on
  a clean root set each round; ``needs_model_probe``: a ``defenses.rules.ModelProbe``
  of the task's model), and its post-training step, ``after_training(final)``, which
  the server runs on the final model (:class:`FinalModel`) and whose keys it adds to the
  last round's record (CRFL's certification).

This module is a core helper: it imports neither Flower nor any plug-in, so that the
server, the attacks and the defenses all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsec_core.layout import ModelLayout


@dataclass
class StageOutcome:
    """What a :class:`ServerStage` did in a round (the server logs it with the round)."""

    crafted: list[int] = field(default_factory=list)  # attackers whose reply it replaced
    view: int = 0  # benign updates it crafted from
    scales: dict[int, float] = field(default_factory=dict)  # evasion scaling: lam per attacker
    note: str = ""  # why it crafted nothing, when it did not
    log: dict[str, Any] = field(default_factory=dict)  # more entries for the round's record


class ServerStage:
    """A stage of the server loop that acts for the round's attackers (the
    simulation's adversary, not part of the defense, which cannot tell it apart from the
    clients).

    ``__call__(global_arrays, replies, partition_of, num_clients, malicious)`` runs in
    every round that has attackers, after the replies arrive and before the defense sees
    them: ``global_arrays`` is the round's global model (a Flower ``ArrayRecord``),
    ``replies`` the replies with content (Flower ``Message`` objects, sorted by
    partition id, so that a stage computes the same on every engine), ``partition_of``
    node id -> partition id, the round had ``num_clients`` clients, ``malicious`` among
    them. It may change the replies in place (and must take out every record its
    attack's clients sent for it alone) and returns what it did. The other hooks are
    for a stage that keeps state between rounds; by default it has none.
    """

    def __call__(
        self,
        global_arrays: Any,
        replies: list[Any],
        partition_of: dict[int, int],
        num_clients: int,
        malicious: set[int],
    ) -> StageOutcome:
        raise NotImplementedError

    def facts(self, facts: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """The facts each attacker of the round is told (partition id -> ConfigRecord
        entries; the attack reads them as ``ctx.facts``), with what the stage adds."""
        return facts

    def backdoor_test_set(self, default):
        """The inputs backdoor accuracy is measured on now (``default``: the attack's own)."""
        return default

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for a resumed run to continue identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty dict: the state at round 0)."""


@dataclass(frozen=True)
class StageResources:
    """What the server offers an attack that builds its :class:`ServerStage`.

    ``config``: the experiment (``fedsec.config.ExperimentConfig``); ``dataset``: the
    task's data set (``fedsec_core.data.Dataset``); ``server_rule``: the server's own rule,
    live (a stage that copies it sees the state the server has that round);
    ``model_probe``: the server's ``defenses.rules.ModelProbe`` of the task's model when
    the configured rule inspects models, else None (a stage that builds the configured
    rule with ``defenses.build_rule`` hands it on, so the probe is built once).
    """

    config: Any = None
    dataset: Any = None
    server_rule: Any = None
    model_probe: Any = None


@dataclass(frozen=True)
class FinalModel:
    """What a rule's post-training step (``AggregationRule.after_training``) is given,
    built by the server loop after the last round: the final global model and the facts
    of the run a step may need.

    - ``state``: the final global model's state dict; ``new_model()``: a fresh model of
      the run's architecture (load ``state`` into it); ``test_data``: the test split
      ``(x, y)``; ``device``: where the run computes;
    - ``seed``: the experiment's seed (derive the step's own streams from it with
      ``fedsec_core.seeding.derive_seed``); ``train``: the ``[train]`` settings (``rounds``,
      ``lr``, ``lr_decay``, ``momentum``, ``local_epochs``, ``batch_size``, ...);
    - ``attack_rounds``: the rounds in which the schedule has an attacker;
      ``sample(round)``: that round's ``(clients, attackers)`` by partition id;
      ``examples(partition_id, attacker)``: the examples that client trains on (an
      attacker's poisoned set counted at its size, as the server tells N_round);
    - ``progress``: where the step prints its progress line.
    """

    state: dict[str, torch.Tensor]
    new_model: Callable[[], torch.nn.Module]
    test_data: tuple[torch.Tensor, torch.Tensor]
    device: torch.device
    seed: int
    train: Any
    attack_rounds: tuple[int, ...]
    sample: Callable[[int], tuple[list[int], list[int]]]
    examples: Callable[[int, bool], int]
    progress: Callable[[str], None] = print

    def flat(self) -> torch.Tensor:
        """The final model as the rules see it: the state view of ``fedsec_core.layout`` (its
        floating-point entries, in state-dict order)."""
        return ModelLayout.of_state(self.state).flatten(self.state)
