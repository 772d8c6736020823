"""Experiment trackers ([log]): metrics.csv, TensorBoard and W&B (offline) get every
round of metrics.jsonl once, read back with each tracker's own reader; a resumed run
logs no round twice; a sweep's cells carry its axes as tags; one-line config errors."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fedsec import tracking
from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.config import load_config
from fedsec.results import read_metrics
from fedsec_core.errors import ConfigError
from tests.runs import REPO, run_cli, tiny_digits

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch):
    """W&B never reaches the network here: offline mode, no error reports, no system
    monitor; and no sweep cell unless a test sets one."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    monkeypatch.setenv("WANDB__DISABLE_MACHINE_INFO", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    # W&B keeps its service's address in the environment of the process that started
    # it, and child processes (the killed run, sweep cells) would attach to that one.
    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.delenv(tracking.SWEEP_ENV, raising=False)


TRACKERS = ["log.csv=true", "log.tensorboard=true", "log.wandb=offline"]
#: Krum leaves clients out, so the rounds have accepted/rejected lists and scores.
KRUM = ["defense.name=krum", "defense.num_malicious=0"]


# ----------------------------------------------------------------- readers
def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the run's TensorBoard scalars, read with
    TensorBoard's EventAccumulator (fedsec writes them as float64 tensor summaries)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        out[tag] = [
            (e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)
        ]
    return out


def tensorboard_hparams(run_dir: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    meta = acc.SummaryMetadata("_hparams_/session_start_info")
    data = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    values = data.session_start_info.hparams
    return {
        k: v.string_value if v.HasField("string_value") else v.number_value
        for k, v in values.items()
    }


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``), read independently of
    wandb-core: a 7-byte header (``:W&B``, 0xBEE1, version 0), then LevelDB log records
    in 32 KiB blocks (crc32 of the type byte and the data, length, type FULL / FIRST /
    MIDDLE / LAST), each whole record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's zero trailer
            pos += 32768 - pos % 32768
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if kind == 0 and length == 0:
            break  # preallocated zeros at the end of a file still being written
        assert checksum == zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
        pending += chunk
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(run_dir: Path) -> tuple[object, list[dict]]:
    """The one offline W&B run of ``run_dir``: its run record and its history rows."""
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = wandb_records(files[0])
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {
                ".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item
            }
            history.append(row)
    return runs[0], history


