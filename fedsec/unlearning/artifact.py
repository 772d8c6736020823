"""The datamodel artifact: built once per (config, inputs), reused for every request.

A ``.pt`` file holding ``B``, ``b``, the ridge ``lambda``, ``q`` and ``M`` (subset models),
the hash of the inputs the logits were taken on, and the hash of the config it was built
for. Loading checks both hashes and any q / M the caller insists on: a mismatch is a
``FedsecError``, never a silent rebuild (delete the file to rebuild).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsec.config import ExperimentConfig
from fedsec.unlearning.datamodel import Datamodel
from fedsec_core.atomic import atomic_torch_save
from fedsec_core.errors import FedsecError

FORMAT = "fedsec-datamodel-v1"


def tensor_hash(x: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and bytes."""
    x = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def config_hash(config: ExperimentConfig) -> str:
    """sha256 of the experiment a datamodel describes.

    Normalised so that equal experiments hash equal: ``data.partition_seed`` is replaced
    by the federation seed, and ``train.exclude_clients``, the engine section (where
    and how fast it ran) and the log section (which trackers saw it) are left out.
    """
    d = config.to_dict()
    d["data"]["partition_seed"] = config.federation_seed
    d["train"].pop("exclude_clients", None)
    d.pop("engine", None)
    d.pop("log", None)
    from fedsec.config import dumps_toml

    return hashlib.sha256(dumps_toml(d).encode()).hexdigest()


@dataclass
class DatamodelArtifact:
    datamodel: Datamodel
    inputs_hash: str
    config_hash: str
    q: float
    num_models: int
    unit: str  # "client" or "example"
    build_wall_time_s: float
    build_train_time_s: float

    def save(self, path: str | Path) -> None:
        atomic_torch_save(
            {
                "format": FORMAT,
                "B": self.datamodel.B,
                "b": self.datamodel.b,
                "lambda": self.datamodel.lam,
                "val_mse": self.datamodel.val_mse,
                "inputs_hash": self.inputs_hash,
                "config_hash": self.config_hash,
                "q": self.q,
                "num_models": self.num_models,
                "unit": self.unit,
                "build_wall_time_s": self.build_wall_time_s,
                "build_train_time_s": self.build_train_time_s,
            },
            path,
        )


def load_artifact(
    path: str | Path,
    *,
    config_hash: str,
    inputs_hash: str,
    q: float | None = None,
    num_models: int | None = None,
) -> DatamodelArtifact:
    """Load and check an artifact; FedsecError on any mismatch."""
    path = Path(path)
    try:
        raw = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise FedsecError(f"cannot read datamodel artifact {path}: {type(err).__name__}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FedsecError(f"{path} is not a fedsec datamodel artifact")
    if raw["config_hash"] != config_hash:
        raise FedsecError(
            f"datamodel artifact {path} was built for another config "
            f"({raw['config_hash'][:12]}, this one is {config_hash[:12]}); "
            "delete it to rebuild, or point --datamodel elsewhere"
        )
    if raw["inputs_hash"] != inputs_hash:
        raise FedsecError(
            f"datamodel artifact {path} was built on other inputs; delete it to rebuild"
        )
    if q is not None and abs(raw["q"] - q) > 1e-12:
        raise FedsecError(
            f"datamodel artifact {path} has q = {raw['q']}, not {q}; delete it to rebuild"
        )
    if num_models is not None and raw["num_models"] != num_models:
        raise FedsecError(
            f"datamodel artifact {path} has {raw['num_models']} subset models, "
            f"not {num_models}; delete it to rebuild"
        )
    dm = Datamodel(B=raw["B"], b=raw["b"], lam=raw["lambda"], val_mse=raw["val_mse"])
    return DatamodelArtifact(
        dm,
        raw["inputs_hash"],
        raw["config_hash"],
        raw["q"],
        raw["num_models"],
        raw["unit"],
        raw["build_wall_time_s"],
        raw["build_train_time_s"],
    )
