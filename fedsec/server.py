"""The server's round loop, shared by every engine.

Each round: choose clients by partition id with the seeded sampler, let the strategy
build its messages (``configure_train``) over a view of the grid that holds only those
clients (the round's attackers' messages carry the facts they are told), send them, hand
the replies, in partition order, to the strategy's ``aggregate_round``, evaluate the new
global model centrally and log the round with the verdicts it returned.

The strategy is a :class:`defenses.DefenseStrategy` (any of fedsec's defenses, built
with every setting by ``defenses.build_defense``). It sees only the replies; which
clients were malicious is known to the loop alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from defenses import DefenseStrategy, build_defense
from fedsec.adversary import Adversary, round_adversary
from fedsec.certify import final_certification
from fedsec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedsec.config import ExperimentConfig
from fedsec.pretrain import initial_state
from fedsec.results import MODEL_FILE, MemoryWriter, RunWriter, state_digest
from fedsec.task import EVASION_SCALE, FederatedTask, get_task, resolve_device
from fedsec_core.errors import ConfigError, RunError
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import evaluate, train

IDENTIFY = f"{MessageType.QUERY}.identify"


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
    record: dict[str, Any]


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
        info = reply.content["node"]
        if int(info["num-partitions"]) != num_clients:
            raise ConfigError(
                f"the federation has {int(info['num-partitions'])} partitions but "
                f"data.num_clients = {num_clients}; run Flower with "
                f'--federation-config "num-supernodes={num_clients}" or set data.num_clients'
            )
        mapping[int(info["partition-id"])] = reply.metadata.src_node_id
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
    strategy = build_defense(
        config.defense.name,
        config.defense.params,
        seed=config.seed,
        device=str(resolve_device(config.engine.device)),
        root_update_fn=RootTrainer(task),
        model_probe=probe,
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
            adversary.facts(facts) if adversary is not None else facts,
            adversary,
        )
        if schedule.enabled:
            outcome.record["malicious_clients"] = malicious
            outcome.record.update(detection_counts(outcome.record, malicious))
        arrays = outcome.arrays
        record = {"round": server_round, **evaluator(arrays), **outcome.record}
        if server_round == config.train.rounds:  # crfl certifies the final model
            record.update(final_certification(task, strategy.rule, arrays, progress))
        record["time_s"] = round(time.time() - t_start, 3)
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
    return FederationResult(writer.finish({}, rule=strategy.rule), state)


def run_round(
    grid: Grid,
    strategy: DefenseStrategy,
    arrays: ArrayRecord,
    server_round: int,
    sampled: list[int],
    node_of: dict[int, int],
    partition_of: dict[int, int],
    config: ExperimentConfig,
    attacker_facts: dict[int, dict[str, Any]] | None = None,
    adversary: Adversary | None = None,
) -> RoundOutcome:
    """One round of training and aggregation over the clients ``sampled``.

    ``attacker_facts`` (``FederatedTask.attacker_facts``) go into the train messages of the
    round's attackers, whose ClientApps build their AttackContext from them: the server
    is the simulation's adversary controller, so clients never recompute its sampling.
    A colluding attack's ``adversary`` (``fedsec.adversary``) rewrites the attackers'
    replies after they arrive and before the defense sees them (a3fl's takes out the
    triggers they send back)."""
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
    record: dict[str, Any] = {"clients": sampled, "failed_clients": failed}
    # An error reply has no content, so the strategy could only name it by node id: it is
    # recorded here by partition id, and only replies with content go on.
    errors = {
        partition_of[m.metadata.src_node_id]: m.error.reason for m in replies if m.has_error()
    }
    if errors:
        record["failed_reasons"] = {str(k): v for k, v in sorted(errors.items())}
        replies = [m for m in replies if not m.has_error()]
    if len(answered) < config.train.min_replies:
        # Too few clients answered: aggregating them would let a handful steer the model.
        record.update(
            train_loss=None,
            skipped=True,
            kept_previous_model=True,
            kept_previous_reason=f"{len(answered)} valid replies, fewer than "
            f"train.min_replies = {config.train.min_replies}",
        )
        return RoundOutcome(arrays, record)
    reported = _reported_scales(replies, partition_of, set(attacker_facts or {}))
    if reported:  # attackers that scaled their own update (evasion, partial knowledge)
        record["evasion_scales"] = {str(k): v for k, v in sorted(reported.items())}
    if adversary is not None and attacker_facts:
        collusion = adversary(arrays, replies, partition_of, len(sampled), set(attacker_facts))
        record["crafted_clients"] = collusion.crafted
        if collusion.scales:
            record["evasion_scales"] = {str(k): v for k, v in sorted(collusion.scales.items())}
        if collusion.note:
            record["collusion_note"] = collusion.note
        record.update(collusion.log)
    report = strategy.aggregate_round(server_round, replies)
    record["train_loss"] = _metric(report.metrics, "train_loss")
    record["accepted_clients"] = sorted(report.accepted)
    record["rejected_clients"] = sorted(report.rejected)
    if report.scores:  # the rule's per-client score (see its docstring), for AUROC
        record["scores"] = {str(k): v for k, v in sorted(report.scores.items())}
    if report.invalid:
        record["invalid_clients"] = {str(k): v for k, v in sorted(report.invalid.items())}
    if report.arrays is None:
        record["kept_previous_model"] = True
        if report.note:
            record["kept_previous_reason"] = report.note
        return RoundOutcome(arrays, record)
    return RoundOutcome(report.arrays, record)


def _reported_scales(
    replies: list[Message], partition_of: dict[int, int], attackers: set[int]
) -> dict[int, float]:
    """The evasion scale each of the round's ``attackers`` reported in its train metrics
    (:data:`fedsec.task.EVASION_SCALE`), by partition id. The key is removed from every
    reply, so the defense and the round's train metrics never see it."""
    out = {}
    for reply in replies:
        if reply.has_error() or "metrics" not in reply.content:
            continue
        metrics = reply.content["metrics"]
        if EVASION_SCALE not in metrics:
            continue
        value = metrics[EVASION_SCALE]
        del metrics[EVASION_SCALE]
        pid = partition_of[reply.metadata.src_node_id]
        if pid in attackers and isinstance(value, (int, float)):
            out[pid] = float(value)
    return out


