"""Federations retrained without some clients, in parallel and cached: the oracles of
``om`` and of the KLoM protocol, and what one retraining costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedsec.config import ExperimentConfig
from fedsec.unlearning.artifact import config_hash
from fedsec.unlearning.federation import Federation
from fedsec.unlearning.subsets import (
    default_workers,
    federation_variant,
    run_parallel,
    train_federation,
)
from fedsec_core.seeding import derive_seed
from fedsec_core.training import predict_logits


@dataclass
class FederationJob:
    """Picklable ``(seed, exclude) -> final state dict`` of ``config``'s federation."""

    config: ExperimentConfig

    def __call__(self, seed: int, exclude: tuple[int, ...]) -> dict[str, torch.Tensor]:
        return train_federation(federation_variant(self.config, seed, exclude))


def train_federations(
    config: ExperimentConfig,
    jobs: list[tuple[int, tuple[int, ...]]],
    *,
    workers: int | None = None,
    desc: str = "federations",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[list[dict], list[float]]:
    """Final states (and each training's own seconds) of ``config`` for (seed, exclude) jobs.

    With ``cache_dir``, states are kept in ``cache_dir/<config hash>/`` and trained once:
    a cached state's time is the one recorded when it was trained.
    """
    threads = config.engine.client_num_cpus
    files = [None] * len(jobs)
    if cache_dir is not None:
        folder = Path(cache_dir) / config_hash(config)[:16]
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"seed{s}-without{'_'.join(map(str, ex)) or '-'}.pt" for s, ex in jobs]
    todo = [i for i, f in enumerate(files) if f is None or not f.is_file()]
    states, times = run_parallel(
        FederationJob(config),
        [jobs[i] for i in todo],
        workers=workers or default_workers(threads),
        threads=threads,
        desc=desc,
        progress=progress,
    )
    out_states, out_times = [None] * len(jobs), [0.0] * len(jobs)
    for i, state, seconds in zip(todo, states, times, strict=True):
        out_states[i], out_times[i] = state, seconds
        if files[i] is not None:
            torch.save({"state": state, "seconds": seconds}, files[i])
    for i, f in enumerate(files):
        if out_states[i] is None:
            saved = torch.load(f, weights_only=True)
            out_states[i], out_times[i] = saved["state"], saved["seconds"]
    return out_states, out_times


def training_examples(config: ExperimentConfig) -> int:
    """Example-gradients one training of ``config`` computes: each round's sampled
    clients' examples (an attacker's poisoned set at its size) times the local epochs,
    summed over the rounds. The cost of a retraining that does not depend on the machine;
    a central pre-training is not counted (the unlearning settings have none)."""
    from fedsec.task import get_task

    task = get_task(config)
    schedule = task.schedule
    total = 0
    for server_round in range(1, config.train.rounds + 1):
        sampled, malicious = schedule.sample(server_round)
        sizes = [len(task.partitions[c]) for c in sampled]
        total += sum(
            task.attack.num_examples(n) if c in malicious else n
            for c, n in zip(sampled, sizes, strict=True)
        )
    return total * config.train.local_epochs


def oracle_mean_logits(
    fed: Federation, forget, n: int, *, workers=None, progress=True, cache_dir=None
) -> torch.Tensor:
    """Mean logits on ``fed.inputs`` of ``n`` federations retrained without ``forget``."""
    seeds = [derive_seed(fed.config.seed, "om-oracle", j) for j in range(n)]
    states, _ = train_federations(
        fed.config,
        [(s, tuple(forget)) for s in seeds],
        workers=workers,
        desc="OM oracles",
        progress=progress,
        cache_dir=cache_dir,
    )
    return torch.stack([predict_logits(fed.model_from(s), fed.inputs) for s in states]).mean(0)
