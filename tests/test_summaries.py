"""What the CLI says a run did: the showcase verdict over the attack window, a
fixed-quota defense's precision explained, the curves' panel title, partition's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defenses.rules import MultiMetricsRule
from fedsec.cli import main, partition_default_path, summary_line, verdict_clause
from fedsec.report.plot import _panel_title
from fedsec.results import attack_window, precision_bound
from fedsec_core.protocol import RoundRecord

# FedAvg's BA in the showcase swung between 7% and 97% every other round and the last
# round read 37%: the old verdict called that "partly got through (final 36.7%)".
SWINGING = [0.07, 0.97, 0.07, 0.97, 0.07, 0.37]


def rounds_with(ba, attacked_from=1, **extra):
    return [
        RoundRecord(
            i + 1,
            main_accuracy=0.9,
            backdoor_accuracy=v,
            malicious_clients=[4] if i + 1 >= attacked_from else [],
            **extra,
        )
        for i, v in enumerate(ba)
    ]


def test_a_swinging_backdoor_is_reported_with_its_mean_max_and_swing():
    rounds = rounds_with(SWINGING)
    window = attack_window(rounds)
    # by hand: (3 * 0.07 + 2 * 0.97 + 0.37) / 6 = 2.52 / 6
    assert window["mean"] == pytest.approx(0.42)
    assert (window["max"], window["min"], window["final"]) == (0.97, 0.07, 0.37)
    assert (window["first_round"], window["last_round"], window["rounds"]) == (1, 6, 6)
    clause = verdict_clause("fedavg", {"final_main_accuracy": 0.951}, rounds)
    assert clause == (
        "partly got through fedavg (backdoor accuracy over the attack rounds 1-6: mean "
        "42.0%, max 97.0%, swinging between 7.0% and 97.0%; final 37.0%; main accuracy 95.1%)"
    )


def test_the_window_starts_at_the_first_attack_round():
    # rounds 1-2 without an attacker (BA 0 there is no evidence of a defense) are left out
    rounds = rounds_with([0.0, 0.0, 0.6, 0.8, 0.7], attacked_from=3)
    window = attack_window(rounds)
    assert (window["first_round"], window["rounds"]) == (3, 3)
    assert window["mean"] == pytest.approx(0.7) and window["min"] == 0.6
    clause = verdict_clause("fedavg", {"final_main_accuracy": 0.9}, rounds)
    assert clause.startswith("got through fedavg (backdoor accuracy over the attack rounds 3-5: ")
    assert "swinging" not in clause  # 0.6 to 0.8 is no swing


def test_a_backdoor_that_never_reaches_20_percent_was_stopped():
    clause = verdict_clause(
        "multi-metrics", {"final_main_accuracy": 0.9}, rounds_with([0.0, 0.1, 0.19])
    )
    assert clause.startswith("was stopped by multi-metrics (")
    assert verdict_clause("fedavg", {"final_main_accuracy": 0.9}, rounds_with([None])) == (
        "ran against fedavg (main accuracy 90.0%)"
    )


def judged_round(number, malicious, rejected, clients=10):
    return RoundRecord(
        number,
        malicious_clients=malicious,
        rejected_clients=rejected,
        accepted_clients=[c for c in range(clients) if c not in rejected],
    )


def test_a_fixed_quota_precision_is_explained_with_its_bound():
    quota = MultiMetricsRule().selection_quota(10)  # keeps 3 of 10: rejects 7 a round
    rounds = [
        judged_round(1, [4], [0, 1, 2, 3, 4, 5, 6]),  # 1 attacker, caught
        judged_round(2, [4, 8], [0, 1, 2, 3, 4, 5, 6]),  # 2 attackers, one caught
        judged_round(3, [], [0, 1, 2, 3, 5, 6, 7]),  # no attacker: 7 false positives
    ]
    bound = precision_bound(rounds)
    # by hand: at most 1 + 2 + 0 right of 21 rejections
    assert bound == {"bound": 3 / 21, "rejected": 21, "attackers": 3, "right_at_most": 3}
    summary = {
        "rounds": 3,
        "detection": {
            "precision": 2 / 21,
            "recall": 2 / 3,
            "selection_quota": quota,
        },
    }
    line = summary_line(summary, Path("runs/x"), rounds)
    assert (
        "detection precision 0.10 (at most 0.14 here: the defense keeps the 3 of the 10 "
        "clients of each round with the lowest scores (keep_fraction = 0.3) by design, so "
        "of its 21 rejections at most 3 could be the 3 attackers it judged), recall 0.67"
    ) in line
    # a defense that judges each client on its own has no quota and no such note
    del summary["detection"]["selection_quota"]
    assert "detection precision 0.10, recall 0.67;" in summary_line(summary, Path("x"), rounds)


def test_the_panel_without_a_column_axis_is_titled_by_its_attack(tmp_path):
    runs = []
    for name in ("fedavg", "multi-metrics"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {"attack": {"name": "edge-case-pgd-replacement", "edge_case": "tail"}}
        (run_dir / "summary.json").write_text(json.dumps({"config": config}))
        runs.append({"id": name, "dir": str(run_dir)})
    report = {"runs": runs}
    s = {"groups": [{"col": "all", "runs": ["fedavg"]}, {"col": "all", "runs": ["multi-metrics"]}]}
    assert _panel_title(report, s, "all") == "attack: edge-case-pgd-replacement (tail)"
    config = {"attack": {"name": "none"}}
    (tmp_path / "fedavg" / "summary.json").write_text(json.dumps({"config": config}))
    assert _panel_title(report, s, "all") == (
        "attacks: no attack, edge-case-pgd-replacement (tail)"
    )


def test_partition_writes_under_runs_by_default(tmp_path, monkeypatch, capsys):
    assert partition_default_path(None) == Path("runs/partition-default.png")
    assert partition_default_path("exp/my.toml") == Path("runs/partition-my.png")
    monkeypatch.chdir(tmp_path)
    overrides = ["data.name=digits", "data.num_clients=5", "train.clients_per_round=2"]
    argv = ["partition"] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 0
    assert "fedsec: wrote runs/partition-default.png" in capsys.readouterr().out
    written = tmp_path / "runs" / "partition-default.png"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "partition.png").exists()


@pytest.mark.parametrize("fraction_evaluate, evaluations", [(None, 3), (0.0, 0)])
def test_the_readme_own_app_example_asks_for_no_evaluation(
    server_identity, fraction_evaluate, evaluations
):
    """README.md's own-ServerApp example: with fraction_evaluate=0.0 a fedsec defense
    sends no evaluate message, which a ClientApp without an evaluate handler could only
    answer with an error ("No evaluate function registered"); Flower's default sends one
    to every node."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from defenses import build_defense
    from fedsec.engines.inprocess import InProcessGrid

    client = ClientApp()

    @client.train()
    def train(msg, context):
        arrays = msg.content["arrays"]
        return Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 5})}),
            reply_to=msg,
        )

    grid = InProcessGrid(client, num_nodes=3, run_config={})
    sent = []
    push = grid.push_messages

    def recording_push(messages):
        messages = list(messages)
        sent.extend(m.metadata.message_type for m in messages)
        return push(messages)

    grid.push_messages = recording_push
    extra = {} if fraction_evaluate is None else {"fraction_evaluate": fraction_evaluate}
    strategy = build_defense("multi-metrics", {"keep_fraction": 0.3}, **extra)
    strategy.min_available_nodes = strategy.min_train_nodes = 3
    initial = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    assert sent.count("train") == 3
    assert sent.count("evaluate") == evaluations
