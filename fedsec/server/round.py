"""One round: the sampled clients' messages out (the attackers' with the facts they are
told), the replies in (failures and ``train.min_replies``), the attack's server stage,
the defense's aggregation and the round's record."""

from __future__ import annotations

from dataclasses import dataclass, replace

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from defenses import DefenseStrategy
from fedsec.adversary import Adversary
from fedsec.config import ExperimentConfig
from fedsec.server.nodes import RoundGrid, _sample_exactly_the_given_nodes
from fedsec_core.protocol import EVASION_SCALE, METRICS, TRAIN_LOSS, AttackerFacts, RoundRecord


@dataclass
class RoundOutcome:
    arrays: ArrayRecord
    record: RoundRecord


def run_round(
    grid: Grid,
    strategy: DefenseStrategy,
    arrays: ArrayRecord,
    server_round: int,
    sampled: list[int],
    node_of: dict[int, int],
    partition_of: dict[int, int],
    config: ExperimentConfig,
    attacker_facts: dict[int, AttackerFacts] | None = None,
    adversary: Adversary | None = None,
) -> RoundOutcome:
    """One round of training and aggregation over the clients ``sampled``.

    ``attacker_facts`` (``FederatedTask.attacker_facts``) go into the train messages of the
    round's attackers, whose ClientApps build their AttackContext from them: the server
    is the simulation's adversary controller, so clients never recompute its sampling.
    The ``adversary``, the stage the attack declares (``fedsec_core.hooks``; a colluding
    attack's), rewrites the attackers' replies after they arrive and before the defense
    sees them (a3fl's takes out the triggers they send back)."""
    round_grid = RoundGrid(grid, [node_of[p] for p in sampled])
    # Told this round's size, the strategy samples exactly these nodes; told more, it
    # would wait for nodes that never come (Flower's sample_nodes has no timeout).
    _sample_exactly_the_given_nodes(strategy, len(sampled))
    messages = strategy.configure_train(server_round, arrays, ConfigRecord(), round_grid)
    messages = [
        _with_facts(m, (attacker_facts or {}).get(partition_of.get(m.metadata.dst_node_id)))
        for m in messages
    ]
    replies = list(grid.send_and_receive(messages, timeout=config.engine.round_timeout))
    # A reply from a node outside this round (or an error the SuperLink wrote for a node
    # that vanished) cannot be attributed: only the round's own clients' replies count.
    replies = [m for m in replies if partition_of.get(m.metadata.src_node_id) in sampled]
    # Completion order differs between engines; aggregation must not depend on it.
    replies.sort(key=lambda m: partition_of[m.metadata.src_node_id])
    answered = {partition_of[m.metadata.src_node_id] for m in replies if not m.has_error()}
    failed = sorted(set(sampled) - answered)
    record = RoundRecord(round=server_round, clients=sampled, failed_clients=failed)
    # An error reply has no content, so the strategy could only name it by node id: it is
    # recorded here by partition id, and only replies with content go on.
    errors = {
        partition_of[m.metadata.src_node_id]: m.error.reason for m in replies if m.has_error()
    }
    if errors:
        record.failed_reasons = dict(sorted(errors.items()))
        replies = [m for m in replies if not m.has_error()]
    if len(answered) < config.train.min_replies:
        # Too few clients answered: aggregating them would let a handful steer the model.
        record = replace(
            record,
            train_loss=None,
            skipped=True,
            kept_previous_model=True,
            kept_previous_reason=f"{len(answered)} valid replies, fewer than "
            f"train.min_replies = {config.train.min_replies}",
        )
        return RoundOutcome(arrays, record)
    reported = _reported_scales(replies, partition_of, set(attacker_facts or {}))
    if reported:  # attackers that scaled their own update (evasion, partial knowledge)
        record.evasion_scales = dict(sorted(reported.items()))
    if adversary is not None and attacker_facts:
        collusion = adversary(arrays, replies, partition_of, len(sampled), set(attacker_facts))
        record.crafted_clients = collusion.crafted
        if collusion.scales:
            record.evasion_scales = dict(sorted(collusion.scales.items()))
        if collusion.note:
            record.collusion_note = collusion.note
        record.stage_log.update(collusion.log)
    report = strategy.aggregate_round(server_round, replies)
    record.train_loss = _metric(report.metrics, TRAIN_LOSS)
    record.accepted_clients = sorted(report.accepted)
    record.rejected_clients = sorted(report.rejected)
    if report.scores:  # the rule's per-client score (see its docstring), for AUROC
        record.scores = dict(sorted(report.scores.items()))
    if report.weight_ratios:  # how heavy each client was against FedAvg (amplification)
        record.weight_ratios = dict(sorted(report.weight_ratios.items()))
    if report.invalid:
        record.invalid_clients = dict(sorted(report.invalid.items()))
    if report.arrays is None:
        record.kept_previous_model = True
        if report.note:
            record.kept_previous_reason = report.note
        return RoundOutcome(arrays, record)
    return RoundOutcome(report.arrays, record)


def _reported_scales(
    replies: list[Message], partition_of: dict[int, int], attackers: set[int]
) -> dict[int, float]:
    """The evasion scale each of the round's ``attackers`` reported in its train metrics
    (:data:`fedsec_core.protocol.EVASION_SCALE`), by partition id. The key is removed from every
    reply, so the defense and the round's train metrics never see it."""
    out = {}
    for reply in replies:
        if reply.has_error() or METRICS not in reply.content:
            continue
        metrics = reply.content[METRICS]
        if EVASION_SCALE not in metrics:
            continue
        value = metrics[EVASION_SCALE]
        del metrics[EVASION_SCALE]
        pid = partition_of[reply.metadata.src_node_id]
        if pid in attackers and isinstance(value, (int, float)):
            out[pid] = float(value)
    return out


def _stage_facts(adversary: Adversary, facts: dict[int, AttackerFacts]) -> dict[int, AttackerFacts]:
    """``facts`` with what the attack's server stage adds (``ServerStage.facts`` works on
    the ConfigRecord entries)."""
    told = adversary.facts({pid: f.to_config() for pid, f in facts.items()})
    return {pid: AttackerFacts.from_config(entries) for pid, entries in told.items()}


def _with_facts(message: Message, facts: AttackerFacts | None) -> Message:
    """``message`` with ``facts`` added to its ConfigRecord (a copy: the strategy's messages
    share one RecordDict), or ``message`` itself without facts."""
    if not facts:
        return message
    content = RecordDict({key: record for key, record in message.content.items()})
    for key, record in message.content.items():
        if isinstance(record, ConfigRecord):
            content[key] = ConfigRecord({**record, **facts.to_config()})
    return Message(
        content=content,
        message_type=message.metadata.message_type,
        dst_node_id=message.metadata.dst_node_id,
    )


def _metric(metrics, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    return float(metrics[key])
