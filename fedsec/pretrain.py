"""The initial global model: random, or trained centrally first (the papers' setup).

Huang et al. 2023 and Wang et al. 2020 start federated training from a model trained
centrally for some epochs. That model depends only on the training split (the data set
as the attack left it), the model, the seed, the number of epochs and the optimiser
settings, so it is cached on disk under a key of exactly those and reused by every run
that shares them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from fedsec.task import FederatedTask, kernel_family, resolve_device
from fedsec_core.atomic import atomic_torch_save
from fedsec_core.cache import array_digest, cache_dir
from fedsec_core.seeding import derive_seed
from fedsec_core.training import train


def initial_state(task: FederatedTask, log=print) -> dict[str, torch.Tensor]:
    """State dict of the round-0 global model for ``task``."""
    cfg = task.config
    model = task.new_model()
    epochs = cfg.train.pretrain_epochs
    if epochs == 0:
        return model.state_dict()
    path = _cache_path(task)
    if path.is_file():
        log(f"pre-trained model: {path} (cached)")
        return torch.load(path, map_location="cpu", weights_only=True)
    log(f"pre-training {cfg.model.name} on {cfg.data.name} for {epochs} epochs ...")
    x, y = task.train_data()
    t = cfg.train
    steps_per_epoch = -(-len(y) // t.batch_size)
    started = time.monotonic()

    def report_epoch(step: int) -> None:
        if step % steps_per_epoch == 0:
            log(
                f"pre-training: epoch {step // steps_per_epoch}/{epochs} "
                f"({time.monotonic() - started:.0f}s)"
            )

    train(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        seed=derive_seed(cfg.seed, "pretrain"),
        device=resolve_device(cfg.engine.device),
        after_step=report_epoch,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)
    log(f"pre-trained model saved: {path}")
    return state


def _cache_path(task: FederatedTask) -> Path:
    cfg = task.config
    t = cfg.train
    key = {
        "data": cfg.data.name,
        "dir": cfg.data.dir,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "epochs": t.pretrain_epochs,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "momentum": t.momentum,
        "weight_decay": t.weight_decay,
        "torch": torch.__version__,
        "threads": cfg.engine.client_num_cpus,
        # other kernels (an AVX2 CPU, a GPU) pre-train another model from the same seed
        "kernels": kernel_family(resolve_device(cfg.engine.device)),
        # What pre-training actually sees: an attack may have edited the training split
        # (a "tail" edge case takes its examples out), so the name alone is not enough.
        "train_split": array_digest(task.dataset.x_train, task.dataset.y_train),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{cfg.data.name}-{cfg.model.name}-seed{cfg.seed}-e{t.pretrain_epochs}-{digest}.pt"
    return cache_dir("pretrained", t.pretrain_cache) / name
