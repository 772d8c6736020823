"""The server-side stages the attacks declare (``Attack.server_stage``), run by the
server loop (``fedsec.server.run_round``) after the replies arrive and before the
defense sees them (the protocol: :class:`fedsec_core.hooks.ServerStage`).

- :class:`CraftingStage`, of the colluding attacks (``attacks.collusion``): it builds
  the attackers' view of the round (their own replies with ``attack.knowledge =
  "partial"``, every valid reply with ``"full"``, the honest ones' with ``"honest"``),
  asks the attack for one malicious update and puts it into every attacker's reply, and
  logs where that update lies against the round's honest updates (``crafted_z``,
  ``crafted_norm_ratio``, ``crafted_shift``, ``crafted_cos``: :func:`attacks.crafted.position`;
  the experimenter's measure, whatever the attackers' view);
- :class:`ScalingStage`, of a backdoor with ``attack.evasion = "scaling"`` and full
  knowledge (``attacks.backdoor``): it scales each attacker's update until the rule, run
  on the round's honest updates, keeps it;
- :class:`TriggerStage`, of ``a3fl``: the attackers' memory between rounds, which
  Flower's stateless client apps cannot keep. It holds the current trigger, adds it to
  the facts the round's attackers are told, takes the optimised triggers out of their
  replies before the defense sees them (keeping the lowest partition id's), gives the
  server the backdoor test set stamped with it, and goes into the checkpoint. It wraps
  the stage of the backdoor it is (the scaling stage, when it scales with full
  knowledge).

They live in the server process because that is where all replies meet in a
simulation; they are the adversary of the experiment, not part of the server's defense,
and the defense cannot tell them apart from the clients. The replies come in partition
order, so a stage computes the same update on every engine. This module needs Flower
(the replies are Flower messages): the attacks import it when they build their stage,
so that validating a config loads no Flower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Message

from attacks.crafted import position
from attacks.evasion import largest_kept_scale
from defenses.adapter import RecordLayout
from fedsec_core.hooks import ServerStage, StageOutcome
from fedsec_core.protocol import (
    ARRAYS,
    BENIGN_STATE,
    METRICS,
    NUM_EXAMPLES,
    TRIGGER,
    TRIGGER_ARRAY,
)

if TYPE_CHECKING:  # pragma: no cover
    from attacks.a3fl import A3FL
    from attacks.collusion import CollusionAttack


class CraftingStage(ServerStage):
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
    ) -> StageOutcome:
        """Craft and write the attackers' update into their ``replies`` (in place).

        ``replies`` are the round's, sorted by partition id; ``partition_of`` maps node id
        to partition id; the round had ``num_clients`` clients, ``malicious`` among them.
        A reply with an error or arrays that do not fit the global model is in no one's
        view (the defense refuses it anyway).
        """
        layout = RecordLayout(global_arrays)
        w0 = layout.flatten(global_arrays, torch.device("cpu"))
        knowledge = self.attack.knowledge
        rows, attackers, honest = [], [], []
        for reply, pid, update in _valid_updates(layout, w0, replies, partition_of):
            seen = {"partial": pid in malicious, "full": True, "honest": pid not in malicious}
            if seen[knowledge]:
                rows.append(update)
            if pid in malicious:
                attackers.append(reply)
            else:
                honest.append(update)
        outcome = StageOutcome(view=len(rows))
        if not attackers:
            outcome.note = "no attacker replied with a valid update"
            return outcome
        if len(rows) < self.attack.min_view:
            outcome.note = (
                f"{len(rows)} benign updates in view, {self.attack.min_view} needed: "
                "the attackers sent their honest updates"
            )
            return outcome
        update = self.attack.crafted_update(torch.stack(rows), num_clients, len(malicious))
        if len(honest) >= 2:  # the measured reason a rule kept or dropped it (the round's)
            outcome.log.update(position(torch.stack(honest), update).as_log())
        crafted = w0 + update.to(w0.dtype)
        for reply in attackers:
            # its floating-point arrays become the crafted update; the rest stay its own
            reply.content[ARRAYS] = layout.unflatten(crafted, reply.content[ARRAYS])
            outcome.crafted.append(partition_of[reply.metadata.src_node_id])
        return outcome


class ScalingStage(ServerStage):
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
    ) -> StageOutcome:
        """Scale every attacker's reply in place and remove the benign models they sent
        beside it (:data:`fedsec_core.protocol.BENIGN_STATE`), so that the defense sees plain
        replies."""
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
        outcome = StageOutcome(view=len(honest))
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
            reply.content[ARRAYS] = layout.unflatten(scaled, reply.content[ARRAYS])
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
        record = reply.content.array_records.get(ARRAYS)
        if record is None or layout.mismatch(record) or layout.load(record, row):
            continue
        yield reply, partition_of[reply.metadata.src_node_id], row - w0


def _num_examples(reply: Message) -> float:
    metrics = reply.content.metric_records.get(METRICS)
    return float(metrics[NUM_EXAMPLES]) if metrics and NUM_EXAMPLES in metrics else 1.0


class TriggerStage(ServerStage):
    """The attackers' shared trigger (``attacks.a3fl``), held between rounds.

    - :meth:`facts`: every attacker of the round is told the current trigger
      (:data:`fedsec_core.protocol.TRIGGER`, a flat list of the (C, H, W) float32 values: exact);
    - ``__call__``: the optimised triggers the attackers send back are taken out of
      every reply (the defense never sees them); the one of the attacker with the lowest
      partition id whose record is usable becomes the current trigger (logged as
      ``trigger_from``); when none is usable the trigger stays (a ``collusion_note``
      says so). ``inner``, a :class:`ScalingStage` when the attack also scales with
      full knowledge, runs first;
    - :meth:`backdoor_test_set`: the attack's test images stamped with the current
      trigger (the server measures BA with it);
    - :meth:`state_dict`: the current trigger, for the checkpoint.

    A round skipped for too few replies does not reach the stage: the trigger stays.
    """

    def __init__(self, attack: A3FL, dataset, inner: ServerStage | None = None) -> None:
        self.attack = attack
        self.dataset = dataset
        self.input_shape = tuple(dataset.input_shape)
        self.inner = inner
        self.trigger = attack.initial_trigger(self.input_shape)
        self._test_set: tuple[torch.Tensor, Any] | None = None  # (trigger, test set)

    def facts(self, facts):
        flat = self.trigger.reshape(-1).tolist()
        return {pid: {**told, TRIGGER: flat} for pid, told in facts.items()}

    def __call__(
        self, global_arrays, replies, partition_of, num_clients, malicious
    ) -> StageOutcome:
        outcome = (
            self.inner(global_arrays, replies, partition_of, num_clients, malicious)
            if self.inner is not None
            else StageOutcome()
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
                trigger = torch.tensor(record[TRIGGER_ARRAY].numpy())  # type: ignore[index]
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
