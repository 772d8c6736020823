"""Flower's deployment engine on loopback: a SuperLink and three SuperNodes over gRPC."""

from __future__ import annotations

import pytest

from fedsec.config import load_config
from fedsec.engines.flower import DEFAULT_CLIENTAPP, FlowerLauncher
from fedsec.engines.processes import marked_pids
from tests.runs import rounds_without_time, run_cli

pytestmark = pytest.mark.slow

SMALL = [
    "data.name=digits",
    "model.name=mlp",
    "data.num_clients=3",
    "data.min_partition_size=5",
    "train.clients_per_round=3",
    "train.rounds=3",
    "train.local_epochs=1",
    "engine.client_num_cpus=1",
    "seed=4",
    # an attacker in every round, against Multi-metrics
    "attack.name=sign-flip",
    "attack.schedule=every-round",
    "defense.name=multi-metrics",
]


def test_deployment_matches_inprocess_and_survives_a_killed_supernode(tmp_path):
    """Rounds 1-2 equal the in-process engine's; SuperNode 2 is killed as round 3 starts.

    Each SuperNode starts a fresh ClientApp process per message (Flower's subprocess
    isolation), hence the generous round timeout.
    """
    run_cli(tmp_path / "inprocess", SMALL)
    config = load_config(None, [*SMALL, "train.rounds=3", "engine.round_timeout=90"])
    out = tmp_path / "deployment"
    with FlowerLauncher(config, out, resume=False, clientapp=DEFAULT_CLIENTAPP) as launcher:
        launcher.start_superlink(simulation=False)
        for pid in range(3):
            launcher.start_supernode(pid, 3)

        def kill_after_round_two(line: str) -> None:
            if line.startswith("round 2/"):
                launcher.kill("supernode-2")

        launcher.submit(kill_after_round_two)
    assert marked_pids(str(out / ".flwr")) == []  # every Flower process has ended

    rounds = rounds_without_time(out)
    assert rounds[:2] == rounds_without_time(tmp_path / "inprocess")[:2]
    assert all(len(r["malicious_clients"]) == 1 and r["accepted_clients"] for r in rounds)
    assert rounds[2]["round"] == 3 and rounds[2]["failed_clients"] == [2]
    assert 2 not in rounds[2]["accepted_clients"] + rounds[2]["rejected_clients"]
