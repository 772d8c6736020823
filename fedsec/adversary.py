"""The simulation's adversary: a round's colluding attackers acting together.

Attacks crafted from the round's benign updates (``attacks.collusion``) need what no
single client holds. :class:`CraftingAdversary` is that coordination, run by the server
loop (``fedsec.server.run_round``) after the replies arrive and before the defense sees
them: it builds the attackers' view of the round (their own replies with
``attack.knowledge = "partial"``, every valid reply with ``"full"``), asks the attack for
one malicious update and puts it into every attacker's reply. It lives in the server
process because that is where all replies meet in a simulation; it is the adversary of
the experiment, not part of the server's defense, and the defense cannot tell it apart
from the clients.

A backdoor with ``attack.evasion = "scaling"`` and full knowledge gets the second kind
of stage, :class:`ScalingAdversary`: it scales each attacker's update until the rule,
run on the round's honest updates, keeps it.

An attack whose trigger the attackers carry from round to round (``a3fl``) gets the
third, :class:`TriggerAdversary`: the attackers' memory between rounds, which Flower's
stateless client apps cannot keep. It holds the current trigger, adds it to the facts
the round's attackers are told, takes the optimised triggers out of their replies
before the defense sees them (keeping the lowest partition id's), gives the server the
backdoor test set stamped with it, and goes into the checkpoint.

The replies come in partition order, so the stage computes the same update on every
engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, Message

from attacks.a3fl import A3FL
from attacks.collusion import CollusionAttack
from attacks.evasion import largest_kept_scale
from defenses.adapter import RecordLayout
from fedsec.task import BENIGN_STATE, TRIGGER


@dataclass
class Collusion:
    """What the stage did in a round (logged with the round)."""

    crafted: list[int] = field(default_factory=list)  # attackers whose reply it replaced
    view: int = 0  # benign updates it crafted from
    scales: dict[int, float] = field(default_factory=dict)  # evasion scaling: lam per attacker
    note: str = ""  # why it crafted nothing, when it did not
    log: dict[str, Any] = field(default_factory=dict)  # more entries for the round's record


class AdversaryStage:
    """A stage of the server loop (``fedsec.server``) that acts for the round's attackers.

    ``__call__(global_arrays, replies, partition_of, num_clients, malicious)`` runs after
    the replies arrive and before the defense sees them (``replies`` sorted by partition
    id, ``partition_of`` node id -> partition id, a round of ``num_clients`` clients,
    ``malicious`` among them) and returns what it did. The other hooks are for a stage
    that keeps state between rounds; by default it has none.
    """

    def __call__(
        self,
        global_arrays: ArrayRecord,
        replies: list[Message],
        partition_of: dict[int, int],
        num_clients: int,
        malicious: set[int],
    ) -> Collusion:
        raise NotImplementedError

    def facts(self, facts: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """The facts each attacker of the round is told (``FederatedTask.attacker_facts``,
        partition id -> ConfigRecord entries), with what the stage adds."""
        return facts

    def backdoor_test_set(self, default):
        """The inputs backdoor accuracy is measured on now (``default``: the attack's own)."""
        return default

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for a resumed run to continue identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty dict: the state at round 0)."""


class CraftingAdversary(AdversaryStage):
    """Replaces the round's attackers' replies with the update ``attack`` crafts."""

    def __init__(self, attack: CollusionAttack) -> None:
        self.attack = attack

    def __call__(
        self,
        global_arrays: ArrayRecord,
        replies: list[Message],
        partition_of: dict[int, int],
        num_clients: int,
        malicious: set[int],
    ) -> Collusion:
        """Craft and write the attackers' update into their ``replies`` (in place).

        ``replies`` are the round's, sorted by partition id; ``partition_of`` maps node id
        to partition id; the round had ``num_clients`` clients, ``malicious`` among them.
        A reply with an error or arrays that do not fit the global model is in no one's
        view (the defense refuses it anyway).
        """
        layout = RecordLayout(global_arrays)
        w0 = layout.flatten(global_arrays, torch.device("cpu"))
        full = self.attack.knowledge == "full"
        rows, attackers = [], []
        for reply, pid, update in _valid_updates(layout, w0, replies, partition_of):
            if pid in malicious or full:
                rows.append(update)
            if pid in malicious:
                attackers.append(reply)
        outcome = Collusion(view=len(rows))
        if not attackers:
            outcome.note = "no attacker replied with a valid update"
            return outcome
        if len(rows) < self.attack.min_view:
            outcome.note = (
                f"{len(rows)} benign updates in view, {self.attack.min_view} needed: "
                "the attackers sent their honest updates"
            )
            return outcome
        update = self.attack.craft(torch.stack(rows), num_clients, len(malicious))
        crafted = w0 + update.to(w0.dtype)
        for reply in attackers:
            # its floating-point arrays become the crafted update; the rest stay its own
            reply.content["arrays"] = layout.unflatten(crafted, reply.content["arrays"])
            outcome.crafted.append(partition_of[reply.metadata.src_node_id])
        return outcome


class ScalingAdversary(AdversaryStage):
    """``attack.evasion = "scaling"`` with ``attack.knowledge = "full"``: each attacker's
    update is scaled back towards its benign model (``attacks.backdoor``) until the
    server's rule, run on the round's honest updates plus that update, keeps it.
    ``rule`` is copied for each trial: one built from the config, or the server's own
    (``attack.rule_state = "server"``), whose copies hold its state of the round; the
    trials name the clients by partition id, as the server does."""

    def __init__(self, attack, rule) -> None:
        self.attack = attack
        self.rule = rule

    def __call__(
        self,
        global_arrays: ArrayRecord,
        replies: list[Message],
        partition_of: dict[int, int],
        num_clients: int,
        malicious: set[int],
    ) -> Collusion:
        """Scale every attacker's reply in place and remove the benign models they sent
        beside it (:data:`fedsec.task.BENIGN_STATE`), so that the defense sees plain replies."""
        layout = RecordLayout(global_arrays)
        w0 = layout.flatten(global_arrays, torch.device("cpu"))
        honest, weights, honest_ids, attackers = [], [], [], []
        for reply, pid, update in _valid_updates(layout, w0, replies, partition_of):
            if pid in malicious:
                attackers.append((reply, pid, update))
            else:
                honest.append(update)
                weights.append(_num_examples(reply))
                honest_ids.append(pid)
        outcome = Collusion(view=len(honest))
        view = torch.stack(honest) if honest else w0.new_zeros((0, w0.numel()))
        view_weights = torch.tensor(weights, dtype=torch.float64)
        for reply, pid, candidate in attackers:
            benign = torch.empty(layout.size, dtype=layout.dtype)
            record = reply.content.array_records.get(BENIGN_STATE)
            if record is None or layout.mismatch(record) or layout.load(record, benign):
                outcome.note = f"client {pid} sent no usable benign model; left as it is"
                continue
            benign -= w0
            lam = largest_kept_scale(
                self.rule,
                view,
                view_weights,
                benign,
                candidate,
                _num_examples(reply),
                w0,
                client_ids=[*honest_ids, pid],
            )
            scaled = w0 + benign + lam * (candidate - benign)
            reply.content["arrays"] = layout.unflatten(scaled, reply.content["arrays"])
            outcome.crafted.append(pid)
            outcome.scales[pid] = lam
        for reply in replies:
            if not reply.has_error() and BENIGN_STATE in reply.content:
                del reply.content[BENIGN_STATE]
        return outcome


def _valid_updates(layout: RecordLayout, w0: torch.Tensor, replies, partition_of):
    """(reply, partition id, flat update) of every reply that holds a valid model."""
    for reply in replies:
        if reply.has_error():
            continue
        row = torch.empty(layout.size, dtype=layout.dtype)
        record = reply.content.array_records.get("arrays")
        if record is None or layout.mismatch(record) or layout.load(record, row):
            continue
        yield reply, partition_of[reply.metadata.src_node_id], row - w0


def _num_examples(reply: Message) -> float:
    metrics = reply.content.metric_records.get("metrics")
    return float(metrics["num-examples"]) if metrics and "num-examples" in metrics else 1.0


class TriggerAdversary(AdversaryStage):
    """The attackers' shared trigger (``attacks.a3fl``), held between rounds.

    - :meth:`facts`: every attacker of the round is told the current trigger
      (:data:`fedsec.task.TRIGGER`, a flat list of the (C, H, W) float32 values: exact);
    - ``__call__``: the optimised triggers the attackers send back are taken out of
      every reply (the defense never sees them); the one of the attacker with the lowest
      partition id whose record is usable becomes the current trigger (logged as
      ``trigger_from``); when none is usable the trigger stays (a ``collusion_note``
      says so). ``inner``, a :class:`ScalingAdversary` when the attack also scales with
      full knowledge, runs first;
    - :meth:`backdoor_test_set`: the attack's test images stamped with the current
      trigger (the server measures BA with it);
    - :meth:`state_dict`: the current trigger, for the checkpoint.

    A round skipped for too few replies does not reach the stage: the trigger stays.
    """

    def __init__(self, attack: A3FL, dataset, inner: AdversaryStage | None = None) -> None:
        self.attack = attack
        self.dataset = dataset
        self.input_shape = tuple(dataset.input_shape)
        self.inner = inner
        self.trigger = attack.initial_trigger(self.input_shape)
        self._test_set: tuple[torch.Tensor, Any] | None = None  # (trigger, test set)

    def facts(self, facts):
        flat = self.trigger.reshape(-1).tolist()
        return {pid: {**told, TRIGGER: flat} for pid, told in facts.items()}

    def __call__(self, global_arrays, replies, partition_of, num_clients, malicious) -> Collusion:
        outcome = (
            self.inner(global_arrays, replies, partition_of, num_clients, malicious)
            if self.inner is not None
            else Collusion()
        )
        kept = None
        for reply in replies:  # in partition order: the first usable attacker's is kept
            if reply.has_error() or TRIGGER not in reply.content:
                continue
            record = reply.content[TRIGGER]
            del reply.content[TRIGGER]
            pid = partition_of[reply.metadata.src_node_id]
            if kept is not None or pid not in malicious:
                continue
            try:
                trigger = torch.tensor(record["trigger"].numpy())  # type: ignore[index]
                self.trigger = self.attack.valid_trigger(trigger, self.input_shape)
                kept = pid
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        if kept is not None:
            outcome.log["trigger_from"] = kept
        else:
            note = "no attacker sent a usable trigger; the previous one stays"
            outcome.note = f"{outcome.note}; {note}" if outcome.note else note
        return outcome

    def backdoor_test_set(self, default):
        if self._test_set is None or self._test_set[0] is not self.trigger:
            self._test_set = (
                self.trigger,
                self.attack.backdoor_test_set(self.dataset, self.trigger),
            )
        return self._test_set[1]

    def state_dict(self):
        return {"trigger": self.trigger.clone()}

    def load_state_dict(self, state):
        if "trigger" in state:
            self.trigger = self.attack.valid_trigger(state["trigger"], self.input_shape)


#: A stage of the server loop: (global model, replies, node -> partition, round size,
#: attackers) -> what it did.
Adversary = AdversaryStage


def round_adversary(
    attack, config=None, model_probe=None, dataset=None, server_rule=None
) -> Adversary | None:
    """The adversary stage ``attack`` needs in the server loop, else None: the crafting
    stage of a colluding attack, the scaling stage of a full-knowledge scaling backdoor
    (which runs the rule of ``config``'s defense, with ``model_probe`` if it inspects
    models; with ``attack.rule_state = "server"`` the live ``server_rule`` itself, copied
    at each trial, so that the copy holds the state the server has that round), the
    trigger stage of ``a3fl`` (on ``dataset``, the task's), around the scaling stage if
    it has one."""
    if isinstance(attack, CollusionAttack):
        return CraftingAdversary(attack)
    stage = None
    if getattr(attack, "evasion", "none") == "scaling" and attack.knowledge == "full":
        from defenses import build_defense

        if attack.rule_state == "server":
            if server_rule is None:
                raise ValueError("attack.rule_state = 'server' needs the server's rule")
            rule = server_rule
        else:
            rule = build_defense(
                config.defense.name,
                config.defense.params,
                seed=config.seed,
                model_probe=model_probe,
            ).rule
        stage = ScalingAdversary(attack, rule)
    if isinstance(attack, A3FL):
        return TriggerAdversary(attack, dataset, inner=stage)
    return stage
