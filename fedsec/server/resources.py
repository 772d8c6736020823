"""What the server builds for a rule that declares it needs it (``fedsec_core.hooks``):
a probe of the task's model, the update on a clean root set, and the final model a
rule's step after the last round receives."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord

from fedsec.task import FederatedTask, resolve_device
from fedsec_core.hooks import FinalModel
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import train


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
