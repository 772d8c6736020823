"""Helpers the end-to-end tests share: run the CLI, read a run's rounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.results import read_metrics


def run_cli(out: Path, overrides: list[str]) -> None:
    """``fedsec run fedsec/default.toml --out OUT --set ...`` in this process; fails the
    test unless it succeeds."""
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0


def rounds_without_time(run_dir: Path) -> list[dict]:
    """The rounds of ``run_dir``'s metrics.jsonl without wall-clock times."""
    return [
        {k: v for k, v in r.items() if k != "time_s"}
        for r in read_metrics(Path(run_dir) / "metrics.jsonl")
    ]


def tiny_digits(rounds: int, seed: int, local_epochs: int = 1, clients: int = 6) -> list[str]:
    """``--set`` overrides of a tiny federation: 8x8 digits, an MLP, ``clients`` clients
    (6: the attack tests' setting), 3 a round (triggers must then fit 8x8 images)."""
    return [
        "data.name=digits",
        "model.name=mlp",
        f"data.num_clients={clients}",
        "data.min_partition_size=5",
        "train.clients_per_round=3",
        f"train.rounds={rounds}",
        f"train.local_epochs={local_epochs}",
        "engine.client_num_cpus=1",
        f"seed={seed}",
    ]


REPO = Path(__file__).resolve().parents[1]

#: A small experiment (10 digits clients, an MLP, one local epoch): format it with
#: ``rounds`` and ``per_round``, append sections or keys of ``[engine]``.
SMALL = """
[data]
name = "digits"
num_clients = 10
[model]
name = "mlp"
[train]
rounds = {rounds}
clients_per_round = {per_round}
local_epochs = 1
[engine]
client_num_cpus = 1
"""


def sigkill_when(cli_args: list[str], metrics: Path, rounds: int, timeout: float) -> None:
    """Start ``python -m fedsec.cli CLI_ARGS`` and SIGKILL it once ``metrics`` holds
    ``rounds`` rounds; fails the test if it ends first or takes longer than ``timeout``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsec.cli", *cli_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while len(read_metrics(metrics)) < rounds:
            assert proc.poll() is None, "the process ended before it could be killed"
            assert time.monotonic() < deadline, f"{metrics} did not reach round {rounds} in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
