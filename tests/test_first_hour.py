"""A new user's first hour (issue 33): nothing lost or silently changed, and ``--check``
catches what the run would hit. Every refusal is one line on stderr with exit code 2 and
leaves the run directory byte for byte as it was."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from fedsec.cli import main
from fedsec.config import ExperimentConfig
from fedsec.results import read_metrics
from fedsec_core.sampling import AttackSchedule
from tests.runs import sigkill_when

TINY = """\
[data]
name = "digits"
num_clients = 6
min_partition_size = 5
[model]
name = "mlp"
[train]
rounds = 3
clients_per_round = 3
local_epochs = 1
[engine]
client_num_cpus = 1
"""


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (or ``root`` itself), by relative path, with its bytes."""
    if root.is_file():
        return {".": root.read_bytes()}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def one_error_line(capsys) -> str:
    """The one line a refused command printed on stderr (fails the test otherwise)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsec: error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment file, a finished 3-round run of it), made once; tests copy the run."""
    root = tmp_path_factory.mktemp("first-hour")
    config = root / "exp.toml"
    config.write_text(TINY)
    run = root / "run"
    assert main(["run", str(config), "--out", str(run)]) == 0
    return config, run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, free to damage."""
    return Path(shutil.copytree(finished[1], tmp_path / "run"))


@pytest.fixture
def exp(finished) -> Path:
    return finished[0]


# ----------------------------------------------------------------- --out and --overwrite
def test_out_into_another_experiments_run_is_refused_and_overwrite_replaces_it(exp, run, capsys):
    before = files(run)
    assert main(["run", str(exp), "--out", str(run), "--set", "seed=5"]) == 2
    line = one_error_line(capsys)
    assert f"--out {run} holds another experiment (seed 0 -> 5)" in line
    assert "--overwrite" in line
    assert files(run) == before

    assert main(["run", str(exp), "--out", str(run), "--set", "seed=5", "--overwrite"]) == 0
    assert "seed = 5" in (run / "config.toml").read_text()
    assert [r["round"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert files(run)["metrics.jsonl"] != before["metrics.jsonl"]


def test_out_pointing_at_a_file_is_refused_and_overwrite_replaces_it(exp, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    assert main(["run", str(exp), "--out", str(target)]) == 2
    assert f"--out {target} is a file, not a run directory" in one_error_line(capsys)
    assert target.read_text() == "my notes\n"

    assert main(["run", str(exp), "--out", str(target), "--overwrite"]) == 0
    assert target.is_dir() and (target / "summary.json").is_file()


def test_the_same_experiment_into_its_finished_directory_changes_nothing(exp, run, capsys):
    before = files(run)
    assert main(["run", str(exp), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run} already holds this experiment, finished; nothing to run" in out
    assert "fedsec: done: 3 rounds" in out
    assert files(run) == before
    assert main(["run", "--resume", str(run)]) == 0  # nothing to resume either
    assert files(run) == before


def test_the_same_experiment_into_its_interrupted_directory_continues_it(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text(TINY.replace("rounds = 3", "rounds = 6"))
    out = tmp_path / "run"
    sigkill_when(["run", str(exp), "--out", str(out)], out / "metrics.jsonl", 2, timeout=120)
    assert not (out / "summary.json").exists()
    assert main(["run", str(exp), "--out", str(out)]) == 0
    assert "holds this experiment, interrupted; continuing it" in capsys.readouterr().out
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- --resume
def test_resume_refuses_an_edited_config_naming_the_keys(run, capsys):
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("rounds = 3", "rounds = 6"))
    before = files(run)
    assert main(["run", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert f"cannot resume {run}: its config.toml is not the experiment" in line
    assert "(train.rounds 3 -> 6)" in line
    assert files(run) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_checkpoint_is_one_line_naming_it(run, capsys, damage):
    path = run / "checkpoint.pt"
    whole = path.read_bytes()
    path.write_bytes(
        {"garbage": b"not a checkpoint", "truncated": whole[:300], "empty": b""}[damage]
    )
    before = files(run)
    for argv in (
        ["run", "--resume", str(run)],
        ["run", str(run / "config.toml"), "--out", str(run)],
    ):
        # the second: the same experiment into its own directory, which would resume it
        if argv[1] != "--resume":
            (run / "summary.json").unlink()
            before = files(run)
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"{path} is {'empty' if damage == 'empty' else 'damaged or truncated'}" in line
        assert "--overwrite" in line
        assert files(run) == before


def test_a_torn_middle_line_of_metrics_is_one_line_and_report_leaves_the_run_out(
    run, tmp_path, capsys
):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    before = files(run)
    assert main(["run", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert f"{run / 'metrics.jsonl'}: line 2 of 3 is not a whole JSON record" in line
    assert files(run) == before

    results = tmp_path / "results"
    results.mkdir()
    shutil.move(run, results / "seed=0")
    shutil.copytree(results / "seed=0", results / "seed=1")
    (results / "seed=1" / "metrics.jsonl").write_text("".join(lines))  # a whole one
    assert main(["report", str(results)]) == 0
    captured = capsys.readouterr()
    warnings = [w for w in captured.err.splitlines() if "seed=0" in w]
    assert len(warnings) == 1 and warnings[0].startswith("fedsec: report: warning: run seed=0")
    assert "(1 of 2 runs finished)" in captured.out
    assert files(results / "seed=0") == before


def test_a_torn_last_line_is_still_skipped(run):
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"round": 4, "main_acc')
    assert [r["round"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


# ------------------------------------------------------------------------------ --check
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=inf", "train.lr must be a finite number, got inf"),
        ("train.lr=1e999", "train.lr must be a finite number, got inf"),
        ("train.lr=nan", "train.lr must be a finite number, got nan"),
        ("train.lr=1e6", "train.lr must be > 0 and <= 10, got 1000000.0"),
        ("data.alpha=inf", "data.alpha must be a finite number, got inf"),
        ("engine.round_timeout=inf", "engine.round_timeout must be a finite number, got inf"),
        (
            "engine.client_num_cpus=100000",
            "engine.client_num_cpus must be >= 1 and <= 1024 (threads per client), got 100000",
        ),
        ("train.momentum=-inf", "train.momentum must be a finite number, got -inf"),
    ],
)
def test_check_rejects_non_finite_and_absurd_numbers(exp, capsys, override, message):
    assert main(["run", str(exp), "--check", "--set", override]) == 2
    assert one_error_line(capsys) == f"fedsec: error: {message}"


def test_check_rejects_a_non_finite_defense_parameter(exp, capsys):
    argv = ["run", str(exp), "--check", "--set", "defense.name=signguard"]
    assert main([*argv, "--set", "defense.upper=inf"]) == 2
    assert one_error_line(capsys) == "fedsec: error: defense.upper must be a finite number, got inf"


def test_check_rejects_a_learning_rate_that_grows_past_the_bound(exp, capsys):
    argv = ["run", str(exp), "--check", "--set", "train.lr_decay=1.1", "--set", "train.rounds=100"]
    assert main(argv) == 2
    assert "train.lr_decay = 1.1 grows the client lr past 10 by round 100" in one_error_line(capsys)


def test_check_rejects_cuda_without_a_gpu(exp, capsys):
    code = main(["run", str(exp), "--check", "--set", "engine.device=cuda"])
    if torch.cuda.is_available():
        assert code == 0
        return
    assert code == 2
    assert one_error_line(capsys) == (
        "fedsec: error: engine.device = 'cuda' but torch sees no CUDA device; use cpu or auto"
    )
    assert main(["run", str(exp), "--check", "--set", "engine.device=auto"]) == 0


ATTACK = ["--set", "attack.name=sign-flip"]


@pytest.mark.parametrize(
    "window, message",
    [
        (
            ["attack.start_round=3", "attack.end_round=2"],
            "attack.start_round (3) is after attack.end_round (2): the attack window is empty",
        ),
        (
            ["attack.start_round=4", "attack.end_round=5"],
            "the attack window, rounds 4..5, lies after the last round (train.rounds = 3)",
        ),
    ],
)
def test_check_rejects_an_empty_attack_window(exp, capsys, window, message):
    argv = ["run", str(exp), "--check", *ATTACK]
    for item in window:
        argv += ["--set", item]
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_a_window_after_the_last_round_without_end_round_is_a_baseline_with_a_warning(exp, capsys):
    # The committed sweeps' no-attack baselines (none-edge, ...) start the attack after
    # the last round: still valid, but said.
    assert main(["run", str(exp), "--check", *ATTACK, "--set", "attack.start_round=4"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "fedsec: warning: attack.start_round = 4 is after the last round (train.rounds = 3): "
        "no round is attacked (a no-attack baseline)\n"
    )
    assert captured.out.endswith(": in no round\n")


@pytest.mark.parametrize(
    "schedule, answer",
    [
        (
            "fixed-frequency",
            "in rounds 1, 11, 21, 31, 41, 51, 61, 71, ... (100000000 rounds)",
        ),
        ("every-round", "in rounds 1, 2, 3, 4, 5, 6, 7, 8, ... (1000000000 rounds)"),
        ("random-pool", "(of 1000000000, whenever sampled)"),
    ],
)
def test_check_answers_for_a_billion_rounds(exp, capsys, schedule, answer):
    # Walking 10^9 rounds takes days (about 0.1 ms a round); the check looks at one
    # period of a periodic schedule and stops a random-pool walk once every shape is seen.
    argv = ["run", str(exp), "--check", *ATTACK, "--set", f"attack.schedule={schedule}"]
    assert main([*argv, "--set", "train.rounds=1000000000"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[:-1] == ["fedsec: loading digits ..."]  # the only preparation it prints
    assert out[-1].startswith(f"fedsec: {exp} is valid; attack: sign-flip by client ")
    assert out[-1].endswith(answer)


def test_check_still_names_the_short_round_of_a_billion_round_run(tmp_path, capsys):
    # The hang config of test_silent_failures, 10^9 rounds: the first round without an
    # attack (2) is short of clients.
    exp = tmp_path / "exp.toml"
    exp.write_text(TINY.replace("clients_per_round = 3", "clients_per_round = 6"))
    argv = ["run", str(exp), "--check", *ATTACK, "--set", "train.rounds=1000000000"]
    assert main(argv) == 2
    assert "round 2 can have only 5 clients, not train.clients_per_round = 6" in one_error_line(
        capsys
    )


def _walked_shapes(schedule: AttackSchedule) -> dict[tuple[int, int], int]:
    """Every round's (clients, attackers), first round of each: the old walk."""
    shapes: dict[tuple[int, int], int] = {}
    for r in range(1, schedule.rounds + 1):
        clients, malicious = schedule.sample(r)
        shapes.setdefault((len(clients), len(malicious)), r)
    return shapes


