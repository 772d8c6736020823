"""experiments/known-breaks/diagnose.py: the measured reason a colluding attack does or
does not break a rule (issue 30 item 2)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from attacks.crafted import position
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


def test_position_of_a_hand_computed_alie_update():
    """Honest rows (1, 0), (3, 0), (2, 3): mean (2, 1), Bessel sd (1, sqrt 3). The ALIE
    update mean - 0.5 sd lies 0.5 sd away on every coordinate; ||c - mu|| = 0.5 * 2 = 1,
    the honest rms distance to mu is sqrt((2 + 2 + 4) / 3), ||mu|| = sqrt 5, and
    c = (1.5, 1 - sqrt(3) / 2)."""
    d = load_diagnose()
    honest = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    crafted = torch.tensor([1.5, 1 - math.sqrt(3) / 2])
    dev = position(honest, crafted)  # attacks.crafted, what the crafting stage logs
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


def load_script(name: str):
    """Another script of the study folder as a module."""
    key = f"known_breaks_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(
        key, REPO / "experiments" / "known-breaks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def test_authors_logs_reads_the_last_logged_line_of_each_cell():
    """A notebook cell in the NDSS'21 release's format: the settings are the last
    assignments, the numbers those of the last log line."""
    logs = load_script("authors_logs")
    line = (
        "median: at min-max n_at 10 | e {e} fed_model val loss 2.3 val acc {v} "
        "best val_acc {b} te_acc {t}\n"
    )
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["# text"]},
            {
                "cell_type": "code",
                "source": ["aggregation='median'\n", "at_type='min-max'\n", "n_attackers=[10]\n"],
                "outputs": [
                    {"text": [line.format(e=10, v=20.5, b=20.5, t=21.0)]},
                    {"text": [line.format(e=1200, v=9.6388, b=28.226461, t=27.232143)]},
                ],
            },
            {"cell_type": "code", "source": ["x = 1\n"], "outputs": []},
        ]
    }
    (cell,) = logs.cells(notebook)
    assert cell["cell"] == 1 and cell["aggregation"] == "'median'"
    assert cell["at_type"] == "'min-max'" and cell["n_attackers"] == "[10]"
    assert (cell["round"], cell["val_acc"], cell["best_val_acc"]) == (1200, 9.6388, 28.226461)
    assert cell["te_acc_at_best"] == 27.232143


def test_pilot_pairs_each_attack_with_its_no_attack_cell(tmp_path, capsys):
    """Final MA 90 / 80 without the attack and 50 / 60 with it: 40 and 20 points lost,
    mean 30; a cell without its baseline is left out."""
    import json

    pilot = load_script("pilot")
    finals = {
        ("none", 0): 0.9,
        ("none", 1): 0.8,
        ("min-max-full", 0): 0.5,
        ("min-max-full", 1): 0.6,
    }
    runs = []
    for (attack, seed), ma in finals.items():
        run = f"regime=ndss/defense=median/attack={attack}/seed={seed}"
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "summary.json").write_text(json.dumps({"final_main_accuracy": ma}))
        labels = {"regime": "ndss", "defense": "median", "attack": attack, "seed": str(seed)}
        runs.append({"id": run, "dir": run, "labels": labels})
    orphan = {"regime": "ndss", "defense": "krum-f10", "attack": "gaussian", "seed": "0"}
    runs.append({"id": "x", "dir": "x", "labels": orphan})  # unfinished, no baseline
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    record = tmp_path / "pilot.json"
    assert pilot.main([str(tmp_path), "--json", str(record)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| ndss" in line]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == ["ndss", "median", "min-max-full", "0, 1"]
    # mean 30, sd 10 sqrt(2), so 30 -+ t(0.975, 1) x 10 = 30 -+ 127.06
    assert cells[4:8] == ["50.0, 60.0", "90.0, 80.0", "40.0, 20.0", "30.0 [-97.1, 157.1]"]
    (cell,) = json.loads(record.read_text())["cells"]  # the same numbers, unrounded
    assert cell["ma_lost"] == pytest.approx([40.0, 20.0]) and cell["sd_source"] == "cell"
    assert cell["mean_ma_lost"] == pytest.approx(30.0)
    assert cell["ma_lost_ci"] == pytest.approx([30 - 127.06204736174703, 30 + 127.06204736174703])
    # --last 2: the mean MA of each run's last two rounds (a dip in the last round of the
    # no-attack seed 0, 0.9 after 0.7, reads 0.8)
    for (attack, seed), ma in finals.items():
        run = tmp_path / f"regime=ndss/defense=median/attack={attack}/seed={seed}"
        lines = [{"round": 1, "main_accuracy": 0.1}, {"round": 2, "main_accuracy": ma - 0.2}]
        lines.append({"round": 3, "main_accuracy": ma})
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert pilot.main([str(tmp_path), "--last", "2", "--json", str(record)]) == 0
    (cell,) = json.loads(record.read_text())["cells"]
    assert cell["no_attack_ma"] == pytest.approx([80.0, 70.0])
    assert cell["final_ma"] == pytest.approx([40.0, 50.0])
    # --best: the papers' end point, the best MA of any round (the no-attack runs peak 5
    # points above their final MA in round 2; the attacked ones end at their best)
    for (attack, seed), ma in finals.items():
        run = tmp_path / f"regime=ndss/defense=median/attack={attack}/seed={seed}"
        peak = ma + 0.05 if attack == "none" else ma - 0.2
        lines = [{"round": 1, "main_accuracy": 0.1}, {"round": 2, "main_accuracy": peak}]
        lines.append({"round": 3, "main_accuracy": ma})
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert pilot.main([str(tmp_path), "--best", "--json", str(record)]) == 0
    (cell,) = json.loads(record.read_text())["cells"]
    assert cell["no_attack_ma"] == pytest.approx([95.0, 85.0])
    assert cell["ma_lost"] == pytest.approx([45.0, 25.0])
    with pytest.raises(SystemExit):
        pilot.main([str(tmp_path), "--best", "--last", "2"])


def test_pilot_pairs_with_the_baseline_label_it_is_given(tmp_path, capsys):
    """A sweep whose no-attack cells are labelled `none-300` (mnist.toml): no pair under
    the default label, the pair under ``--baseline none-300``."""
    import json

    pilot = load_script("pilot")
    for attack, ma in (("none-300", 0.9), ("min-max", 0.6)):
        run = tmp_path / f"regime=r/defense=d/attack={attack}/seed=0"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"final_main_accuracy": ma}))
    runs = [
        {
            "dir": f"regime=r/defense=d/attack={a}/seed=0",
            "labels": {"regime": "r", "defense": "d", "attack": a, "seed": "0"},
        }
        for a in ("none-300", "min-max")
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    record = tmp_path / "pilot.json"
    assert pilot.main([str(tmp_path), "--json", str(record)]) == 0
    assert json.loads(record.read_text())["cells"] == []
    assert pilot.main([str(tmp_path), "--baseline", "none-300", "--json", str(record)]) == 0
    (cell,) = json.loads(record.read_text())["cells"]
    assert cell["attack"] == "min-max" and cell["ma_lost"] == pytest.approx([30.0])


def test_pilot_plans_at_the_holm_level_of_the_sweeps_own_cells(tmp_path):
    """The family is the grid's attack cells in sweep.json, finished or not (two here:
    min-max and alie on one defense; the baseline and a second seed are not cells), so
    the strictest level is 0.05 / 2; ``--cells 143`` plans in another family."""
    import json

    pilot = load_script("pilot")
    runs = []
    for attack in ("none", "min-max", "alie"):
        for seed in (0, 1):
            run = f"regime=r/defense=d/attack={attack}/seed={seed}"
            labels = {"regime": "r", "defense": "d", "attack": attack, "seed": str(seed)}
            runs.append({"id": run, "dir": run, "labels": labels})
    for attack, ma in (("none", 0.9), ("min-max", 0.6)):
        (tmp_path / f"regime=r/defense=d/attack={attack}/seed=0").mkdir(parents=True)
        summary = tmp_path / f"regime=r/defense=d/attack={attack}/seed=0/summary.json"
        summary.write_text(json.dumps({"final_main_accuracy": ma}))
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    record = tmp_path / "pilot.json"
    assert pilot.main([str(tmp_path), "--json", str(record)]) == 0
    out = json.loads(record.read_text())
    assert (out["attack_cells"], out["holm_level"]) == (2, 0.025)
    assert pilot.main([str(tmp_path), "--cells", "143", "--json", str(record)]) == 0
    out = json.loads(record.read_text())
    assert (out["attack_cells"], out["holm_level"]) == (143, 0.05 / 143)
    with pytest.raises(SystemExit):
        pilot.main([str(tmp_path), "--cells", "0"])


def test_pilot_versus_pairs_two_defenses_losses_seed_by_seed(tmp_path):
    """Defense a loses 30 and 20 points (seeds 0, 1), b loses 10 and 10, so a minus b is
    20 and 10: mean 15, t interval 15 -+ 12.706 x 5 (sd 5 sqrt(2), n 2). A malformed
    pair is a usage error."""
    import json

    pilot = load_script("pilot")
    finals = {("a", "none"): (0.9, 0.8), ("a", "mm"): (0.6, 0.6)}
    finals |= {("b", "none"): (0.9, 0.9), ("b", "mm"): (0.8, 0.8)}
    runs = []
    for (defense, attack), per_seed in finals.items():
        for seed, ma in enumerate(per_seed):
            run = f"regime=r/defense={defense}/attack={attack}/seed={seed}"
            (tmp_path / run).mkdir(parents=True)
            (tmp_path / run / "summary.json").write_text(json.dumps({"final_main_accuracy": ma}))
            labels = {"regime": "r", "defense": defense, "attack": attack, "seed": str(seed)}
            runs.append({"id": run, "dir": run, "labels": labels})
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    record = tmp_path / "pilot.json"
    assert pilot.main([str(tmp_path), "--versus", "a=b", "--json", str(record)]) == 0
    (pair,) = json.loads(record.read_text())["versus"]
    assert (pair["regime"], pair["attack"], pair["defense"], pair["versus"]) == (
        "r",
        "mm",
        "a",
        "b",
    )
    assert pair["seeds"] == [0, 1] and pair["difference"] == pytest.approx([20.0, 10.0])
    assert pair["mean_difference"] == pytest.approx(15.0)
    half = 12.706204736174703 * 5.0
    assert pair["difference_ci"] == pytest.approx([15.0 - half, 15.0 + half])
    with pytest.raises(SystemExit):
        pilot.main([str(tmp_path), "--versus", "a"])


def test_position_summarises_each_run_from_its_metrics(tmp_path, capsys):
    """Three rounds, their keys in metrics.jsonl's order: no crafting in round 1; in
    round 2 the rule keeps attacker 0 (ratio 1.2), in round 3 it keeps neither (ratio
    1.8). The best MA, 0.8, is first reached in round 2. A run's labels come from its
    folder, whatever sweep.json lists."""
    import json

    position_script = load_script("position")
    run = tmp_path / "regime=r/defense=krum/attack=alie/seed=4"
    run.mkdir(parents=True)

    def crafted_round(number, accepted, z, ratio, cos):
        return {
            "round": number,
            "main_accuracy": 0.8,
            "crafted_clients": [0, 1],
            "crafted_z": z,
            "crafted_norm_ratio": ratio,
            "crafted_cos": cos,
            "accepted_clients": accepted,
            "malicious_clients": [0, 1],
        }

    lines = [
        {"round": 1, "main_accuracy": 0.5, "accepted_clients": [0, 2, 3]},
        crafted_round(2, [0, 2], 0.5, 1.2, 0.25),
        crafted_round(3, [2, 3], 1.5, 1.8, 0.75),
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "summary.json").write_text("{}")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": []}))
    record = tmp_path / "position.json"
    assert position_script.main([str(tmp_path), "--json", str(record)]) == 0
    (rec,) = json.loads(record.read_text())["runs"]
    assert (rec["regime"], rec["defense"], rec["attack"], rec["seed"]) == ("r", "krum", "alie", "4")
    assert rec["crafted_rounds"] == 2 and rec["kept_share"] == 0.5
    assert rec["crafted_z"] == pytest.approx(1.0) and rec["crafted_cos"] == pytest.approx(0.5)
    assert rec["crafted_norm_ratio"] == pytest.approx(1.5)
    assert (rec["norm_ratio_kept"], rec["norm_ratio_not_kept"]) == (1.2, 1.8)
    assert (rec["best_ma"], rec["best_round"], rec["final_ma"], rec["rounds"]) == (80.0, 2, 80.0, 3)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| r |")]
    assert row == [
        "| r | krum | alie | 4 | 1.000 | 1.500 | 0.500 | 50% | 1.200 / 1.800 | 80.00 (2) | 80.00 |"
    ]


def test_position_reads_a_run_that_logged_no_main_accuracy(tmp_path, capsys):
    """A finished run without MA in any round (no test set evaluated): its MA fields are
    empty, "-" in the table, and the other runs are summarised as before."""
    import json

    position_script = load_script("position")
    run = tmp_path / "regime=r/defense=krum/attack=none/seed=0"
    run.mkdir(parents=True)
    lines = [{"round": 1, "accepted_clients": [0, 1]}, {"round": 2, "accepted_clients": [1]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "summary.json").write_text("{}")
    record = tmp_path / "position.json"
    assert position_script.main([str(tmp_path), "--json", str(record)]) == 0
    (rec,) = json.loads(record.read_text())["runs"]
    assert (rec["best_ma"], rec["best_round"], rec["final_ma"], rec["rounds"]) == (
        None,
        None,
        None,
        2,
    )
    assert rec["crafted_rounds"] == 0 and rec["kept_share"] is None
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| r |")]
    assert row == ["| r | krum | none | 0 | - | - | - | - | - / - | - (-) | - |"]
