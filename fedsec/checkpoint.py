"""Checkpoints: everything a run needs to continue after it was killed.

A checkpoint holds the round it was taken after, the global model, the strategy's
state (FoolsGold's history, a defense's noise generator, ...) and the server loop's
adversary stage's (the stage an attack declares, ``fedsec_core.hooks.ServerStage``: a3fl's
current trigger). Nothing else is needed:
client sampling, client training and attacks draw from streams derived from
(seed, round, client), so round r + 1 of a resumed run draws exactly what it would have
drawn without the interruption. The file is written to a temporary name and renamed, so
a kill mid-write leaves the previous checkpoint whole. It records its format version
(``fedsec_core.protocol.CHECKPOINT_FORMAT``; one without is version 1), and a checkpoint in a
version this fedsec does not read is a one-line error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsec.config import ExperimentConfig
from fedsec.results import CHECKPOINT_FILE, config_differences, differences_words
from fedsec_core.atomic import atomic_torch_save
from fedsec_core.errors import ConfigError, FedsecError
from fedsec_core.protocol import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMATS_READ,
    FORMAT_KEY,
    FormatError,
    format_version,
)

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "load_checkpoint", "save_checkpoint"]


@dataclass
class Checkpoint:
    round: int
    model: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    adversary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the experiment (to_dict); {}: older
    server: dict[str, Any] = field(default_factory=dict)  # the server step's velocity


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    atomic_torch_save(
        {
            "round": checkpoint.round,
            "model": checkpoint.model,
            "strategy": checkpoint.strategy,
            "adversary": checkpoint.adversary,
            "config": checkpoint.config,
            "server": checkpoint.server,
            FORMAT_KEY: CHECKPOINT_FORMAT,
        },
        Path(run_dir) / CHECKPOINT_FILE,
    )


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint of ``run_dir`` (None: there is none); a FedsecError naming the file
    when it is empty, truncated or not a checkpoint, and a
    :class:`~fedsec_core.protocol.FormatError` naming it, the version found and the versions
    this fedsec reads when a newer fedsec wrote it."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # Strategy states hold plain Python containers and tensors (and generator states),
    # all of which torch's restricted unpickler accepts. Whatever fails to load under it
    # is damaged: the error says so without torch's advice to load it unrestricted.
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        format_version(data, CHECKPOINT_FORMATS_READ, str(path))
        checkpoint = Checkpoint(
            round=int(data["round"]),
            model=data["model"],
            strategy=data["strategy"],
            adversary=data.get("adversary", {}),  # absent from checkpoints of older versions
            config=data.get("config", {}),  # likewise
            server=data.get("server", {}),  # likewise
        )
    except FormatError:
        raise
    except Exception as err:  # any failure to read it is the same news
        size = path.stat().st_size
        what = "empty" if size == 0 else f"damaged or truncated ({type(err).__name__})"
        run = Path(run_dir)
        raise FedsecError(
            f"{path} is {what}, so the run cannot continue from it; start the run over "
            f"with `fedsec run {run / 'config.toml'} --out {run} --overwrite`"
        ) from None
    return checkpoint


def resume_problem(recorded: dict[str, Any], config: ExperimentConfig) -> str:
    """How ``config`` (a run directory's config.toml) differs from ``recorded``, the
    experiment its checkpoint was written by (``Checkpoint.config``), in words; "" when it
    is the same, or when nothing was recorded (a checkpoint of an older version)."""
    if not recorded:
        return ""
    try:
        written = ExperimentConfig.from_dict(recorded)
    except ConfigError:
        return "the checkpoint's own experiment cannot be read"
    return differences_words(config_differences(written, config))
