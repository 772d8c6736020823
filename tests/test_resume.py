"""Kill a run with SIGKILL midway, resume it, and get the uninterrupted run's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.results import read_metrics
from tests.runs import rounds_without_time, sigkill_when

# weak-dp and crfl draw noise every round from a generator whose state must survive the
# kill (crfl also certifies the final model, from the run's seed);
# centered-clipping clips around the previous round's aggregate, fldetector predicts
# each client from its history, the server's momentum keeps a velocity: all must
# survive it too.
CONFIG = [
    "data.name=digits",
    "model.name=mlp",
    "data.num_clients=6",
    "train.clients_per_round=3",
    "train.rounds=8",
    "train.local_epochs=1",
    "engine.client_num_cpus=1",
    "seed=3",
]


def argv(out: Path, defense: list[str]) -> list[str]:
    args = ["run", str(DEFAULT_EXPERIMENT), "--out", str(out)]
    for item in [*CONFIG, *defense]:
        args += ["--set", item]
    return args


@pytest.mark.parametrize(
    "defense",
    [
        ["defense.name=weak-dp"],
        ["defense.name=centered-clipping", "defense.tau=0.05"],
        ["defense.name=fldetector", "defense.window=2", "defense.start_round=3"],
        ["defense.name=crfl", "defense.num_samples=10"],
        # the server's momentum carries a velocity across rounds
        ["defense.name=fedavg", "train.server_momentum=0.9", "train.server_lr=0.5"],
        # Adam's step count and moments
        ["defense.name=fedavg", "train.server_optimizer=adam", "train.server_lr=0.001"],
    ],
    ids=["weak-dp", "centered-clipping", "fldetector", "crfl", "server-momentum", "server-adam"],
)
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path, defense):
    assert main(argv(tmp_path / "whole", defense)) == 0

    killed = tmp_path / "killed"
    sigkill_when(argv(killed, defense), killed / "metrics.jsonl", rounds=3, timeout=120)
    done = len(read_metrics(killed / "metrics.jsonl"))
    assert 3 <= done < 8 and not (killed / "summary.json").exists()

    assert main(["run", "--resume", str(killed)]) == 0
    assert rounds_without_time(killed) == rounds_without_time(tmp_path / "whole")
    assert [r["round"] for r in read_metrics(killed / "metrics.jsonl")] == list(range(1, 9))


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_resume_takes_no_overrides(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--set", "train.rounds=3"]) == 2
    assert "--resume takes the run directory alone" in capsys.readouterr().err
