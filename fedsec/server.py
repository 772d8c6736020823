"""The server's round loop, shared by every engine.

Each round: choose clients by partition id with the seeded sampler, let the strategy
build its messages (``configure_train``) over a view of the grid that holds only those
clients (the round's attackers' messages carry the facts they are told), send them, hand
the replies, in partition order, to the strategy's ``aggregate_round``, evaluate the new
global model centrally and log the round with the verdicts it returned.

The strategy is a :class:`defenses.DefenseStrategy` around the configured rule (built
by ``defenses.build_rule``). It sees only the replies; which clients were malicious is
known to the loop alone. The loop knows no attack and no rule by name: it asks them
(``fedsec_core.hooks``) for the stage the attack needs in the loop, the resources the rule
needs (a root update, a model probe) and the rule's step after the last round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from defenses import DefenseStrategy, build_rule
from fedsec.adversary import Adversary, round_adversary
from fedsec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedsec.config import ExperimentConfig
from fedsec.engines.batching import batching_grid
from fedsec.pretrain import initial_state
from fedsec.results import MODEL_FILE, MemoryWriter, RunWriter, state_digest
from fedsec.task import FederatedTask, get_task, resolve_device
from fedsec_core import protocol
from fedsec_core.errors import ConfigError, RunError
from fedsec_core.hooks import FinalModel
from fedsec_core.protocol import (
    ABSENT,
    EVASION_SCALE,
    METRICS,
    NODE,
    NUM_PARTITIONS,
    PARTITION_ID,
    TRAIN_LOSS,
    AttackerFacts,
    RoundRecord,
)
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import evaluate, train

IDENTIFY = f"{MessageType.QUERY}.{protocol.IDENTIFY}"


class RoundGrid(Grid):
    """A grid that shows a strategy only this round's sampled nodes.

    Flower strategies sample with ``random.sample`` over ``grid.get_node_ids()``; given
    exactly the nodes fedsec's seeded sampler chose (and ``fraction_train = 1``), they
    select all of them, so the strategy's own ``configure_train`` still builds the
    messages (and can keep whatever state it needs, such as the global model).
    """

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def set_run(self, run):  # pragma: no cover - the real grid owns the run
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated in Flower
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)


@dataclass
class RoundOutcome:
    arrays: ArrayRecord
    record: RoundRecord


def discover_partitions(
    grid: Grid, num_clients: int, timeout: float, progress: Callable[[str], None] = print
) -> dict[int, int]:
    """Map partition id -> node id by asking every connected node who it is.

    Node ids are random (simulation) or assigned by the SuperLink (deployment); the
    partition id is what a node's ``node_config`` says, so only the node can tell.
    SuperNodes of a deployment connect one by one: wait for ``num_clients`` of them.
    """
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 10
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RunError(
                f"only {len(node_ids)} of {num_clients} clients connected within "
                f"engine.connect_timeout = {timeout:.0f}s; waited for partition ids "
                f"0..{num_clients - 1} (data.num_clients)"
            )
        if time.monotonic() > next_note:
            progress(f"waiting for clients: {len(node_ids)} of {num_clients} connected")
            next_note += 10
        time.sleep(0.5)
    queries = [
        Message(content=RecordDict(), dst_node_id=node_id, message_type=IDENTIFY)
        for node_id in node_ids
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            continue
        info = reply.content[NODE]
        if int(info[NUM_PARTITIONS]) != num_clients:
            raise ConfigError(
                f"the federation has {int(info[NUM_PARTITIONS])} partitions but "
                f"data.num_clients = {num_clients}; run Flower with "
                f'--federation-config "num-supernodes={num_clients}" or set data.num_clients'
            )
        mapping[int(info[PARTITION_ID])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(mapping))
    if missing:
        raise RunError(
            f"no node answered the identify query within engine.connect_timeout = "
            f"{timeout:.0f}s for partition ids {missing[:10]}"
        )
    return mapping


@dataclass
class FederationResult:
    """What a federation run returns: its summary (as summary.json holds it) and the
    final global model's state dict."""

    summary: dict[str, Any]
    state: dict[str, torch.Tensor]


