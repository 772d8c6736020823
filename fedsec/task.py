"""What both Flower apps need from a config: the data, its partition, the model.

A ``FederatedTask`` is built once per process and cached (a Ray worker hosting many
virtual clients, or the in-process engine, loads and partitions the data once), then
shared by the ServerApp and every ClientApp call in that process. What a task derives
from the data at some cost (an edge-case attack's tail density) is cached on disk as
well (:mod:`attacks.edge_sources`), so other processes reuse it.

Long preparation steps are announced on the ``fedsec.progress`` logger (INFO), which
the ``fedsec`` command prints and library use leaves silent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from attacks import Attack, AttackContext, build_attack
from fedsec.config import ExperimentConfig
from fedsec.models import build_model
from fedsec.partition import partition_indices
from fedsec_core.data import Dataset, load_dataset
from fedsec_core.protocol import AttackerFacts, TrainingSpec
from fedsec_core.sampling import AttackSchedule
from fedsec_core.seeding import derive_seed

#: Progress of slow preparation steps (loading data, the tail density); ``fedsec.cli``
#: prints its INFO records.
PROGRESS = logging.getLogger("fedsec.progress")


@dataclass(frozen=True)
class FederatedTask:
    """A data set split among clients, the model they train, and who attacks when."""

    config: ExperimentConfig
    dataset: Dataset
    partitions: tuple[np.ndarray, ...]
    attack: Attack | None = None

    @property
    def num_clients(self) -> int:
        return len(self.partitions)

    @property
    def schedule(self) -> AttackSchedule:
        return AttackSchedule.for_config(self.config)

    def client_data(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples held by client ``partition_id``."""
        idx = self.partitions[partition_id]
        return _tensors(self.dataset.x_train[idx], self.dataset.y_train[idx])

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training split (central pre-training)."""
        return _tensors(self.dataset.x_train, self.dataset.y_train)

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _tensors(self.dataset.x_test, self.dataset.y_test)

    def new_model(self) -> torch.nn.Module:
        """A freshly initialised model; the seed makes the initial weights reproducible."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.config.seed, "init-model"))
            return build_model(
                self.config.model.name, self.dataset.input_shape, self.dataset.num_classes
            )

    def training_spec(self, server_round: int, partition_id: int) -> TrainingSpec:
        """How client ``partition_id`` trains in round ``server_round``."""
        t = self.config.train
        return TrainingSpec(
            epochs=t.local_epochs,
            batch_size=t.batch_size,
            lr=t.lr * t.lr_decay ** (server_round - 1),
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            seed=derive_seed(self.config.seed, "client-train", server_round, partition_id),
            device=resolve_device(self.config.engine.device),
            max_steps=t.max_steps,
        )

    def train_kwargs(self, server_round: int, partition_id: int) -> dict:
        """Keyword arguments of ``fedsec_core.training.train`` for one client in one round
        (:meth:`training_spec` as a dict: what an attack's ``update`` takes)."""
        return self.training_spec(server_round, partition_id).to_dict()

    # --------------------------------------------------------------- attackers
    def attacker_facts(self, sampled: list[int], malicious: list[int]) -> dict[int, AttackerFacts]:
        """What the server tells each attacker of a round (``sampled`` clients, ``malicious``
        among them) in its train message's ConfigRecord, by partition id: its index in
        the pool, the pool's size, N_round (the examples every sampled client trains on,
        each attacker's poisoned set counted at its size) and the round's size
        (:class:`fedsec_core.protocol.AttackerFacts`)."""
        if self.attack is None or not malicious:
            return {}
        bad = set(malicious)
        n_round = sum(
            self.attack.num_examples(len(self.partitions[c]))
            if c in bad
            else len(self.partitions[c])
            for c in sampled
        )
        return {pid: self._pool_facts(pid, n_round, len(sampled)) for pid in malicious}

    def _pool_facts(
        self, partition_id: int, round_examples: int, round_clients: int
    ) -> AttackerFacts:
        pool = self.schedule.pool
        return AttackerFacts(
            attacker_index=pool.index(partition_id),
            num_attackers=len(pool),
            round_examples=round_examples,
            round_clients=round_clients,
        )

    def pool_context(self, partition_id: int) -> AttackContext:
        """Attacker ``partition_id``'s context outside any round (round 1, N_round 0): enough
        for its poisoned data, which depend on its partition and data seed only."""
        return self.attack_context(partition_id, 1, self._pool_facts(partition_id, 0, 0))

    def attack_context(
        self, partition_id: int, server_round: int, facts: AttackerFacts
    ) -> AttackContext:
        """The :class:`~attacks.AttackContext` of attacker ``partition_id``: its own data and
        seeds from this task, the round's facts from the server (``facts``, read from the
        train message's ConfigRecord, see :meth:`attacker_facts`, with the shared trigger
        when the adversary stage sends one; all of them, those the attack's server stage
        adds included, as ``ctx.facts``)."""
        return AttackContext(
            server_round=server_round,
            partition_id=partition_id,
            attacker_index=facts.attacker_index,
            num_attackers=facts.num_attackers,
            round_examples=facts.round_examples,
            round_clients=facts.round_clients,
            target_label=self.attack.target,
            examples=self.client_data(partition_id),
            input_shape=tuple(self.dataset.input_shape),
            num_classes=self.dataset.num_classes,
            data_seed=derive_seed(self.config.federation_seed, "attacker-data", partition_id),
            seed=derive_seed(self.config.seed, "attack", server_round, partition_id),
            device=resolve_device(self.config.engine.device),
            defense_name=self.config.defense.name,
            defense_params=dict(self.config.defense.params),
            trigger=(
                torch.tensor(list(facts.trigger), dtype=torch.float32).reshape(
                    tuple(self.dataset.input_shape)
                )
                if facts.trigger is not None
                else None
            ),
            facts=facts.to_config(),
        )