def expected_rows(run_dir: Path) -> list[dict]:
    """Each round of metrics.jsonl as a tracker must log it: round + its numbers."""
    return [
        {"round": r["round"], **tracking.scalar_metrics(r)}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


def assert_trackers_equal_metrics(run_dir: Path) -> None:
    """metrics.csv, the TensorBoard scalars and the W&B history each hold every round of
    metrics.jsonl once, with equal values (float64, so exactly equal)."""
    rows = expected_rows(run_dir)
    assert rows and [r["round"] for r in rows] == list(range(1, len(rows) + 1))
    names = sorted({k for r in rows for k in r} - {"round"})

    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["round", *names]
        table = list(reader)
    assert [int(r["round"]) for r in table] == [r["round"] for r in rows]
    for got, want in zip(table, rows, strict=True):
        assert {k: float(v) for k, v in got.items() if v != ""} == pytest.approx(
            {k: float(v) for k, v in want.items()}, rel=0, abs=0
        )

    scalars = tensorboard_scalars(run_dir)
    assert sorted(scalars) == names
    for name, points in scalars.items():
        assert points == [(r["round"], r[name]) for r in rows if name in r]

    _, history = wandb_run(run_dir)
    assert [h["_step"] for h in history] == [r["round"] for r in rows]
    for h, r in zip(history, rows, strict=True):
        assert {k: v for k, v in h.items() if not k.startswith("_")} == {
            k: v for k, v in r.items() if k != "round"
        }


# ----------------------------------------------------------------- tests
def test_scalar_metrics_counts_lists_flattens_radii_and_leaves_text_out():
    record = {
        "round": 4,
        "main_accuracy": 0.75,
        "train_loss": None,
        "clients": [0, 3, 5],
        "malicious_clients": [3],
        "accepted_clients": [0, 5],
        "scores": {"0": 0.1, "3": 2.0, "5": 0.3},
        "invalid_clients": {"7": "nan values"},
        "skipped": False,
        "kept_previous_model": True,
        "kept_previous_reason": "no usable reply",
        "true_positives": 1,
        "certified_accuracy": {"0": 0.9, "0.5": 0.4},
        "certification": {"samples": 100, "local_steps": [5, 5]},
        "time_s": 1.5,
    }
    assert tracking.scalar_metrics(record) == {
        "main_accuracy": 0.75,
        "n_clients": 3,
        "n_malicious_clients": 1,
        "n_accepted_clients": 2,
        "n_scores": 3,
        "n_invalid_clients": 1,
        "skipped": 0,
        "kept_previous_model": 1,
        "true_positives": 1,
        "certified_accuracy/0": 0.9,
        "certified_accuracy/0.5": 0.4,
        "time_s": 1.5,
    }


def test_trackers_log_every_round_of_metrics_jsonl(tmp_path, monkeypatch):
    cell = {"sweep": "grid", "axes": {"defense": "krum", "seed": "1"}}
    monkeypatch.setenv(tracking.SWEEP_ENV, json.dumps(cell))
    out = tmp_path / "run"
    run_cli(out, tiny_digits(3, seed=1) + KRUM + TRACKERS)
    assert_trackers_equal_metrics(out)
    rounds = read_metrics(out / "metrics.jsonl")
    assert [r["n_clients"] for r in expected_rows(out)] == [3, 3, 3]
    assert all(len(r["accepted_clients"]) == 1 for r in rounds)  # Krum keeps one client

    # the sweep cell, as TensorBoard hparams and as the W&B run's group, tags and config
    assert tensorboard_hparams(out) == {
        "sweep": "grid",
        "axis/defense": "krum",
        "axis/seed": "1",
        "seed": 1.0,
        "data.name": "digits",
        "model.name": "mlp",
        "attack.name": "none",
        "defense.name": "krum",
    }
    run, _ = wandb_run(out)
    assert list(run.tags) == ["defense=krum", "seed=1"]
    assert run.display_name == "grid/defense=krum/seed=1"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["axes"] == {"defense": "krum", "seed": "1"} and config["sweep"] == "grid"
    assert config["defense"]["name"] == "krum" and config["log"]["wandb"] == "offline"
    assert run.run_id == json.loads((out / "trackers.json").read_text())["wandb_id"]


#: ``python -c`` this with fedsec's ``run`` arguments: the run SIGKILLs itself right
#: after round {round} reached metrics.jsonl and the trackers.
KILLED_AFTER = """
import os, signal, sys
from fedsec import results
from fedsec.cli import main
log_round = results.RunWriter.log_round
def log_then_die(self, record):
    log_round(self, record)
    if record.round == {round}:
        os.kill(os.getpid(), signal.SIGKILL)
results.RunWriter.log_round = log_then_die
main(sys.argv[1:])
"""


def test_a_resumed_run_logs_no_round_twice(tmp_path, monkeypatch):
    """Killed after round 3 with its checkpoint at round 2: the resume drops round 3 and
    runs it again; every tracker then holds rounds 1-4 once (the same W&B run id and
    tags, and one offline run)."""
    monkeypatch.setenv(tracking.SWEEP_ENV, json.dumps({"sweep": "s", "axes": {"a": "x"}}))
    out = tmp_path / "killed"
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(out)]
    for item in tiny_digits(4, seed=0) + TRACKERS + ["engine.checkpoint_every=2"]:
        argv += ["--set", item]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER.format(round=3), *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 2
    assert [s for s, _ in tensorboard_scalars(out)["main_accuracy"]] == [1, 2, 3]
    first = json.loads((out / "trackers.json").read_text())

    monkeypatch.delenv(tracking.SWEEP_ENV)  # resumed by hand: the labels come from the run
    assert main(["run", "--resume", str(out)]) == 0
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_trackers_equal_metrics(out)
    assert json.loads((out / "trackers.json").read_text()) == first
    run, _ = wandb_run(out)
    assert run.run_id == first["wandb_id"] and list(run.tags) == ["a=x"]
    assert tensorboard_hparams(out)["axis/a"] == "x"