def run_federation(
    grid: Grid,
    config: ExperimentConfig,
    out_dir: str | Path | None,
    progress: Callable[[str], None] = print,
    resume: bool = False,
) -> FederationResult:
    """Run every round of ``config`` over ``grid``; write the run directory.

    With ``resume``, continue from the checkpoint in ``out_dir``: rounds logged after it
    are dropped and run again, so the finished ``metrics.jsonl`` is the one an
    uninterrupted run writes. With ``out_dir = None`` nothing is written (no run
    directory, no checkpoint): the same rounds, kept in memory, for callers that need
    only the result (``fedsec.engines.train_inprocess``).
    """
    if out_dir is None and resume:
        raise ValueError("resume needs the run directory to resume from")
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    probe = model_probe(task)
    rule = build_rule(
        config.defense.name, config.defense.params, seed=config.seed, model_probe=probe
    )
    strategy = DefenseStrategy(
        rule,
        device=str(resolve_device(config.engine.device)),
        root_update_fn=RootTrainer(task, rule.root_set_size()) if rule.needs_root_update else None,
    )
    checkpoint = load_checkpoint(out_dir) if resume else None
    initial_model = ""
    if checkpoint is None:
        first_round = 1
        initial = initial_state(task, log=progress)
        # recorded in the run directory's provenance; a federation kept in memory has none
        initial_model = state_digest(initial) if out_dir is not None else ""
        arrays = ArrayRecord(initial)
    else:
        first_round = checkpoint.round + 1
        arrays = ArrayRecord(checkpoint.model)
        strategy.load_state_dict(checkpoint.strategy)
        progress(f"fedsec: resuming after round {checkpoint.round}")
    writer = (
        MemoryWriter(config)
        if out_dir is None
        else RunWriter(out_dir, config, keep_rounds=first_round - 1, initial_model=initial_model)
    )
    schedule = task.schedule
    node_of = discover_partitions(grid, task.num_clients, config.engine.connect_timeout, progress)
    partition_of = {node: pid for pid, node in node_of.items()}
    # a round's honest clients as one message when they train batched (engine.batch_clients)
    grid = batching_grid(grid, config, partition_of)
    adversary = round_adversary(task.attack, config, probe, task.dataset, strategy.rule)
    if adversary is not None and checkpoint is not None:
        adversary.load_state_dict(checkpoint.adversary)  # e.g. a3fl's current trigger
    evaluator = CentralEvaluator(task, adversary)
    every = config.engine.checkpoint_every if out_dir is not None else 0

    t_start = time.time() - writer.elapsed_before
    for server_round in range(first_round, config.train.rounds + 1):
        sampled, malicious = schedule.sample(server_round)
        facts = task.attacker_facts(sampled, malicious)
        outcome = run_round(
            grid,
            strategy,
            arrays,
            server_round,
            sampled,
            node_of,
            partition_of,
            config,
            _stage_facts(adversary, facts) if adversary is not None else facts,
            adversary,
        )
        if schedule.enabled:
            outcome.record.malicious_clients = malicious
            outcome.record = replace(outcome.record, **detection_counts(outcome.record, malicious))
        arrays = outcome.arrays
        record = replace(outcome.record, **evaluator(arrays))
        if server_round == config.train.rounds:  # the rule's step on the final model
            record.final.update(rule.after_training(final_model(task, arrays, progress)))
        record.time_s = round(time.time() - t_start, 3)
        writer.log_round(record)
        if every and (server_round % every == 0 or server_round == config.train.rounds):
            save_checkpoint(
                out_dir,
                Checkpoint(
                    round=server_round,
                    model=arrays.to_torch_state_dict(),
                    strategy=strategy.state_dict(),
                    adversary=adversary.state_dict() if adversary is not None else {},
                    config=config.to_dict(),  # --resume refuses an edited config.toml
                ),
            )
        progress(_progress_line(record, config.train.rounds))

    state = arrays.to_torch_state_dict()
    if out_dir is not None:
        torch.save(state, Path(out_dir) / MODEL_FILE)
    return FederationResult(writer.finish({}, rule=rule), state)


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


class CentralEvaluator:
    """Server-side evaluation of a global model.

    Main accuracy (MA) on the task's test split and, when the attack has a backdoor test
    set, backdoor accuracy (BA): the share of those inputs classified as the target. An
    ``adversary`` stage that holds the attackers' trigger (``a3fl``) gives the backdoor
    test set stamped with its current trigger.
    """

    def __init__(self, task: FederatedTask, adversary: Adversary | None = None) -> None:
        self.model = task.new_model()
        self.device = resolve_device(task.config.engine.device)
        self.x, self.y = task.test_data()
        self.backdoor = task.attack.backdoor_test_set(task.dataset) if task.attack else None
        self.adversary = adversary

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        stats = evaluate(self.model, self.x, self.y, device=self.device)
        out = {"main_accuracy": stats.accuracy, "test_loss": stats.loss}
        backdoor = self.backdoor
        if self.adversary is not None:
            backdoor = self.adversary.backdoor_test_set(backdoor)
        if backdoor is not None:
            x, target = backdoor
            out["backdoor_accuracy"] = evaluate(self.model, x, target, device=self.device).accuracy
        return out


