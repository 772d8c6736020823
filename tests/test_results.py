"""Run directories: per-round lines flushed as they end, torn last line tolerated; the
summary's detection AUROC and selection quota."""

import json

import pytest

import defenses
from fedsec.config import ExperimentConfig
from fedsec.results import (
    RunWriter,
    attacker_acceptance,
    attacker_weight,
    detection_auroc,
    read_metrics,
    summarize_rounds,
)
from fedsec_core.protocol import RoundRecord


def test_writer_appends_rounds_and_summarizes(tmp_path):
    writer = RunWriter(tmp_path / "run", ExperimentConfig())
    for r, acc in enumerate([0.5, 0.9, 0.8], start=1):
        writer.log_round(RoundRecord(r, main_accuracy=acc))
        assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == r  # on disk now
    summary = writer.finish({})
    assert summary["final_main_accuracy"] == 0.8 and summary["best_main_accuracy"] == 0.9
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["seed"] == 0 and "torch" in on_disk["versions"]
    assert on_disk["config"]["data"]["name"] == "mnist5k"
    assert (tmp_path / "run" / "config.toml").read_text().startswith("seed = 0")


def test_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "main_acc')
    assert [r["round"] for r in read_metrics(path)] == [1, 2]


# ------------------------------------------------------------------ detection AUROC
def _records(rounds):
    return [RoundRecord.from_dict(r) for r in rounds]


def _round(scores, malicious, **extra):
    """A round's record as metrics.jsonl holds it: scores keyed by partition id as strings."""
    return {
        "round": 1,
        "scores": {str(c): s for c, s in scores.items()},
        "malicious_clients": malicious,
        **extra,
    }


@pytest.mark.parametrize(
    "scores, malicious, expected",
    [
        ({0: 0.1, 1: 0.2, 2: 5.0}, [2], 1.0),  # the attacker scores highest: perfect separation
        ({0: 0.1, 1: 0.2, 2: 5.0}, [0], 0.0),  # the attacker scores lowest: reversed
        ({0: 1.0, 1: 1.0, 2: 1.0}, [2], 0.5),  # all tied: each pair counts 1/2
        ({0: 1.0, 1: 2.0, 2: 2.0}, [2], 0.75),  # above client 0 (1), tied with client 1 (1/2)
        ({0: 1.0, 1: 3.0, 2: 0.5, 3: 4.0}, [1, 2], 0.25),  # 3 > 1 only, of the 4 pairs
    ],
)
def test_auroc_of_one_round(scores, malicious, expected):
    det = summarize_rounds(_records([_round(scores, malicious)]))["detection"]
    assert det["auroc"] == pytest.approx(expected) and det["auroc_rounds"] == 1


def test_auroc_orients_a_trust_score():
    """FLTrust / FoolsGold score a trust: the attacker with the lowest trust is found."""
    trust = [_round({0: 0.9, 1: 0.8, 2: 0.0}, [2])]
    assert (
        summarize_rounds(_records(trust), higher_score_is_suspicious=False)["detection"]["auroc"]
        == 1.0
    )
    assert (
        summarize_rounds(_records(trust), higher_score_is_suspicious=True)["detection"]["auroc"]
        == 0.0
    )


def test_auroc_averages_rounds_without_pooling_and_skips_rounds_it_cannot_judge():
    rounds = [
        _round({0: 0.1, 1: 0.2, 2: 0.3}, [2]),  # AUROC 1
        _round({0: 10.0, 1: 20.0, 2: 30.0}, [2]),  # AUROC 1 (pooled with round 1: 0.75)
        _round({0: 1.0, 1: 1.0, 2: 1.0}, [0]),  # AUROC 0.5
        _round({0: 5.0, 1: 1.0}, []),  # no attacker: left out
        _round({3: 5.0, 4: 1.0}, [3, 4]),  # only attackers scored: left out
        _round({0: 5.0, 1: 1.0}, [7]),  # the attacker was not scored: left out
        {"round": 1, "scores": {"0": 1.0, "1": 2.0}},  # no ground truth (no attack): left out
        {"round": 1, "malicious_clients": [1], "accepted_clients": [0], "rejected_clients": [1]},
    ]
    det = summarize_rounds(_records(rounds))["detection"]
    assert det["auroc"] == pytest.approx(2.5 / 3) and det["auroc_rounds"] == 3


def test_no_auroc_without_scores():
    rounds = [
        {
            "round": 1,
            "true_positives": 1,
            "false_positives": 0,
            "false_negatives": 0,
            "true_negatives": 9,
            "malicious_clients": [3],
        }
    ]
    det = summarize_rounds(_records(rounds))["detection"]
    assert det["precision"] == 1.0 and "auroc" not in det and "auroc_rounds" not in det
    assert detection_auroc(_records(rounds)) == (None, 0)
    assert "detection" not in summarize_rounds(_records([{"round": 1, "main_accuracy": 0.5}]))


