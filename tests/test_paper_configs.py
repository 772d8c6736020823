"""The paper-scale sweeps (experiments/paper-scale) load, every run validates, and their
settings are the paper's (REFERENCE 1.3). Nothing runs: the data are fakes in the
standard formats, because CIFAR-10, EMNIST and the edge-case sets are not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.sweep import load_sweep
from tests.test_data import EMNIST_NAMES, images, write_cifar, write_idx_set

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper-scale"
DEFENSES = [
    "fedavg",
    "rfa",
    "foolsgold",
    "krum",
    "multi-krum",
    "weak-dp",
    "flame",
    "multi-metrics",
    "multi-metrics-reference",
]
ATTACKS = ["none", "model-replacement", "dba", "pgd", "edge-case-pgd"]


def local_copy(tmp_path: Path, name: str) -> Path:
    """The sweep and its base, with the data folders pointed at fakes in tmp_path."""
    data, edge = tmp_path / "data", tmp_path / "edge"
    data.mkdir()
    edge.mkdir()
    if name == "cifar10":
        write_cifar(data)
        np.savez(
            edge / "southwest_airplanes.npz",
            x_train=images(3, 6, (32, 32, 3)),
            x_test=images(2, 7, (32, 32, 3)),
        )
    else:
        write_idx_set(data, EMNIST_NAMES, gz=False)
        np.savez(
            edge / "ardis_iv.npz",
            x_train=images(5, 2),
            y_train=np.array([7, 1, 0, 9, 7]),
            x_test=images(3, 3),
            y_test=np.array([7, 2, 3]),
        )
    for file in (f"{name}-base.toml", f"{name}-sweep.toml"):
        text = (PAPER / file).read_text()
        text = text.replace('dir = ""', f'dir = "{data}"').replace('"../shared/data"', f'"{edge}"')
        (tmp_path / file).write_text(text)
    return tmp_path / f"{name}-sweep.toml"


@pytest.mark.parametrize("name", ["cifar10", "emnist"])
def test_paper_scale_sweep_validates_every_run(tmp_path, name):
    sweep = load_sweep(local_copy(tmp_path, name), tmp_path / "out")
    assert sweep.axes["defense"] == DEFENSES and sweep.axes["attack"] == ATTACKS
    assert len(sweep.runs) == len(DEFENSES) * len(ATTACKS)
    runs = {(r.labels["defense"], r.labels["attack"]): r.config for r in sweep.runs}
    cfg = runs["fedavg", "edge-case-pgd"]
    cifar = name == "cifar10"
    assert (cfg.data.name, cfg.model.name) == (
        ("cifar10", "vgg9") if cifar else ("emnist-digits", "lenet")
    )
    assert (cfg.data.num_clients, cfg.train.clients_per_round) == (
        (200, 10) if cifar else (3383, 30)
    )
    assert (cfg.train.local_epochs, cfg.train.lr, cfg.train.batch_size) == (
        (2, 0.02, 32) if cifar else (5, 0.1, 512)
    )
    assert (cfg.data.partition, cfg.data.alpha, cfg.data.min_partition_size) == (
        "dirichlet",
        0.5,
        10,
    )
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.lr_decay) == (0.9, 1e-4, 0.998)
    assert (cfg.train.pretrain_epochs, cfg.train.rounds) == (10, 1500)
    # One attacker in rounds 1, 11, 21, ...
    a = cfg.attack
    assert (a.schedule, a.every, a.num_attackers, a.attackers_per_round, a.start_round) == (
        "fixed-frequency",
        10,
        1,
        1,
        1,
    )
    assert a.params["edge_case"] == ("southwest" if cifar else "ardis")
    assert (a.params["num_edge_cases"], a.params["num_clean"]) == (
        (100, 400) if cifar else (66, 100)
    )
    for attack in ("pgd", "edge-case-pgd"):
        params = runs["fedavg", attack].attack.params
        assert params["eps"] == (2.0 if cifar else 1.0)
        # The same attack strength against every defense: no eps decay anywhere.
        assert all(runs[d, attack].attack.params == params for d in DEFENSES)
    dp = runs["weak-dp", "none"].defense.params
    assert (dp["norm_bound"], dp["noise_std"]) == ((2.0, 0.0025) if cifar else (1.5, 0.025))
    assert runs["multi-metrics", "none"].defense.params == {"variant": "paper"}
    assert runs["multi-metrics-reference", "none"].defense.params == {"variant": "reference"}
    assert runs["fedavg", "dba"].attack.num_attackers == 4
