"""The round protocol (fedsec_core.protocol): message keys, attacker facts, training spec, the
round record as metrics.jsonl holds it, and the format versions of metrics.jsonl and
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsec.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedsec.cli import main
from fedsec.config import load_config
from fedsec.results import read_metrics, read_rounds
from fedsec.task import get_task
from fedsec.tracking import scalar_metrics
from fedsec_core.protocol import (
    ABSENT,
    AttackerFacts,
    FormatError,
    RoundRecord,
    TrainingSpec,
)
from fedsec_core.seeding import derive_seed
from tests.runs import REPO, run_cli, tiny_digits

#: The one metrics.jsonl committed under experiments/ (a Multi-metrics run against two
#: attackers, written before metrics.jsonl recorded a format version).
COMMITTED = REPO / "experiments" / "unlearning" / "results" / "detect-run" / "metrics.jsonl"


# ------------------------------------------------------------------- round record
def test_a_round_record_is_written_in_the_documented_order_and_read_back():
    record = RoundRecord(
        round=3,
        main_accuracy=0.5,
        test_loss=1.25,
        backdoor_accuracy=0.0,
        clients=[1, 4, 7],
        failed_clients=[7],
        failed_reasons={7: "boom"},
        crafted_clients=[4],
        evasion_scales={4: 0.25},
        stage_log={"trigger_from": 4},
        train_loss=0.75,
        accepted_clients=[1, 4],
        rejected_clients=[],
        scores={1: 0.5, 4: 2.0},
        malicious_clients=[4],
        true_positives=0,
        false_positives=0,
        false_negatives=1,
        true_negatives=1,
        final={"smoothed_accuracy": 0.5, "certified_accuracy": {"0": 0.5}},
        time_s=1.5,
    )
    line = (
        '{"round": 3, "main_accuracy": 0.5, "test_loss": 1.25, "backdoor_accuracy": 0.0, '
        '"clients": [1, 4, 7], "failed_clients": [7], "failed_reasons": {"7": "boom"}, '
        '"crafted_clients": [4], "evasion_scales": {"4": 0.25}, "trigger_from": 4, '
        '"train_loss": 0.75, "accepted_clients": [1, 4], "rejected_clients": [], '
        '"scores": {"1": 0.5, "4": 2.0}, "malicious_clients": [4], "true_positives": 0, '
        '"false_positives": 0, "false_negatives": 1, "true_negatives": 1, '
        '"smoothed_accuracy": 0.5, "certified_accuracy": {"0": 0.5}, "time_s": 1.5, '
        '"format_version": 1}'
    )
    assert json.dumps(record.to_dict()) == line
    assert RoundRecord.from_dict(json.loads(line)) == record
    assert "format_version" not in record.to_dict(version=False)
    assert "format_version" not in scalar_metrics(record.to_dict())  # not a metric


def test_scales_the_attackers_reported_come_before_the_stage_and_a_skipped_round():
    # partial knowledge: the attackers' own scales were logged before the stage ran
    # (a3fl's trigger stage, which crafts no reply)
    partial = RoundRecord(1, evasion_scales={2: 0.5}, crafted_clients=[], train_loss=None)
    assert list(partial.to_dict()) == [
        "round",
        "evasion_scales",
        "crafted_clients",
        "train_loss",
        "format_version",
    ]
    assert partial.to_dict()["train_loss"] is None  # logged: no reply had a loss
    assert RoundRecord.from_dict(partial.to_dict()) == partial
    # a round skipped for too few replies
    skipped = RoundRecord(
        2,
        failed_clients=[0],
        train_loss=None,
        skipped=True,
        kept_previous_model=True,
        kept_previous_reason="0 valid replies",
    )
    assert json.dumps(skipped.to_dict(version=False)) == (
        '{"round": 2, "failed_clients": [0], "train_loss": null, "skipped": true, '
        '"kept_previous_model": true, "kept_previous_reason": "0 valid replies"}'
    )
    # a record without train_loss reads back without it (not as null)
    bare = RoundRecord.from_dict({"round": 1, "main_accuracy": 0.5})
    assert bare.train_loss is ABSENT and bare.to_dict(version=False) == {
        "round": 1,
        "main_accuracy": 0.5,
    }


def test_keys_of_an_older_fedsec_are_kept_where_they_were():
    data = {"round": 1, "collusion_note": "n", "view": 3, "train_loss": 1.0, "extra": [1]}
    record = RoundRecord.from_dict(data)
    assert record.stage_log == {"view": 3} and record.final == {"extra": [1]}
    assert record.to_dict(version=False) == data and list(record.to_dict(version=False)) == list(
        data
    )


def test_the_committed_metrics_jsonl_reads_as_version_1_unchanged():
    lines = COMMITTED.read_text(encoding="utf-8").splitlines()
    rounds = read_rounds(COMMITTED)
    assert len(rounds) == len(lines) == 4 and [r.round for r in rounds] == [1, 2, 3, 4]
    assert "format_version" not in lines[0]  # written before the version: version 1
    first = rounds[0]
    assert first.malicious_clients == [7, 9] and first.rejected_clients == [1, 4, 5, 6]
    assert first.main_accuracy == 0.09749303621169916 and first.scores[7] == 0.8794550322232392
    # every byte of every line reads back: written again, only the version is added
    for line, record in zip(lines, rounds, strict=True):
        assert json.dumps(record.to_dict(version=False)) == line
        assert json.dumps(record.to_dict()) == line[:-1] + ', "format_version": 1}'
    assert read_metrics(COMMITTED) == [json.loads(line) for line in lines]


# ------------------------------------------------------------------ format versions
def test_a_newer_metrics_format_is_a_one_line_error_naming_file_and_versions(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"round": 1, "main_accuracy": 0.5, "format_version": 1}\n'
        '{"round": 2, "main_accuracy": 0.6, "format_version": 2}\n'
    )
    with pytest.raises(FormatError) as err:
        read_rounds(path)
    message = str(err.value)
    assert message == (
        f"{path} (line 2) has format version 2; this fedsec reads version 1 "
        "(a newer fedsec wrote it: read it with that version)"
    )
    assert "\n" not in message


def test_a_newer_run_directory_stops_resume_with_exit_code_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli(out, tiny_digits(rounds=1, seed=0))
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["format_version"] == 1 and load_checkpoint(out).round == 1
    (out / "summary.json").unlink()  # an interrupted run: --resume reads both files
    capsys.readouterr()

    checkpoint["format_version"] = 2
    torch.save(checkpoint, out / CHECKPOINT_FILE)
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fedsec: error: {out / CHECKPOINT_FILE} has format version 2; this fedsec reads "
        "version 1 (a newer fedsec wrote it: read it with that version)"
    ]

    del checkpoint["format_version"]  # a checkpoint of an older fedsec: version 1
    torch.save(checkpoint, out / CHECKPOINT_FILE)
    assert load_checkpoint(out).round == 1
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"format_version": 1', '"format_version": 7'))
    assert main(["run", "--resume", str(out)]) == 2
    assert "metrics.jsonl (line 1) has format version 7; this fedsec reads version 1" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------- a run's metrics.jsonl
def test_a_run_writes_the_same_lines_as_before_plus_the_version(tmp_path):
    """The keys, their order and the non-float values of a tiny attacked Multi-Krum run,
    as fedsec wrote them before the round record was a dataclass (commit 966da83);
    its floats to 1e-6 (another CPU family rounds them differently)."""
    out = tmp_path / "run"
    run_cli(
        out,
        tiny_digits(rounds=2, seed=3)
        + [
            "attack.name=pixel-replacement",
            "attack.trigger_size=2",
            "attack.trigger_gap=1",
            "attack.every=1",
            "train.clients_per_round=5",
            "defense.name=multi-krum",
        ],
    )
    lines = (out / "metrics.jsonl").read_text().splitlines()
    before = {  # round 1 of that run, as commit 966da83 wrote it
        "round": 1,
        "main_accuracy": 0.1392757660167131,
        "test_loss": 2.2812392890951427,
        "backdoor_accuracy": 0.0,
        "clients": [1, 2, 3, 4, 5],
        "failed_clients": [],
        "train_loss": 2.1829036130743513,
        "accepted_clients": [1, 2, 3, 5],
        "rejected_clients": [4],
        "scores": {
            "1": 1.5331827226175712,
            "2": 1.0875628565275552,
            "3": 1.1682161220432885,
            "4": 30.137547747599562,
            "5": 3.0938260838241796,
        },
        "malicious_clients": [4],
        "true_positives": 1,
        "false_positives": 0,
        "false_negatives": 0,
        "true_negatives": 4,
    }
    first = json.loads(lines[0])
    # Added since: each client's weight against FedAvg's (Multi-Krum's kept clients share
    # one ratio, sum n over sum n of the kept; the rejected one weighs 0).
    keys = list(before)
    keys.insert(keys.index("scores") + 1, "weight_ratios")
    assert list(first) == [*keys, "time_s", "format_version"]
    ratios = first["weight_ratios"]
    kept = [ratios[c] for c in ("1", "2", "3", "5")]
    assert ratios["4"] == 0.0 and max(kept) - min(kept) < 1e-12 and min(kept) > 1.0
    assert first["format_version"] == 1
    floats = ("main_accuracy", "test_loss", "backdoor_accuracy", "train_loss")
    for key, value in before.items():
        if key in floats:
            assert first[key] == pytest.approx(value, rel=1e-6), key
        elif key == "scores":
            assert first[key] == pytest.approx(value, rel=1e-6)
            assert list(first[key]) == list(value)
        else:
            assert first[key] == value, key
    for line in lines:  # what is read is what was written, byte for byte
        assert json.dumps(RoundRecord.from_dict(json.loads(line)).to_dict()) == line


# ------------------------------------------------------- attacker facts, training spec
def test_attacker_facts_in_the_config_record_and_back():
    facts = AttackerFacts(attacker_index=1, num_attackers=3, round_examples=90, round_clients=5)
    assert facts.to_config() == {
        "attacker-index": 1,
        "num-attackers": 3,
        "round-examples": 90,
        "round-clients": 5,
    }
    assert AttackerFacts.from_config(facts.to_config()) == facts
    assert AttackerFacts.told(facts.to_config()) and not AttackerFacts.told({"server-round": 2})
    shared = AttackerFacts(0, 1, 10, 2, trigger=[0.25, 1.0])
    assert shared.to_config()["attack-trigger"] == [0.25, 1.0]
    assert AttackerFacts.from_config(shared.to_config()) == shared
    # what a server stage adds (ServerStage.facts works on the entries) is kept as it is
    record = {**facts.to_config(), "server-round": 4, "my-stage-fact": 2.5}
    read = AttackerFacts.from_config(record)
    assert read.extra == {"server-round": 4, "my-stage-fact": 2.5} and read.to_config() == record


def test_the_training_spec_of_a_client_in_a_round():
    config = load_config(None, tiny_digits(rounds=3, seed=5) + ["train.lr=0.1"])
    spec = get_task(config).training_spec(3, 2)
    t = config.train
    assert spec == TrainingSpec(
        epochs=1,
        batch_size=t.batch_size,
        lr=0.1 * t.lr_decay**2,  # round 3: two decays
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        seed=derive_seed(5, "client-train", 3, 2),
        device=torch.device("cpu"),
        max_steps=0,
    )
    assert list(spec.to_dict()) == [
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "seed",
        "device",
        "max_steps",
    ]
    assert TrainingSpec.from_dict({**spec.to_dict(), "device": "cpu"}) == spec


def test_no_message_key_is_spelled_out_in_the_apps_server_or_adversary():
    """Every producer and consumer names a key through fedsec_core.protocol."""
    keys = ['"server-round"', '"num-examples"', '"partition-id"', '"num-partitions"']
    keys += ['"arrays"', '"metrics"', '"config"', '"node"', '"attacker-index"']
    keys += ['"attack-trigger"', '"benign-state"', '"evasion-scale"', '"defense-']
    files = ["fedsec/task.py", "fedsec/apps/client_app.py"]
    files += [str(p.relative_to(REPO)) for p in sorted((REPO / "fedsec/server").glob("*.py"))]
    files += ["fedsec/adversary.py", "defenses/adapter.py", "fedsec/engines/inprocess.py"]
    files += ["fedsec/engines/batching.py"]
    for name in files:
        text = Path(REPO / name).read_text(encoding="utf-8")
        assert not [k for k in keys if k in text], name
