"""The federation: every round of an experiment over a grid, with its run directory,
checkpoints and resume."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from defenses import DefenseStrategy, build_rule
from fedsec.adversary import round_adversary
from fedsec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedsec.config import ExperimentConfig
from fedsec.engines.batching import batching_grid
from fedsec.pretrain import initial_state
from fedsec.results import MODEL_FILE, MemoryWriter, RunWriter, state_digest
from fedsec.server.evaluation import CentralEvaluator
from fedsec.server.nodes import discover_partitions
from fedsec.server.optimizer import server_optimizer
from fedsec.server.progress import _progress_line, detection_counts
from fedsec.server.resources import RootTrainer, final_model, model_probe
from fedsec.server.round import _stage_facts, run_round
from fedsec.task import get_task, resolve_device


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
    t = config.train
    optimizer = server_optimizer(t.server_optimizer, lr=t.server_lr, momentum=t.server_momentum)
    if not optimizer.is_identity:  # the parameters it moves (buffers take the aggregate)
        optimizer.keys = tuple(name for name, _ in task.new_model().named_parameters())
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
        optimizer.load_state_dict(checkpoint.server)
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
        if not outcome.record.kept_previous_model:  # the server's step (identity by default)
            outcome.arrays = optimizer.step(arrays, outcome.arrays)
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
                    server=optimizer.state_dict(),
                ),
            )
        progress(_progress_line(record, config.train.rounds))

    state = arrays.to_torch_state_dict()
    if out_dir is not None:
        torch.save(state, Path(out_dir) / MODEL_FILE)
    return FederationResult(writer.finish({}, rule=rule), state)