def get_task(config: ExperimentConfig) -> FederatedTask:
    """The task for ``config``; data are loaded and partitioned at most once per process.

    The cache key holds exactly what the data, the partition and the attack depend on,
    so two configs that differ only in, say, the defense share one task. Data, partition
    and attack edits depend on ``config.federation_seed`` (``data.partition_seed``, or the
    experiment seed), so runs that vary only the training seed share the federation.
    """
    key = json.dumps(
        {
            "seed": config.federation_seed,
            "data": config.to_dict()["data"],
            "attack": config.to_dict()["attack"],
        },
        sort_keys=True,
    )
    if key not in _TASK_CACHE:
        if len(_TASK_CACHE) >= _TASK_CACHE_SIZE:
            _TASK_CACHE.pop(next(iter(_TASK_CACHE)))
        _TASK_CACHE[key] = _build(config)
    return FederatedTask(config, *_TASK_CACHE[key])


_TASK_CACHE: dict[str, tuple[Dataset, tuple[np.ndarray, ...], Attack | None]] = {}
_TASK_CACHE_SIZE = 4


def _build(config: ExperimentConfig) -> tuple[Dataset, tuple[np.ndarray, ...], Attack | None]:
    d = config.data
    PROGRESS.info("loading %s ...", d.name)
    dataset = load_dataset(d.name, d.dir or None)
    attack = build_attack(config, dataset)
    if attack is not None:
        # e.g. tail examples become the attacker's and leave every honest client's data
        dataset = attack.edit_dataset(dataset, derive_seed(config.federation_seed, "attack-data"))
    parts = partition_indices(
        dataset.y_train,
        d.num_clients,
        d.partition,
        alpha=d.alpha,
        classes_per_client=d.classes_per_client,
        min_size=d.min_partition_size,
        seed=derive_seed(config.federation_seed, "partition"),
    )
    return dataset, tuple(parts), attack


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def kernel_family(device: torch.device) -> str:
    """Which kernels compute on ``device``: the CPU's instruction set as torch uses it
    (``cpu:AVX512``, ``cpu:AVX2``, ...) or the GPU's name. The same code, seed and thread
    count round differently on another family: a lenet pre-trained on an AVX-512 CPU
    differs from one pre-trained on an AVX2 CPU by up to 0.75 in a weight, and the
    regime map's lenet / RFA / edge-case PGD / seed 1 cell then ends at 97.5 / 31.0
    instead of 97.1 / 29.0 (experiments/regimes/README.md)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{torch.backends.cpu.get_cpu_capability()}"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from fedsec_core.errors import ConfigError

        raise ConfigError("engine.device = 'cuda' but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)
