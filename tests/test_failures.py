"""Failing clients end nothing: the round aggregates what it has and records who failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.apps.server_app import OUTPUT_DIR_KEY
from fedsec.apps.server_app import app as server_app
from fedsec.config import load_config
from fedsec.engines.flower import run_flower
from fedsec.engines.inprocess import run_inprocess
from fedsec.engines.processes import marked_pids
from fedsec.results import read_metrics
from tests.faulty_client import app as faulty_app

BASE = [
    "data.name=digits",
    "model.name=mlp",
    "data.num_clients=5",
    "data.min_partition_size=5",
    "train.clients_per_round=5",
    "train.rounds=2",
    "train.local_epochs=1",
    "engine.client_num_cpus=1",
    "engine.round_timeout=25",
    "seed=2",
]


def run(engine: str, out: Path, *extra: str) -> list[dict]:
    config = load_config(None, [*BASE, *extra])
    if engine == "inprocess":
        run_inprocess(server_app, faulty_app, 5, {**config.to_flat(), OUTPUT_DIR_KEY: str(out)})
    else:
        run_flower(config, out, progress=lambda _: None, clientapp="tests.faulty_client:app")
        assert marked_pids(str(out / ".flwr")) == []
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.parametrize("engine", ["inprocess", pytest.param("flower", marks=pytest.mark.slow)])
def test_error_reply_exception_and_timeout_are_recorded_and_the_run_goes_on(engine, tmp_path):
    rounds = run(engine, tmp_path / engine)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["failed_clients"] == [1, 2]
    # error replies are named by partition id, not by the node id the strategy would see
    reasons = rounds[0]["failed_reasons"]
    assert list(reasons) == ["1", "2"] and "partition 1 refuses to train" in reasons["1"]
    assert "partition 2 crashed" in reasons["2"]
    assert not any("invalid_clients" in r for r in rounds)
    assert rounds[1]["failed_clients"] == [1, 2, 3]  # 3 answered after the deadline
    assert [r["accepted_clients"] for r in rounds] == [[0, 3, 4], [0, 4]]  # the rest went in
    assert not any(r.get("skipped") or r.get("kept_previous_model") for r in rounds)
    assert rounds[0]["main_accuracy"] != rounds[1]["main_accuracy"]


def test_too_few_replies_skips_the_round_and_keeps_the_model(tmp_path):
    rounds = run("inprocess", tmp_path / "run", "train.min_replies=3")
    assert rounds[0].get("skipped") is None  # clients 0, 3, 4 answered: enough
    assert rounds[1]["skipped"] and rounds[1]["kept_previous_model"]  # only 0 and 4
    assert rounds[1]["main_accuracy"] == rounds[0]["main_accuracy"]