def test_round_shapes_and_attack_rounds_equal_walking_every_round():
    rnd = random.Random(33)
    for _ in range(300):
        n = rnd.randint(2, 12)
        per_round = rnd.randint(1, n)
        pool = rnd.randint(1, n)
        attack = {
            "name": rnd.choice(["none", "sign-flip"]),
            "schedule": rnd.choice(["fixed-frequency", "every-round", "random-pool"]),
            "num_attackers": pool,
            "attackers_per_round": rnd.randint(1, min(pool, per_round)),
            "every": rnd.randint(1, 12),
            "start_round": rnd.randint(1, 45),
            "end_round": rnd.choice([0, rnd.randint(1, 45)]),
        }
        excluded = rnd.sample(range(n), rnd.randint(0, n - 1)) if rnd.random() < 0.3 else []
        train = {
            "rounds": rnd.randint(1, 40),
            "clients_per_round": per_round,
            "exclude_clients": ",".join(map(str, excluded)),
        }
        config = ExperimentConfig.from_dict(
            {
                "seed": rnd.randint(0, 50),
                "data": {"num_clients": n},
                "train": train,
                "attack": attack,
            }
        )
        schedule = AttackSchedule.for_config(config)
        assert schedule.round_shapes() == _walked_shapes(schedule), (attack, train)
        walked = [r for r in range(1, schedule.rounds + 1) if schedule.sample(r)[1]]
        assert schedule.attack_rounds() == walked, (attack, train)