def test_csv_alone_and_a_column_that_appears_later(tmp_path):
    """A column that first appears in a later round (a colluding attack's crafted
    clients, from its first attack round) rewrites the file with it; earlier rows have
    an empty cell there."""
    out = tmp_path / "run"
    attack = ["attack.name=ipm", "attack.start_round=2", "attack.every=1"]
    run_cli(out, tiny_digits(3, seed=0) + attack + ["log.csv=true"])
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    assert not (out / "trackers.json").exists()
    with (out / "metrics.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    rounds = read_metrics(out / "metrics.jsonl")
    for got, record in zip(table, rounds, strict=True):
        want = {"round": record["round"], **tracking.scalar_metrics(record)}
        assert {k: float(v) for k, v in got.items() if v != ""} == {
            k: float(v) for k, v in want.items()
        }
    assert "crafted_clients" not in rounds[0] and table[0]["n_crafted_clients"] == ""
    assert [int(row["n_crafted_clients"]) for row in table[1:]] == [1, 1]
    assert all(math.isfinite(float(row["main_accuracy"])) for row in table)


def test_sweep_cells_carry_the_sweep_and_their_labels(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(
        'seed = 0\n[data]\nname = "digits"\nnum_clients = 4\n[model]\nname = "mlp"\n'
        "[train]\nrounds = 1\nclients_per_round = 3\nlocal_epochs = 1\n"
        "[engine]\nclient_num_cpus = 1\n[log]\ntensorboard = true\n"
    )
    sweep = tmp_path / "grid.toml"
    sweep.write_text(
        'name = "grid"\nbase = "base.toml"\n[axes.defense]\n'
        'fedavg = { "defense.name" = "fedavg" }\n'
        'median = { "defense.name" = "median" }\n'
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--parallel", "2"]) == 0
    hparams = {
        label: tensorboard_hparams(out / f"defense={label}") for label in ("fedavg", "median")
    }
    for label, values in hparams.items():
        assert values["sweep"] == "grid" and values["axis/defense"] == label
        assert values["defense.name"] == label
        labels = json.loads((out / f"defense={label}" / "trackers.json").read_text())
        assert labels["name"] == f"grid/defense={label}" and labels["axes"] == {"defense": label}
    assert hparams["fedavg"].keys() == hparams["median"].keys()  # the same keys in every run


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["log.wandb=yes"], "unknown log.wandb 'yes'; valid: off, offline, online"),
        (["log.csv=1"], "log.csv must be true or false, got an integer 1"),
        (["log.tensorboard=yes"], "log.tensorboard must be true or false, got a string 'yes'"),
        (["log.bogus=1"], "unknown key log.bogus; valid keys in [log]: csv, tensorboard, wandb"),
    ],
)
def test_bad_log_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "setting, package",
    [("log.tensorboard=true", "tensorboard"), ("log.wandb=offline", "wandb")],
)
def test_a_tracker_without_its_package_fails_the_check_with_the_install_hint(
    setting, package, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(tracking, "installed", lambda name: name != package)
    argv = ["run", str(DEFAULT_EXPERIMENT), "--check"]
    assert main(argv + ["--set", setting, "--set", "data.name=digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs the {package} package" in err
    assert 'pip install -e ".[track]"' in err
    # without the tracker the same config is valid
    assert main(argv + ["--set", "data.name=digits"]) == 0
