"""No silent failure: no wait without end, no defense that silently never aggregates, a
run that says what it does."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
import torch

import defenses
from defenses.testing import BiasProbe
from fedsec.cli import _finish_run, main
from fedsec.config import ExperimentConfig
from fedsec.results import read_metrics
from fedsec.server import _progress_line, discover_partitions
from fedsec.sweep import _ROUND_LINE
from fedsec_core.errors import RunError
from fedsec_core.protocol import RoundRecord
from fedsec_core.sampling import AttackSchedule
from tests.runs import REPO, SMALL
from tests.test_failures import run as run_faulty


def write(tmp_path, text: str, name: str = "exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_hang_config_is_rejected_by_check_naming_the_short_round(tmp_path, capsys):
    # 10 clients a round of 10 clients, one of them an attacker who sits out the rounds
    # without an attack: those rounds can hold only 9 (this used to hang forever).
    path = write(tmp_path, SMALL.format(rounds=5, per_round=10) + '[attack]\nname = "sign-flip"\n')
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "round 2 can have only 9 clients, not train.clients_per_round = 10" in err[0]


def test_rounds_of_different_sizes_run_to_the_end(tmp_path):
    # With an honest client excluded, attack rounds hold 9 clients (the attacker and 8
    # honest ones) and the other rounds 8: the strategy must be told each round's size.
    # Before, it waited for 9 nodes in round 2 forever; a subprocess bounds the test.
    text = SMALL.format(rounds=3, per_round=10) + '[attack]\nname = "sign-flip"\nevery = 2\n'
    config = ExperimentConfig.from_dict(tomllib.loads(text))  # not valid without the exclusion
    honest = next(c for c in range(10) if c not in AttackSchedule.for_config(config).pool)
    path = write(
        tmp_path,
        text.replace("local_epochs = 1", f'local_epochs = 1\nexclude_clients = "{honest}"'),
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsec.cli", "run", str(path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rounds = read_metrics(out / "metrics.jsonl")
    assert [len(r["clients"]) for r in rounds] == [9, 8, 9]
    assert [len(r["malicious_clients"]) for r in rounds] == [1, 0, 1]
    assert all(honest not in r["clients"] for r in rounds)


class _GridWithOneNode:
    def get_node_ids(self):
        return [11]


def test_waiting_for_clients_that_never_connect_ends_with_one_clear_error():
    with pytest.raises(RunError) as caught:
        discover_partitions(_GridWithOneNode(), 3, timeout=0.5, progress=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 1
    assert message.startswith("only 1 of 3 clients connected within engine.connect_timeout = 0s")


def test_check_rejects_krum_with_more_tolerated_attackers_than_a_round_holds(tmp_path, capsys):
    path = write(
        tmp_path,
        SMALL.format(rounds=5, per_round=10) + '[defense]\nname = "krum"\nnum_malicious = 30\n',
    )
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fedsec: error: defense 'krum' cannot aggregate round 1: it needs at least 63 "
        "valid clients a round (2 * num_malicious + 3 with num_malicious = 30), but a "
        "round has 10"
    )


def _round(n: int, d: int = 6, seed: int = 0):
    """``n`` client models near a global model of zeros, one row each."""
    generator = torch.Generator().manual_seed(seed)
    models = 0.1 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return models, torch.ones(n, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)


# (defense, parameters, smallest round it can aggregate, words of the limit)
LIMITS = [
    ("krum", {"num_malicious": 2}, 7, "at least 7 valid clients"),
    ("multi-krum", {"num_malicious": 1}, 5, "at least 5 valid clients"),
    ("bulyan", {"num_malicious": 1}, 7, "at least 7 valid clients"),
    ("trimmed-mean", {"beta": 0.2}, 5, "0 values from each end"),
    ("rlr", {"threshold": 4}, 4, "exceeds the 3 clients"),
    ("dnc", {"num_malicious": 2}, 3, "at least 3 valid clients"),
]


@pytest.mark.parametrize("name,params,smallest,words", LIMITS)
def test_each_limited_defense_names_its_limit_and_the_limit_is_real(name, params, smallest, words):
    strategy = defenses.build_defense(name, params)
    rule = strategy.rule
    assert words in rule.round_problem(smallest - 1, 1)
    assert rule.round_problem(smallest, 1) == ""
    at_limit = rule.aggregate(*_round(smallest))
    assert at_limit.model is not None and torch.isfinite(at_limit.model).all()
    if rule.min_clients() > 1:  # below it the rule itself refuses to aggregate
        assert rule.aggregate(*_round(smallest - 1)).model is None


UNLIMITED = [
    "fedavg",
    "centered-clipping",
    "signguard",
    "fldetector",
    "deepsight",
    "median",
    "norm-clipping",
    "weak-dp",
    "crfl",
    "rfa",
    "foolsgold",
    "flame",
    "multi-metrics",
    "fltrust",
]


@pytest.mark.parametrize("name", UNLIMITED)
def test_defenses_without_a_round_limit_aggregate_a_round_of_one(name):
    rule = defenses.build_defense(name, {}, model_probe=BiasProbe()).rule
    assert rule.round_problem(1, 1) == ""
    models, weights, global_model = _round(1)
    root = models[0] - global_model if name == "fltrust" else None
    result = rule.aggregate(models, weights, global_model, [0], root)
    assert result.model is not None and torch.isfinite(result.model).all()


def test_every_defense_is_covered_by_the_limit_tests():
    assert set(defenses.DEFENSES) == {name for name, *_ in LIMITS} | set(UNLIMITED)


def test_a_defense_tolerating_fewer_attackers_than_a_round_has_is_a_warning(tmp_path, capsys):
    text = (
        SMALL.format(rounds=2, per_round=9) + '[attack]\nname = "sign-flip"\n'
        'num_attackers = 3\nattackers_per_round = 3\nschedule = "every-round"\n'
        '[defense]\nname = "krum"\n'
    )
    assert main(["run", str(write(tmp_path, text)), "--check"]) == 0
    captured = capsys.readouterr()
    assert (
        "fedsec: warning: krum is set to tolerate num_malicious = 1 attackers a round, but "
        "some rounds have 3"
    ) in captured.err
    assert "attack: sign-flip by clients" in captured.out and "in rounds 1, 2" in captured.out


def test_a_run_whose_every_round_kept_the_model_fails_with_the_reason(tmp_path):
    # Partitions 1 and 2 always fail and partition 3 is late in round 2, so 3 then 2
    # valid replies: fewer than 4 in every round.
    out = tmp_path / "run"
    rounds = run_faulty("inprocess", out, "train.min_replies=4")
    assert all(r["kept_previous_model"] for r in rounds)
    with pytest.raises(RunError) as caught:
        _finish_run(out)
    assert caught.value.exit_code == 1
    assert str(caught.value).startswith(
        "every one of the 2 rounds kept the previous global model (round 1: 3 valid replies, "
        "fewer than train.min_replies = 4)"
    )


def test_a_run_that_kept_the_model_in_some_rounds_says_how_many(tmp_path, capsys):
    out = tmp_path / "run"
    rounds = run_faulty("inprocess", out, "train.min_replies=3")  # round 2: 2 valid replies
    assert [bool(r.get("kept_previous_model")) for r in rounds] == [False, True]
    assert json.loads((out / "summary.json").read_text())["kept_previous_model_rounds"] == 1
    assert _finish_run(out) == 0
    assert "kept the previous model in 1 round(s)" in capsys.readouterr().out


def test_a_run_says_what_it_does_and_ends_with_a_summary_line(tmp_path, capsys):
    text = (
        SMALL.format(rounds=3, per_round=9) + '[attack]\nname = "sign-flip"\nevery = 2\n'
        '[defense]\nname = "multi-krum"\n'
    )
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text)), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith("fedsec: attack: sign-flip by client ")
        and line.endswith("every 2 round(s) from round 1 (fixed-frequency): in rounds 1, 3")
        for line in lines
    )
    round_lines = [line for line in lines if line.startswith("round ")]
    assert len(round_lines) == 3 and all("accepted 8/9" in line for line in round_lines)
    assert "attackers [" in round_lines[0] and "attackers [" not in round_lines[1]
    assert lines[-1].startswith("fedsec: done: 3 rounds; main accuracy ")
    assert lines[-1].endswith(f"files in {out}")


def test_the_sweep_progress_reads_the_round_lines_runs_print():
    record = RoundRecord(7, main_accuracy=0.5, failed_clients=[], time_s=1.0)
    assert _ROUND_LINE.match(_progress_line(record, 20)).group(1) == "7"
    assert _ROUND_LINE.match(_progress_line(record, 200)).group(1) == "7"


def test_a_mistyped_subcommand_gives_one_line_with_one_prefix(capsys):
    assert main(["rn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsec: error: argument command: invalid choice")