# ------------------------------------------------------------------------------- sweeps
def _sweep(tmp_path: Path, axes: str) -> Path:
    (tmp_path / "exp.toml").write_text(TINY)
    path = tmp_path / "sw.toml"
    path.write_text(f'name = "sw"\nbase = "exp.toml"\n[axes]\nseed = [0, 1]\n{axes}')
    return path


def test_a_sweep_file_given_to_run_says_so(tmp_path, capsys):
    path = _sweep(tmp_path, "")
    for argv in (["run", str(path)], ["run", str(path), "--check"]):
        assert main(argv) == 2
        assert one_error_line(capsys) == (
            f"fedsec: error: {path} is a sweep file (a base experiment and axes), not one "
            f"experiment; run it with `fedsec sweep {path}`"
        )


def test_sweep_errors_name_every_bad_cell_and_the_key_as_written(tmp_path, capsys):
    path = _sweep(
        tmp_path,
        "[axes.defense]\n"
        'fedavg = { "defense.name" = "fedavg" }\n'
        'krum = { "defense.nmae" = "krum" }\n'
        'bad = { "defense.name" = "krum", "defense.num_malicious" = -1 }\n',
    )
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    misspelled = (
        ": axes.defense.krum sets 'defense.nmae', which is neither a key of [defense] nor a "
        "parameter of defense 'fedavg'; did you mean defense.name? (valid: name, weighting)"
    )
    negative = (
        ": defense 'krum': parameter 'num_malicious' must be an int >= 0, got -1 "
        "(axes.defense.bad sets defense.num_malicious = -1)"
    )
    assert lines == [
        f"fedsec: error: sweep run seed={seed}, defense={label}{words}"
        for seed in (0, 1)
        for label, words in (("krum", misspelled), ("bad", negative))
    ]
    assert not out.exists()
