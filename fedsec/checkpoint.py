"""Checkpoints: everything a run needs to continue after it was killed.

A checkpoint holds the round it was taken after, the global model, the strategy's
state (FoolsGold's history, a defense's noise generator, ...) and the server loop's
adversary stage's (``fedsec.adversary``: a3fl's current trigger). Nothing else is needed:
client sampling, client training and attacks draw from streams derived from
(seed, round, client), so round r + 1 of a resumed run draws exactly what it would have
drawn without the interruption. The file is written to a temporary name and renamed, so
a kill mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsec.atomic import atomic_torch_save

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    round: int
    model: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    adversary: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    atomic_torch_save(
        {
            "round": checkpoint.round,
            "model": checkpoint.model,
            "strategy": checkpoint.strategy,
            "adversary": checkpoint.adversary,
        },
        Path(run_dir) / CHECKPOINT_FILE,
    )


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # Strategy states hold plain Python containers and tensors (and generator states),
    # all of which torch's restricted unpickler accepts.
    data = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(
        round=int(data["round"]),
        model=data["model"],
        strategy=data["strategy"],
        adversary=data.get("adversary", {}),  # absent from checkpoints of older versions
    )
