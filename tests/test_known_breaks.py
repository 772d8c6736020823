"""experiments/known-breaks/diagnose.py: the measured reason a colluding attack does or
does not break a rule (issue 30 item 2)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from fedsec.cli import main as fedsec_main
from fedsec.config import load_config
from fedsec.results import read_metrics

REPO = Path(__file__).resolve().parents[1]

TINY = """
seed = 3
[data]
name = "digits"
num_clients = 8
min_partition_size = 5
[model]
name = "mlp"
[train]
rounds = 2
clients_per_round = 8
local_epochs = 1
[engine]
client_num_cpus = 1
[defense]
name = "krum"
num_malicious = 2
[attack]
name = "alie"
knowledge = "full"
schedule = "every-round"
num_attackers = 2
attackers_per_round = 2
"""


def load_diagnose():
    """The script as a module (registered: its dataclasses look their module up)."""
    if "known_breaks_diagnose" in sys.modules:
        return sys.modules["known_breaks_diagnose"]
    path = REPO / "experiments" / "known-breaks" / "diagnose.py"
    spec = importlib.util.spec_from_file_location("known_breaks_diagnose", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_deviation_of_a_hand_computed_alie_update():
    """Honest rows (1, 0), (3, 0), (2, 3): mean (2, 1), Bessel sd (1, sqrt 3). The ALIE
    update mean - 0.5 sd lies 0.5 sd away on every coordinate; ||c - mu|| = 0.5 * 2 = 1,
    the honest rms distance to mu is sqrt((2 + 2 + 4) / 3), ||mu|| = sqrt 5, and
    c = (1.5, 1 - sqrt(3) / 2)."""
    d = load_diagnose()
    honest = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    crafted = torch.tensor([1.5, 1 - math.sqrt(3) / 2])
    dev = d.deviation(honest, crafted)
    assert dev.z == pytest.approx(0.5, abs=1e-7)
    assert dev.norm_ratio == pytest.approx(1 / math.sqrt(8 / 3), abs=1e-7)
    assert dev.norm_ratio == pytest.approx(0.5 * math.sqrt(3 / 2), abs=1e-7)
    assert dev.shift == pytest.approx(1 / math.sqrt(5), abs=1e-7)
    c_norm = math.sqrt(1.5**2 + (1 - math.sqrt(3) / 2) ** 2)
    cos = (3 + 1 - math.sqrt(3) / 2) / (c_norm * math.sqrt(5))
    assert dev.cos == pytest.approx(cos, abs=1e-7)
    # an aggregate equal to the honest mean has moved nowhere; none (kept model): NaN
    assert d.aggregate_shift(honest.mean(dim=0), honest.mean(dim=0)) == 0.0
    assert math.isnan(d.aggregate_shift(None, honest.mean(dim=0)))


def test_parse_rule():
    d = load_diagnose()
    assert d.parse_rule("median") == ("median", "median", {})
    assert d.parse_rule("tm=trimmed-mean:beta=0.2") == ("tm", "trimmed-mean", {"beta": 0.2})
    assert d.parse_rule("mk=multi-krum:num_malicious=2,num_selected=3") == (
        "mk",
        "multi-krum",
        {"num_malicious": 2, "num_selected": 3},
    )
    assert d.parse_rule("mm=multi-metrics:variant=reference")[2] == {"variant": "reference"}


def test_diagnosis_replays_the_run_round_by_round(tmp_path, monkeypatch):
    """The re-created rounds are the run's: an in-process ``fedsec run`` of the same
    config (ALIE with full knowledge against Krum, 8 digits clients, all of them in
    every round, 2 attackers) logs the same accuracy and accepted clients each round,
    and the crafted update is the ALIE update of the round's updates."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / ".flwr"))
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY)
    assert fedsec_main(["run", str(config_file), "--out", str(tmp_path / "run")]) == 0
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")

    d = load_diagnose()
    config = load_config(config_file)
    diagnosis = d.Diagnosis(config, [d.parse_rule("median")])
    records = [diagnosis.round(r) for r in (1, 2)]
    for record, run in zip(records, logged, strict=True):
        assert record["main_accuracy"] == run["main_accuracy"]
        assert record["accepted_clients"] == run["accepted_clients"]
        assert record["clients"] == 8 and record["attackers"] == 2
        # z_max = Phi^-1(5 / 8) = 0.3186 from all 8 updates; against the 6 honest ones
        # the crafted update lies about that many of their deviations away
        assert 0.2 < record["z"] < 0.6
        assert record["rules"]["median"]["kept"] is None  # median weighs everyone
        assert record["rules"]["krum"]["kept"] in (0, 1, 2)
    # Krum keeps one model: its aggregate is the crafted update when it keeps an attacker
    for record in records:
        if record["rules"]["krum"]["kept"]:
            assert record["rules"]["krum"]["agg_shift"] == pytest.approx(record["shift"])


def test_a_config_without_a_colluding_attack_is_a_one_line_error(tmp_path, capsys):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY.replace('name = "alie"\nknowledge = "full"', 'name = "gaussian"'))
    d = load_diagnose()
    code = d.main([str(config_file)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a colluding attack" in err[0]
