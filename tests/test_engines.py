"""End to end: the same ServerApp and ClientApp on the in-process and Flower engines."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from fedsec.apps.server_app import OUTPUT_DIR_KEY
from fedsec.cli import DEFAULT_EXPERIMENT
from fedsec.config import ExperimentConfig, load_config
from fedsec.engines.flower import flower_env
from fedsec.engines.processes import (
    free_port,
    marked_pids,
    start_process,
    stop_marked,
    wait_for_port,
)
from fedsec.models import build_model
from fedsec.results import read_metrics
from tests import runs
from tests.runs import rounds_without_time

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    *runs.tiny_digits(rounds=2, seed=5, clients=4),
]


def run_cli(out: Path, *overrides: str) -> None:
    runs.run_cli(out, [*SMALL, *overrides])


def test_inprocess_run_writes_a_complete_run_directory(tmp_path, capsys):
    run_cli(tmp_path / "run")
    rounds = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert 0.0 <= r["main_accuracy"] <= 1.0
        assert len(r["clients"]) == 3 and r["failed_clients"] == []
    assert rounds[-1]["main_accuracy"] > 0.3  # digits + MLP learns fast; chance is 0.1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["seed"] == 5
    assert summary["final_main_accuracy"] == rounds[-1]["main_accuracy"]
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    build_model("mlp", (1, 8, 8), 10).load_state_dict(state)  # strict: every tensor there
    out = capsys.readouterr().out
    assert "round 1/2" in out and "round 2/2" in out and "main_accuracy" in out


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    run_cli(tmp_path / "a")
    run_cli(tmp_path / "b")
    run_cli(tmp_path / "c", "seed=6")
    assert rounds_without_time(tmp_path / "a") == rounds_without_time(tmp_path / "b")
    assert rounds_without_time(tmp_path / "a") != rounds_without_time(tmp_path / "c")


def test_a_federation_trained_in_memory_is_the_run_fedsec_run_writes(tmp_path):
    # Unlearning trains its retrained and subset federations through train_inprocess:
    # the same round loop as `fedsec run`, without a run directory.
    from fedsec.engines import train_inprocess

    attack = ["attack.name=sign-flip", "attack.every=2", "defense.name=multi-metrics"]
    run_cli(tmp_path / "run", *attack)
    config = load_config(DEFAULT_EXPERIMENT, [*SMALL, *attack])
    result = train_inprocess(config)
    written = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert result.state.keys() == written.keys()
    assert all(torch.equal(result.state[k], written[k]) for k in written)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("final_main_accuracy", "best_main_accuracy", "detection", "rounds"):
        assert result.summary[key] == summary[key]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written


@pytest.mark.slow
def test_flower_engine_gives_identical_rounds_to_inprocess(tmp_path):
    # with a full-knowledge colluding attacker: the server-side adversary stage
    # (attacks/stages.py) must see the same replies in the same order on both engines
    attack = ["attack.name=ipm", "attack.knowledge=full", "attack.every=1"]
    run_cli(tmp_path / "inprocess", *attack)
    run_cli(tmp_path / "flower", "engine.name=flower", *attack)
    rounds = rounds_without_time(tmp_path / "inprocess")
    assert all(r["crafted_clients"] == r["malicious_clients"] != [] for r in rounds)
    assert rounds_without_time(tmp_path / "flower") == rounds
    assert marked_pids(str(tmp_path / "flower" / ".flwr")) == []


@pytest.mark.slow
def test_flwr_run_dot_runs_the_repo_as_a_flower_app(tmp_path):
    """`flwr run .` at the repo root, as a user does, against a SuperLink we own."""
    home = tmp_path / "flwr-home"
    env = flower_env(home)
    port = free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n[superlink.t]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    bin_dir = Path(sys.executable).parent
    link = start_process(
        [
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env,
        home / "superlink.log",
    )
    try:
        wait_for_port(port, link, home / "superlink.log")
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in _small_flat().items())
        overrides += f' {OUTPUT_DIR_KEY}="{tmp_path / "run"}"'
        result = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                ".",
                "t",
                "--run-config",
                overrides,
                "--federation-config",
                "num-supernodes=4 client-resources-num-cpus=1",
                "--stream",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        stop_marked(str(home))
        link.wait()
    assert marked_pids(str(home)) == []
    assert [r["round"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert rounds_without_time(tmp_path / "run") == _inprocess_reference(tmp_path)


def _small_flat() -> dict:
    flat = load_config(None, SMALL).to_flat()
    return {
        k: v
        for k, v in flat.items()
        if k.split(".")[0] in ("seed", "data", "model", "train", "engine")
    }


def _inprocess_reference(tmp_path: Path) -> list[dict]:
    run_cli(tmp_path / "reference")
    return rounds_without_time(tmp_path / "reference")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def test_pyproject_flower_app_config_is_the_default_experiment():
    """`flwr run .` must run what `fedsec run` runs (on Flower's engine)."""
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # Flower refuses a --run-config key the app does not declare: every key of the
    # sections a user overrides must be there (a new config key is added here too)
    declared = ExperimentConfig().to_dict()
    for section in ("data", "model", "train", "engine"):
        assert set(table[section]) == set(declared[section]), section
    assert table.pop("output") == {"dir": "runs/flwr-run", "resume": False}
    assert table["engine"].pop("name") == "flower"
    default = load_config(DEFAULT_EXPERIMENT)
    default.engine.name = ExperimentConfig().engine.name
    assert ExperimentConfig.from_dict(table) == default


def test_deepsight_inspects_the_task_model_in_a_federation(tmp_path):
    """The platform hands DeepSight a probe of the task's model: its scores are each
    client's threshold exceedings, a count of the model's 10 output classes."""
    run_cli(tmp_path / "run", "defense.name=deepsight", "defense.num_samples=200")
    for r in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        scores = list(r["scores"].values())
        assert len(scores) == 3 and all(s == int(s) and 1 <= s <= 10 for s in scores)
        assert len(r["accepted_clients"]) + len(r["rejected_clients"]) == 3


def test_fltrust_trains_on_the_server_root_set_and_rejects_a_sign_flipper(tmp_path):
    """The platform hands FLTrust its root-set trainer; a flipped update gets zero trust.

    IID clients, so that every honest update points the root update's way (with label
    skew an honest update can point away from it and be rejected too).
    """
    run_cli(
        tmp_path / "run",
        "defense.name=fltrust",
        "defense.root_size=200",
        "data.partition=iid",
        "attack.name=sign-flip",
        "attack.schedule=every-round",
        "train.rounds=3",
    )
    rounds = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for r in rounds:
        assert len(r["malicious_clients"]) == 1
        assert r["malicious_clients"][0] in r["rejected_clients"]
        assert (r["true_positives"], r["false_positives"]) == (1, 0)
    assert rounds[-1]["main_accuracy"] > rounds[0]["main_accuracy"]
