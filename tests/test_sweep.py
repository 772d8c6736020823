"""``fedsec sweep``: the grid it builds, runs that equal standalone runs, resuming after
a SIGKILL without redoing finished runs, and one-line errors before anything runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedsec.cli import main
from fedsec.results import read_metrics
from fedsec.sweep import load_sweep
from fedsec_core.errors import ConfigError
from tests.runs import rounds_without_time, sigkill_when

BASE = """
seed = 0
[data]
name = "digits"
num_clients = 4
[model]
name = "mlp"
[train]
rounds = {rounds}
clients_per_round = 3
local_epochs = 1
[engine]
client_num_cpus = 1
"""


def write_sweep(tmp_path: Path, body: str, rounds: int = 2) -> Path:
    (tmp_path / "base.toml").write_text(BASE.format(rounds=rounds))
    path = tmp_path / "grid.toml"
    path.write_text('name = "grid"\nbase = "base.toml"\n' + body)
    return path


GRID = """
order = ["defense", "seed"]
[axes]
seed = [0, 1]
[axes.defense]
fedavg = { "defense.name" = "fedavg" }
krum = { defense = { name = "krum", num_malicious = 0 } }
"""


def command_lines(run_dir: Path) -> list[str]:
    return [
        line for line in (run_dir / "run.log").read_text().splitlines() if line.startswith("$ ")
    ]


def test_the_grid_crosses_every_axis_in_the_given_order(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, GRID), tmp_path / "out")
    assert sweep.axes == {"defense": ["fedavg", "krum"], "seed": ["0", "1"]}
    assert [r.id for r in sweep.runs] == [
        "defense=fedavg/seed=0",
        "defense=fedavg/seed=1",
        "defense=krum/seed=0",
        "defense=krum/seed=1",
    ]
    krum = sweep.runs[3]
    assert krum.dir == tmp_path / "out" / "defense=krum" / "seed=1"
    assert (krum.config.seed, krum.config.defense.name) == (1, "krum")
    assert krum.config.defense.params == {"num_malicious": 0}
    assert krum.config.data.name == "digits" and krum.config.train.rounds == 2


def test_an_option_that_changes_the_attack_drops_the_base_attacks_parameters(tmp_path):
    path = write_sweep(
        tmp_path,
        """