def test_summary_json_has_the_auroc_and_the_rule_quota(tmp_path):
    config = ExperimentConfig.from_dict(
        {"data": {"num_clients": 20}, "train": {"clients_per_round": 10}}
    )
    counts = {"true_positives": 1, "false_positives": 6, "false_negatives": 0, "true_negatives": 3}
    rounds = [
        {
            "round": 1,
            "main_accuracy": 0.5,
            **counts,
            **_round({c: float(c) for c in range(10)}, [0]),
        },  # the attacker least suspicious
        {
            "round": 2,
            "main_accuracy": 0.6,
            **counts,
            **_round({c: float(c) for c in range(10)}, [9]),
        },
    ]  # ... most suspicious
    for name, auroc in (("multi-metrics", 0.5), ("foolsgold", 0.5)):
        writer = RunWriter(tmp_path / name, config)
        for r in rounds:
            writer.log_round(RoundRecord.from_dict(r))
        writer.finish({}, rule=defenses.build_defense(name, {}, seed=0).rule)
        det = json.loads((tmp_path / name / "summary.json").read_text())["detection"]
        assert det["auroc"] == auroc and det["auroc_rounds"] == 2
    mm = json.loads((tmp_path / "multi-metrics" / "summary.json").read_text())["detection"]
    assert mm["selection_quota"] == (
        "keeps the 3 of the 10 clients of each round with the lowest "
        "scores (keep_fraction = 0.3) by design"
    )
    assert mm["precision"] == pytest.approx(1 / 7)
    assert (
        "selection_quota"
        not in json.loads((tmp_path / "foolsgold" / "summary.json").read_text())["detection"]
    )
    # orientation through finish: one round, attacker 0 with the lowest score
    for name, auroc in (("multi-metrics", 0.0), ("foolsgold", 1.0)):
        writer = RunWriter(tmp_path / f"{name}-1", config)
        writer.log_round(RoundRecord.from_dict(rounds[0]))
        summary = writer.finish({}, rule=defenses.build_defense(name, {}, seed=0).rule)
        assert summary["detection"]["auroc"] == auroc


def test_attacker_acceptance_counts_attack_rounds_that_kept_an_attacker():
    rounds = [
        {"round": 1, "malicious_clients": [3], "accepted_clients": [1, 3]},  # kept
        {"round": 2, "malicious_clients": [], "accepted_clients": [1, 2]},  # no attacker
        {"round": 3, "malicious_clients": [3, 4], "accepted_clients": [1, 2]},  # both out
        {"round": 4, "malicious_clients": [3, 4], "accepted_clients": [4]},  # one of two kept
        {
            "round": 5,
            "malicious_clients": [3],
            "accepted_clients": [3],
            "kept_previous_model": True,
        },
        {"round": 6, "malicious_clients": [3]},  # no aggregation logged
    ]
    assert attacker_acceptance(_records(rounds)) == {
        "attack_rounds": 3,
        "accepted_rounds": 2,
        "rate": 2 / 3,
    }
    assert attacker_acceptance(_records(rounds[1:2])) is None


def test_attacker_weight_averages_the_kept_attackers_ratios():
    rounds = [
        # kept 3 of 10: the attacker weighs 10/3 of FedAvg's weight
        {"round": 1, "malicious_clients": [3], "weight_ratios": {"1": 10 / 3, "3": 10 / 3}},
        # the attacker left out (ratio 0) counts nowhere; no attacker: not an attack round
        {"round": 2, "malicious_clients": [3], "weight_ratios": {"1": 2.0, "3": 0.0}},
        {"round": 3, "malicious_clients": [], "weight_ratios": {"1": 5.0}},
        # two attackers kept, one of them by a rule that halved it (clipping)
        {"round": 4, "malicious_clients": [3, 4], "weight_ratios": {"3": 2.0, "4": 0.5}},
        # a round that kept the previous model aggregated nothing
        {
            "round": 5,
            "malicious_clients": [3],
            "weight_ratios": {"3": 9.0},
            "kept_previous_model": True,
        },
    ]
    weight = attacker_weight(_records(rounds))
    assert weight["kept"] == 3 and weight["max"] == 10 / 3
    assert weight["mean"] == pytest.approx((10 / 3 + 2.0 + 0.5) / 3, rel=1e-15)
    assert attacker_weight(_records(rounds[1:3])) is None  # never kept
    assert attacker_weight(_records([{"round": 1, "malicious_clients": [3]}])) is None


def test_summary_has_the_acceptance_only_for_rules_that_select_clients(tmp_path):
    config = ExperimentConfig.from_dict(
        {"data": {"num_clients": 20}, "train": {"clients_per_round": 10}}
    )
    rounds = [
        {
            "round": 1,
            "main_accuracy": 0.5,
            "malicious_clients": [0],
            "accepted_clients": [0, 1],
            "rejected_clients": [2],
        }
    ]
    for name, selects in (("multi-krum", True), ("fedavg", False), ("rfa", False), ("flame", True)):
        assert defenses.build_defense(name, {}, seed=0).rule.selects_clients is selects
        writer = RunWriter(tmp_path / name, config)
        writer.log_round(RoundRecord.from_dict(rounds[0]))
        summary = writer.finish({}, rule=defenses.build_defense(name, {}, seed=0).rule)
        assert ("attacker_acceptance" in summary) is selects
    assert summary["attacker_acceptance"]["rate"] == 1.0


def test_a_run_records_its_commit_and_initial_model(tmp_path):
    import subprocess
    from pathlib import Path

    import torch

    from fedsec.config import load_config
    from fedsec.pretrain import initial_state
    from fedsec.results import state_digest
    from fedsec.task import get_task
    from tests.runs import run_cli, tiny_digits

    out = tmp_path / "run"
    run_cli(out, tiny_digits(rounds=1, seed=3))
    provenance = json.loads((out / "summary.json").read_text())["provenance"]
    config = load_config(out / "config.toml")
    assert provenance["initial_model"] == state_digest(initial_state(get_task(config)))
    assert provenance["kernels"] == [f"cpu:{torch.backends.cpu.get_cpu_capability()}"]
    (commit,) = provenance["commits"]
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # a git checkout, as in CI: the commit it ran at
        assert commit["commit"] == head.stdout.strip()
    else:
        assert commit is None