def _with_facts(message: Message, facts: dict[str, Any] | None) -> Message:
    """``message`` with ``facts`` added to its ConfigRecord (a copy: the strategy's messages
    share one RecordDict), or ``message`` itself without facts."""
    if not facts:
        return message
    content = RecordDict({key: record for key, record in message.content.items()})
    for key, record in message.content.items():
        if isinstance(record, ConfigRecord):
            content[key] = ConfigRecord({**record, **facts})
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
    """The server's :class:`defenses.rules.deepsight.ModelProbe` of the task's model, when
    the configured defense inspects models (DeepSight); else None."""
    from defenses import DEFENSES

    if not DEFENSES.resolve(task.config.defense.name).needs_model_probe:
        return None
    from defenses.rules.deepsight import ModelProbe

    return ModelProbe(task.new_model(), tuple(task.dataset.input_shape))


class RootTrainer:
    """The server's update on its clean root set (FLTrust's g_0).

    The root set is ``defense.root_size`` examples drawn, seeded, from the training
    split (Cao et al. sample it from the training data); the server trains the global
    model on it as a client would, with a stream of its own.
    """

    def __init__(self, task: FederatedTask) -> None:
        self.task = task
        x, y = task.train_data()
        size = min(task.config.defense.root_size, len(y))
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


def detection_counts(record: dict[str, Any], malicious: list[int]) -> dict[str, int]:
    """Confusion counts of the defense's verdict against the attack's ground truth.

    A rejected malicious client is a true positive, a rejected honest one a false
    positive. Rounds whose strategy gives no verdict count nothing.
    """
    if "rejected_clients" not in record:
        return {}
    rejected, accepted, bad = (
        set(record["rejected_clients"]),
        set(record["accepted_clients"]),
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


def _progress_line(record: dict[str, Any], rounds: int) -> str:
    parts = [
        f"round {record['round']:>{len(str(rounds))}}/{rounds}",
        f"main_accuracy {record['main_accuracy']:.4f}",
    ]
    if record.get("backdoor_accuracy") is not None:
        parts.append(f"backdoor_accuracy {record['backdoor_accuracy']:.4f}")
    if record.get("train_loss") is not None:
        parts.append(f"train_loss {record['train_loss']:.4f}")
    if "accepted_clients" in record:
        judged = len(record["accepted_clients"]) + len(record["rejected_clients"])
        parts.append(f"accepted {len(record['accepted_clients'])}/{judged}")
    if record.get("malicious_clients"):
        bad = record["malicious_clients"]
        kept = [c for c in bad if c in record.get("accepted_clients", bad)]
        parts.append(f"attackers {bad} ({len(kept)} accepted)")
    if record.get("invalid_clients"):
        parts.append(f"invalid {sorted(int(k) for k in record['invalid_clients'])}")
    if record["failed_clients"]:
        parts.append(f"failed {record['failed_clients']}")
    if record.get("kept_previous_model"):
        parts.append(
            f"kept previous model ({record.get('kept_previous_reason', 'no usable reply')})"
        )
    parts.append(f"{record['time_s']:.1f}s")
    return "  ".join(parts)