[axes.attack]
flip = { "attack.name" = "label-flip", "attack.source_label" = 3 }
noise = { "attack.name" = "gaussian" }
""",
    )
    base = (tmp_path / "base.toml").read_text()
    (tmp_path / "base.toml").write_text(
        base + '[attack]\nname = "gaussian"\nsigma = 3.0\nnum_attackers = 1\n'
    )
    flip, noise = load_sweep(path).runs
    assert flip.config.attack.params == {"source_label": 3}
    assert flip.config.attack.num_attackers == 1  # schedule keys are shared by every attack
    assert noise.config.attack.params == {"sigma": 3.0}


def test_sweep_runs_equal_standalone_runs_and_a_rerun_skips_them(tmp_path, capsys):
    path = write_sweep(tmp_path, GRID)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--parallel", "2"]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["axes"] == {"defense": ["fedavg", "krum"], "seed": ["0", "1"]}
    assert [r["dir"] for r in manifest["runs"]] == [
        "defense=fedavg/seed=0",
        "defense=fedavg/seed=1",
        "defense=krum/seed=0",
        "defense=krum/seed=1",
    ]
    for run in manifest["runs"]:
        run_dir = out / run["dir"]
        assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2
        assert len(command_lines(run_dir)) == 1

    # The same cell run on its own gives the same rounds: a sweep adds nothing to a run.
    alone = tmp_path / "alone"
    assert main(["run", str(out / "defense=krum/seed=1/config.toml"), "--out", str(alone)]) == 0
    assert rounds_without_time(alone) == rounds_without_time(out / "defense=krum/seed=1")

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "4 runs (4 done, 0 to resume, 0 new)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps


def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    path = write_sweep(tmp_path, "[axes]\nseed = [0, 1, 2]\n", rounds=6)
    out = tmp_path / "out"
    second = out / "seed=1"
    sigkill_when(
        ["sweep", str(path), "--out", str(out), "--parallel", "1"],
        second / "metrics.jsonl",
        rounds=2,
        timeout=180,
    )
    # The child run dies with the sweep (no orphan keeps writing into the directory).
    time.sleep(1.0)
    rounds_at_kill = len(read_metrics(second / "metrics.jsonl"))
    time.sleep(2.0)
    assert len(read_metrics(second / "metrics.jsonl")) == rounds_at_kill < 6
    assert (out / "seed=0" / "summary.json").is_file()
    assert not (second / "summary.json").exists()
    finished = (out / "seed=0" / "summary.json").stat().st_mtime_ns

    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert (out / "seed=0" / "summary.json").stat().st_mtime_ns == finished
    assert len(command_lines(out / "seed=0")) == 1
    again = command_lines(second)
    assert len(again) == 2 and "--resume" in again[1]
    for seed in (0, 1, 2):
        assert [r["round"] for r in read_metrics(out / f"seed={seed}" / "metrics.jsonl")] == list(
            range(1, 7)
        )


@pytest.mark.parametrize(
    "body, message",
    [
        ("[axes]\nseed = []\n", "axis 'seed' has no values"),
        ("[axes]\nseed = [0]\ncolour = 3\n", "axis 'colour' must be a list"),
        (
            '[axes.defense]\nbad = { "defense.name" = "nope" }\n',
            "sweep run defense=bad: unknown defense.name 'nope'",
        ),
        ('[axes.defense]\n"a/b" = { "defense.name" = "krum" }\n', "label 'a/b' must be non-empty"),
        ('[axes.defense]\nk = "krum"\n', "axes.defense.k must be a table of config overrides"),
        ("[axes]\nseed = [0]\nparallel = 0\n", "axis 'parallel' must be a list"),
        ("parallel = 0\n[axes]\nseed = [0]\n", "parallel must be an int >= 1"),
        ('order = ["x"]\n[axes]\nseed = [0]\n', "order must list every axis once"),
        ("colour = 1\n[axes]\nseed = [0]\n", "unknown sweep key 'colour'"),
        ('[axes]\n"train.rounds" = [0]\n', "sweep run train.rounds=0: train.rounds"),
    ],
)
def test_a_bad_sweep_file_is_one_line_before_anything_runs(tmp_path, capsys, body, message):
    path = write_sweep(tmp_path, body)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_missing_base_is_one_line(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text('base = "nowhere.toml"\n[axes]\nseed = [0]\n')
    assert main(["sweep", str(path)]) == 2
    assert "nowhere.toml does not exist" in capsys.readouterr().err


EXCLUDING = """
order = ["regime", "defense", "seed"]
exclude = [{ regime = "wide", defense = ["krum"] }, { regime = "wide", seed = 1 }]
[axes]
seed = [0, 1]
[axes.regime]
base = {}
wide = { "train.clients_per_round" = 4 }
[axes.defense]
fedavg = { "defense.name" = "fedavg" }
krum = { defense = { name = "krum", num_malicious = 0 } }
"""


def test_exclude_leaves_out_the_combinations_that_match_every_axis_of_a_rule(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, EXCLUDING), tmp_path / "out")
    assert [r.id for r in sweep.runs] == [
        "regime=base/defense=fedavg/seed=0",
        "regime=base/defense=fedavg/seed=1",
        "regime=base/defense=krum/seed=0",
        "regime=base/defense=krum/seed=1",
        "regime=wide/defense=fedavg/seed=0",
    ]
    assert sweep.axes["regime"] == ["base", "wide"]


@pytest.mark.parametrize(
    "rule, message",
    [
        ('{ shape = "x" }', "exclude[0] names axis 'shape'; axes: regime, defense, seed"),
        ('{ regime = "narrow" }', "exclude[0].regime has no label 'narrow'; labels: base, wide"),
        ('{ regime = ["base", "wide"] }', "exclude leaves no run of the grid"),
    ],
)
def test_a_bad_exclude_is_one_line(tmp_path, capsys, rule, message):
    body = EXCLUDING.replace(
        'exclude = [{ regime = "wide", defense = ["krum"] }, { regime = "wide", seed = 1 }]',
        f"exclude = [{rule}]",
    )
    assert main(["sweep", str(write_sweep(tmp_path, body)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(message) and "\n" not in err


def test_a_run_written_before_a_key_was_added_still_counts(tmp_path):
    # config.toml files are compared as configs: a key that fedsec added since (absent
    # from the file, so its default, which keeps the old behaviour) is not a difference.
    sweep = load_sweep(write_sweep(tmp_path, GRID), tmp_path / "out")
    run = sweep.runs[0]
    run.dir.mkdir(parents=True)
    text = run.config.to_toml()
    assert "min_partition_size" in text
    older = "\n".join(
        line for line in text.splitlines() if not line.startswith("min_partition_size")
    )
    (run.dir / "config.toml").write_text(older)
    assert run.state() == "new"
    (run.dir / "config.toml").write_text(text.replace("rounds = 2", "rounds = 3"))
    with pytest.raises(ConfigError, match="holds a different experiment"):
        run.state()


def test_reuse_copies_finished_runs_of_the_same_experiment_and_runs_the_rest(tmp_path, capsys):
    path = write_sweep(
        tmp_path,
        'order = ["defense", "seed"]\n[axes]\nseed = [0, 1]\n'
        '[axes.defense]\nfedavg = { "defense.name" = "fedavg" }\n',
    )
    earlier = tmp_path / "earlier"  # a run made outside any sweep: the seed-0 cell's experiment
    assert main(["run", str(tmp_path / "base.toml"), "--out", str(earlier / "a")]) == 0
    stamp = (earlier / "a" / "summary.json").read_text()
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--reuse", str(earlier), "--dry-run"]) == 0
    assert "would copy 1 finished runs" in capsys.readouterr().out
    assert not (out / "reused.json").exists()

    assert main(["sweep", str(path), "--out", str(out), "--reuse", str(earlier)]) == 0
    printed = capsys.readouterr().out
    assert "copied 1 finished runs" in printed
    assert "2 runs (1 done, 0 to resume, 1 new)" in printed
    copied = out / "defense=fedavg" / "seed=0"
    assert (copied / "summary.json").read_text() == stamp  # copied, not run again
    assert not (copied / "run.log").exists()
    assert json.loads((out / "reused.json").read_text()) == {
        "defense=fedavg/seed=0": str(earlier / "a")
    }
    assert (out / "defense=fedavg" / "seed=1" / "run.log").is_file()  # the other cell ran


def test_reuse_of_a_missing_directory_is_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path, GRID)
    code = main(["sweep", str(path), "--out", str(tmp_path / "o"), "--reuse", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such directory" in err


def test_only_runs_a_slice_and_the_manifest_lists_the_whole_grid(tmp_path, capsys):
    path = write_sweep(tmp_path, GRID)
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--only", "defense=krum", "--only", "seed=1"]
    assert main(args) == 0
    assert "1 runs (0 done, 0 to resume, 1 new)" in capsys.readouterr().out
    finished = sorted(p.parent.relative_to(out) for p in out.rglob("summary.json"))
    assert finished == [Path("defense=krum/seed=1")]
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 4


@pytest.mark.parametrize(
    "only, message",
    [("attack=x", "an axis of grid: defense, seed"), ("defense=bulyan", "defense has no label")],
)
def test_a_bad_only_is_one_line(tmp_path, capsys, only, message):
    path = write_sweep(tmp_path, GRID)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--only", only]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