def model_probe(task: FederatedTask):
    """The server's :class:`defenses.rules.ModelProbe` of the task's model, when the
    configured rule declares ``needs_model_probe`` (it inspects models); else None. Built
    once: the server's rule and an attack's stage that runs the rule share it."""
    from defenses.rules import RULES, ModelProbe

    if not RULES.resolve(task.config.defense.name).needs_model_probe:
        return None
    return ModelProbe(task.new_model(), tuple(task.dataset.input_shape))


def final_model(
    task: FederatedTask, arrays: ArrayRecord, progress: Callable[[str], None] = print
) -> FinalModel:
    """What a rule's step after the last round is given (:class:`fedsec_core.hooks.FinalModel`):
    the final global model ``arrays`` and the run's facts, from ``task``."""
    config, schedule, attack = task.config, task.schedule, task.attack

    def examples(partition_id: int, attacker: bool) -> int:
        size = len(task.partitions[partition_id])
        return attack.num_examples(size) if attacker and attack is not None else size

    return FinalModel(
        state=arrays.to_torch_state_dict(),
        new_model=task.new_model,
        test_data=task.test_data(),
        device=resolve_device(config.engine.device),
        seed=config.seed,
        train=config.train,
        attack_rounds=tuple(schedule.attack_rounds()),
        sample=schedule.sample,
        examples=examples,
        progress=progress,
    )


class RootTrainer:
    """The server's update on its clean root set (FLTrust's g_0), for a rule that
    declares ``needs_root_update``.

    The root set is ``size`` examples (the rule's ``root_set_size()``) drawn, seeded,
    from the training split (Cao et al. sample it from the training data); the server
    trains the global model on it as a client would, with a stream of its own.
    """

    def __init__(self, task: FederatedTask, size: int) -> None:
        self.task = task
        x, y = task.train_data()
        size = min(size, len(y))
        idx = torch.from_numpy(
            rng(task.config.seed, "root-set").choice(len(y), size, replace=False)
        )
        self.x, self.y = x[idx], y[idx]

    def __call__(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        model = self.task.new_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        kwargs = self.task.train_kwargs(server_round, 0)  # its seed is replaced below
        kwargs["seed"] = derive_seed(self.task.config.seed, "root-train", server_round)
        train(model, self.x, self.y, **kwargs)
        return ArrayRecord(model.state_dict())


def detection_counts(record: RoundRecord, malicious: list[int]) -> dict[str, int]:
    """Confusion counts of the defense's verdict against the attack's ground truth.

    A rejected malicious client is a true positive, a rejected honest one a false
    positive. Rounds whose strategy gives no verdict count nothing.
    """
    if record.rejected_clients is None:
        return {}
    rejected, accepted, bad = (
        set(record.rejected_clients),
        set(record.accepted_clients),
        set(malicious),
    )
    return {
        "true_positives": len(rejected & bad),
        "false_positives": len(rejected - bad),
        "false_negatives": len(accepted & bad),
        "true_negatives": len(accepted - bad),
    }


def _sample_exactly_the_given_nodes(strategy, round_size: int) -> None:
    """Make a Flower strategy take every node of a ``RoundGrid`` of ``round_size`` nodes
    and evaluate none.

    fedsec evaluates centrally on the server, so federated evaluation is switched off.
    """
    strategy.fraction_train = 1.0
    strategy.min_train_nodes = round_size
    strategy.min_available_nodes = round_size
    strategy.fraction_evaluate = 0.0
    strategy.min_evaluate_nodes = 0


def _metric(metrics, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    return float(metrics[key])


def _progress_line(record: RoundRecord, rounds: int) -> str:
    parts = [
        f"round {record.round:>{len(str(rounds))}}/{rounds}",
        f"main_accuracy {record.main_accuracy:.4f}",
    ]
    if record.backdoor_accuracy is not None:
        parts.append(f"backdoor_accuracy {record.backdoor_accuracy:.4f}")
    if record.train_loss is not None and record.train_loss is not ABSENT:
        parts.append(f"train_loss {record.train_loss:.4f}")
    if record.accepted_clients is not None:
        judged = len(record.accepted_clients) + len(record.rejected_clients)
        parts.append(f"accepted {len(record.accepted_clients)}/{judged}")
    if record.malicious_clients:
        bad = record.malicious_clients
        accepted = record.accepted_clients
        kept = [c for c in bad if c in (bad if accepted is None else accepted)]
        parts.append(f"attackers {bad} ({len(kept)} accepted)")
    if record.invalid_clients:
        parts.append(f"invalid {sorted(record.invalid_clients)}")
    if record.failed_clients:
        parts.append(f"failed {record.failed_clients}")
    if record.kept_previous_model:
        parts.append(f"kept previous model ({record.kept_previous_reason or 'no usable reply'})")
    parts.append(f"{record.time_s:.1f}s")
    return "  ".join(parts)
