"""``fedsec report``: means and stds over seeds, table cells, ranking score, curves, errors.

A fake sweep of 2 defenses x 2 attacks x 2 seeds with hand-chosen numbers; one run
(multi-metrics / model-replacement / seed 1) has logged rounds but no summary.json.
"""

import json
import math
import shutil
from pathlib import Path

import pytest

from fedsec import paper
from fedsec.cli import main
from fedsec.report import paper_ranking, ranking_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MR = "model-replacement"

# (defense, attack, seed) -> summary numbers as fractions; None: the run is unfinished.
FINAL = {
    ("fedavg", "none", "0"): dict(ma=0.90, best=0.95, ba=None, maxba=None, prec=None, rec=None),
    ("fedavg", "none", "1"): dict(ma=0.94, best=0.96, ba=None, maxba=None, prec=None, rec=None),
    ("fedavg", MR, "0"): dict(ma=0.80, best=0.85, ba=0.60, maxba=0.80, prec=None, rec=None),
    ("fedavg", MR, "1"): dict(ma=0.84, best=0.86, ba=0.70, maxba=0.90, prec=None, rec=None),
    ("multi-metrics", "none", "0"): dict(
        ma=0.91, best=0.92, ba=None, maxba=None, prec=0.0, rec=None
    ),
    ("multi-metrics", "none", "1"): dict(
        ma=0.93, best=0.93, ba=None, maxba=None, prec=0.0, rec=None
    ),
    ("multi-metrics", MR, "0"): dict(ma=0.82, best=0.83, ba=0.05, maxba=0.10, prec=1.0, rec=0.5),
    ("multi-metrics", MR, "1"): None,
}


def _rounds(key):
    """Three rounds per run: MA climbs to the final value, BA (with an attack) is constant."""
    d, a, s = key
    final = FINAL[key]
    ma = final["ma"] if final else 0.5
    recs = []
    for r in (1, 2, 3):
        rec = {
            "round": r,
            "main_accuracy": round(ma - 0.1 * (3 - r), 4),
            "true_positives": 0,
            "false_positives": 0,
        }
        if a != "none":
            rec["backdoor_accuracy"] = final["ba"] if final else 0.99
        recs.append(rec)
    return recs


def _write_run(path, key):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rounds(key)))
    f = FINAL[key]
    if f is None:
        return
    summary = {
        "rounds": 3,
        "seed": int(key[2]),
        "final_main_accuracy": f["ma"],
        "best_main_accuracy": f["best"],
        "wall_time_s": 1.0,
        "detection": {"precision": f["prec"], "recall": f["rec"], "false_positive_rate": 0.0},
    }
    if f["ba"] is not None:
        summary.update(final_backdoor_accuracy=f["ba"], max_backdoor_accuracy=f["maxba"])
    (path / "summary.json").write_text(json.dumps(summary))


def make_sweep(root, with_sweep_json=True):
    runs = []
    for key in FINAL:
        d, a, s = key
        rel = f"defense={d}/attack={a}/seed={s}"
        _write_run(root / rel, key)
        runs.append({"id": rel, "dir": rel, "labels": {"defense": d, "attack": a, "seed": s}})
    if with_sweep_json:
        axes = {"defense": ["fedavg", "multi-metrics"], "attack": ["none", MR], "seed": ["0", "1"]}
        (root / "sweep.json").write_text(json.dumps({"name": "fake", "axes": axes, "runs": runs}))
    return root


def _report(root, *args):
    assert main(["report", str(root), *args]) == 0
    out = Path(root if "--out" not in args else args[args.index("--out") + 1])
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def _group(report, defense, attack):
    (g,) = [
        g
        for s in report["sets"]
        for g in s["groups"]
        if g["labels"] == {"defense": defense, "attack": attack}
    ]
    return g


def test_means_and_stds_over_seeds(tmp_path, capsys):
    rep, _ = _report(make_sweep(tmp_path))
    assert rep["units"] == "percent" and rep["rows"] == "defense" and rep["cols"] == "attack"
    ma = _group(rep, "fedavg", MR)["metrics"]
    assert ma["final_main_accuracy"]["mean"] == pytest.approx(82.0)
    assert ma["final_main_accuracy"]["std"] == pytest.approx(
        math.sqrt(8.0)
    )  # (80-82)^2+(84-82)^2, ddof 1
    assert ma["best_main_accuracy"]["mean"] == pytest.approx(85.5)
    assert ma["best_main_accuracy"]["std"] == pytest.approx(math.sqrt(0.5))
    assert ma["final_backdoor_accuracy"]["mean"] == pytest.approx(65.0)
    assert ma["final_backdoor_accuracy"]["std"] == pytest.approx(math.sqrt(50.0))
    assert ma["max_backdoor_accuracy"]["mean"] == pytest.approx(85.0)
    assert ma["precision"] == {
        "mean": None,
        "std": None,
        "n": 0,
        "values": [],
        "seeds": [],
        "ci": None,
        "identical": False,
    }
    none = _group(rep, "fedavg", "none")["metrics"]
    assert none["final_main_accuracy"]["mean"] == pytest.approx(92.0)
    assert none["final_backdoor_accuracy"]["mean"] is None
    mm = _group(rep, "multi-metrics", "none")["metrics"]
    assert mm["final_main_accuracy"]["std"] == pytest.approx(math.sqrt(2.0))
    assert mm["precision"]["mean"] == 0.0 and mm["recall"]["mean"] is None
    # curves: per-round mean over seeds; fedavg/MR round 1 = mean(0.60, 0.64)
    cur = _group(rep, "fedavg", MR)["curves"]
    assert cur["round"] == [1, 2, 3]
    assert cur["main_accuracy"] == pytest.approx([62.0, 72.0, 82.0])
    assert cur["backdoor_accuracy"] == pytest.approx([65.0, 65.0, 65.0])
    assert _group(rep, "fedavg", "none")["curves"]["backdoor_accuracy"] == [None, None, None]


def test_unfinished_run_is_reported_and_left_out(tmp_path, capsys):
    rep, md = _report(make_sweep(tmp_path))
    bad = "defense=multi-metrics/attack=model-replacement/seed=1"
    assert rep["counts"] == {"finished": 7, "unfinished": 1, "missing": 0, "total": 8}
    (status,) = [r["status"] for r in rep["runs"] if r["id"] == bad]
    assert status == "unfinished"
    g = _group(rep, "multi-metrics", MR)
    assert g["n"] == 1 and g["n_expected"] == 2 and g["left_out"] == [bad]
    assert g["metrics"]["final_main_accuracy"]["values"] == pytest.approx([82.0])
    assert g["metrics"]["final_main_accuracy"]["std"] is None
    # its logged rounds (BA 0.99) do not reach the curves either
    assert g["curves"]["backdoor_accuracy"] == pytest.approx([5.0, 5.0, 5.0])
    assert f"- `{bad}`: unfinished (no summary.json; 3 rounds logged)" in md
    assert (
        "| multi-metrics | model-replacement | 82.0 | 83.0 | 5.0 | 10.0 | 100.0 | 50.0 "
        "| - | - | - | - | 9.0 (n=1, no interval) | 1 of 2 |" in md
    )


def test_runs_whose_attacker_failed_are_named_in_a_warning(tmp_path, capsys):
    root = make_sweep(tmp_path)
    run = root / "defense=fedavg/attack=model-replacement/seed=0"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rounds[0].update(malicious_clients=[3], failed_clients=[1])  # an honest client failed
    rounds[1].update(malicious_clients=[3], failed_clients=[3])  # the attacker failed
    rounds[2].update(malicious_clients=[2, 3], failed_clients=[0, 2])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    rep, md = _report(root)
    rel = "defense=fedavg/attack=model-replacement/seed=0"
    assert rep["attacker_failures"] == {rel: [2, 3]}
    assert f"`{rel}` (rounds 2, 3)" in md and "**Warning:** in 1 runs" in md
    assert "attacker's reply failed (their cells measure" in capsys.readouterr().err
    assert _report(make_sweep(tmp_path / "clean"))[0]["attacker_failures"] == {}


def test_compact_table_cells(tmp_path, capsys):
    _, md = _report(make_sweep(tmp_path))
    assert "| defense \\ attack | none | model-replacement |" in md
    assert "| fedavg | 92.0 ± 2.8 / - | 82.0 ± 2.8 / 65.0 ± 7.1 |" in md
    assert "| multi-metrics | 92.0 ± 1.4 / - | 82.0 / 5.0 (n=1) |" in md
    assert "| fedavg | none | 92.0 ± 2.8 | 95.5 ± 0.7 " + "| - " * 9 + "| 2 |" in md
    # MA lost to the attack, paired by seed with the same defense's no-attack run
    assert "| fedavg | model-replacement | 82.0 ± 2.8 | 85.5 ± 0.7 | 65.0 ± 7.1 | 85.0 ± 7.1 " in md
    assert "| - | - | - | - | - | - | 10.0 (2 identical seeds, no interval) | 2 |" in md
    printed = capsys.readouterr().out
    assert "| fedavg | 92.0 ± 2.8 / - | 82.0 ± 2.8 / 65.0 ± 7.1 |" in printed  # terminal too


def test_ranking_score_by_hand(tmp_path, capsys):
    rep, md = _report(make_sweep(tmp_path))
    (s,) = rep["sets"]
    ranking = s["ranking"]
    assert ranking["attacks"] == [MR] and ranking["excluded"] == {}
    # MM: (82 - 82) / 82 - (5 - 65) / 65 = 60 / 65
    assert [e["defense"] for e in ranking["scores"]] == ["multi-metrics", "fedavg"]
    assert ranking["scores"][0]["score"] == pytest.approx(60 / 65)
    assert ranking["scores"][0]["rank"] == 1
    assert ranking["scores"][1] == {"defense": "fedavg", "score": 0.0, "rank": 2}
    assert "| 1 | multi-metrics | +0.923 |" in md


def test_ranking_score_function():
    ma = {
        ("fedavg", "a"): 80.0,
        ("fedavg", "b"): 90.0,
        ("x", "a"): 60.0,
        ("x", "b"): 99.0,
        ("y", "a"): 80.0,
        ("fedavg", "none"): 95.0,
        ("fedavg", "z"): 90.0,
    }
    ba = {
        ("fedavg", "a"): 50.0,
        ("fedavg", "b"): 40.0,
        ("x", "a"): 10.0,
        ("x", "b"): 80.0,
        ("y", "a"): 0.0,
        ("fedavg", "z"): 0.0,
    }
    r = ranking_scores(ma, ba, ["fedavg", "x", "y"], ["none", "a", "b", "z"])
    assert r["attacks"] == ["a", "b"] and r["excluded"] == {"z": "fedavg's BA is 0"}
    x = (60 - 80) / 80 - (10 - 50) / 50 + (99 - 90) / 90 - (80 - 40) / 40  # = -0.35
    assert [(e["defense"], e["rank"]) for e in r["scores"]] == [
        ("fedavg", 1),
        ("x", 2),
        ("y", None),
    ]
    assert r["scores"][1]["score"] == pytest.approx(x) == pytest.approx(-0.35)
    assert r["scores"][2]["score"] is None  # y has no result for attack b


def test_paper_numbers_beside_ours(tmp_path, capsys):
    rep, md = _report(make_sweep(tmp_path), "--paper", "emnist")
    assert "| fedavg | 92.0 ± 2.8 / - | 82.0 ± 2.8 / 65.0 ± 7.1 (paper 99.54 / 96.00) |" in md
    assert "| multi-metrics | 92.0 ± 1.4 / - | 82.0 / 5.0 (n=1) (paper 99.53 / 0.00) |" in md
    (mm,) = [e for e in rep["sets"][0]["ranking"]["scores"] if e["defense"] == "multi-metrics"]
    assert mm["paper_score"] == pytest.approx((99.53 - 99.54) / 99.54 - (0.0 - 96.0) / 96.0)
    # The paper's rank is among its eight defenses: on model replacement alone Multi-Krum
    # scores (99.58 - 99.54) / 99.54 + 1 = 1.0004 > Multi-metrics' 0.9999.
    assert mm["paper_rank"] == 2
    full = rep["paper"]["ranking_all_attacks"]
    assert full["scores"][0]["defense"] == "multi-metrics"


def test_paper_table_cells_and_ranking():
    t = paper.PAPER_TABLES
    assert t["cifar10"]["fedavg"]["model-replacement"] == (86.95, 64.80)
    assert t["cifar10"]["weak-dp"]["dba"] == (10.00, 0.00)
    assert t["cifar10"]["multi-metrics"]["edge-case-pgd"] == (86.86, 3.06)
    assert t["emnist"]["foolsgold"]["pgd"] == (99.07, 94.00)
    assert t["emnist"]["multi-krum"]["dba"] == (97.85, 47.43)
    assert paper.paper_cell("emnist", "multi-metrics-reference", "dba") == (97.39, 4.23)
    assert paper.paper_cell("emnist", "multi-metrics-paper", "pgd") == (99.54, 0.00)
    assert paper.paper_cell("emnist", "bulyan", "pgd") is None
    assert all(len(rows) == 8 and all(len(c) == 4 for c in rows.values()) for rows in t.values())
    # The paper's ranking score over its four attacks puts Multi-metrics first on both.
    cifar = paper_ranking("cifar10")["scores"]
    assert [e["defense"] for e in cifar] == [
        "multi-metrics",
        "flame",
        "foolsgold",
        "multi-krum",
        "weak-dp",
        "fedavg",
        "rfa",
        "krum",
    ]
    assert cifar[0]["score"] == pytest.approx(3.774366, abs=1e-6)
    emnist = paper_ranking("emnist")["scores"]
    assert [e["defense"] for e in emnist] == [
        "multi-metrics",
        "krum",
        "flame",
        "multi-krum",
        "rfa",
        "fedavg",
        "weak-dp",
        "foolsgold",
    ]
    assert emnist[0]["score"] == pytest.approx(3.954006, abs=1e-6)
    # hand check of one term: MM on EMNIST MR = (99.53-99.54)/99.54 - (0-96)/96
    mr = paper_ranking("emnist", ["model-replacement"])["scores"]
    (mm,) = [e for e in mr if e["defense"] == "multi-metrics"]
    assert mm["score"] == pytest.approx(1 - 0.01 / 99.54)


def test_pngs_are_written(tmp_path, capsys):
    out = tmp_path / "out"
    rep, md = _report(make_sweep(tmp_path / "sweep"), "--out", str(out))
    assert rep["files"]["png"] == ["curves.png"]
    data = (out / "curves.png").read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert "![MA and BA per round](curves.png)" in md
    assert not (tmp_path / "sweep" / "report.md").exists()


def test_a_combination_the_sweep_excludes_is_drawn_and_tabled_as_absent(tmp_path, capsys):
    """A sweep's `exclude` leaves a (row, column) pair without a group: the table shows
    it as absent and the curves skip it (they raised KeyError before)."""
    root = make_sweep(tmp_path / "sweep")
    sweep = json.loads((root / "sweep.json").read_text())
    sweep["runs"] = [
        r for r in sweep["runs"] if not r["id"].startswith(f"defense=multi-metrics/attack={MR}")
    ]
    (root / "sweep.json").write_text(json.dumps(sweep))
    shutil.rmtree(root / "defense=multi-metrics" / f"attack={MR}")
    out = tmp_path / "out"
    rep, md = _report(root, "--out", str(out))
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert "| multi-metrics | 92.0 ± 1.4 / - | · |" in md
    assert {(g["row"], g["col"]) for s in rep["sets"] for g in s["groups"]} == {
        ("fedavg", "none"),
        ("fedavg", MR),
        ("multi-metrics", "none"),
    }


def test_fallback_discovery_without_sweep_json(tmp_path, capsys):
    rep, md = _report(make_sweep(tmp_path, with_sweep_json=False))
    assert rep["source"] == "discovered"
    assert rep["axes"] == {
        "defense": ["fedavg", "multi-metrics"],
        "attack": [MR, "none"],
        "seed": ["0", "1"],
    }
    assert _group(rep, "fedavg", MR)["metrics"]["final_backdoor_accuracy"]["mean"] == pytest.approx(
        65.0
    )
    assert rep["counts"]["unfinished"] == 1
    assert "| multi-metrics | 82.0 / 5.0 (n=1) | 92.0 ± 1.4 / - |" in md


def test_extra_axis_gives_one_table_and_png_per_value(tmp_path, capsys):
    for alpha, ma in (("0.5", 0.9), ("0.1", 0.7), ("10", 0.95)):
        for seed in ("0", "1"):
            run = tmp_path / f"alpha={alpha}" / "defense=fedavg" / "attack=none" / f"seed={seed}"
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "main_accuracy": ma}) + "\n")
            summary = {"final_main_accuracy": ma, "best_main_accuracy": ma}
            (run / "summary.json").write_text(json.dumps(summary))
    rep, md = _report(tmp_path)
    assert rep["extra_axes"] == ["alpha"] and rep["axes"]["alpha"] == ["0.1", "0.5", "10"]
    assert rep["files"]["png"] == [
        "curves_alpha=0.1.png",
        "curves_alpha=0.5.png",
        "curves_alpha=10.png",
    ]
    for name in rep["files"]["png"]:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert md.index("## alpha=0.1") < md.index("## alpha=0.5") < md.index("## alpha=10")
    assert "| fedavg | 70.0 ± 0.0 / - |" in md
    # rows and cols chosen on the command line; the remaining axis splits the tables
    rep, md = _report(tmp_path, "--rows", "alpha", "--cols", "defense")
    assert rep["extra_axes"] == ["attack"] and "| alpha \\ defense | fedavg |" in md
    assert "| 10 | 95.0 ± 0.0 / - |" in md and rep["sets"][0]["ranking"] is None


def test_missing_run_directory(tmp_path, capsys):
    root = make_sweep(tmp_path)
    shutil.rmtree(root / "defense=fedavg/attack=none/seed=1")
    rep, md = _report(root)
    assert rep["counts"]["missing"] == 1
    assert "- `defense=fedavg/attack=none/seed=1`: missing (no run directory yet)" in md
    assert "| fedavg | 90.0 / - (n=1) |" in md


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{empty}"], "no runs found"),
        (["{sweep}", "--rows", "alpha"], "unknown --rows axis 'alpha'; valid: defense, attack"),
        (["{sweep}", "--cols", "seed"], "unknown --cols axis 'seed'; it is averaged over"),
        (["{sweep}", "--paper", "mnist"], "unknown paper table 'mnist'; valid: cifar10, emnist"),
        (
            ["{sweep}", "--rows", "attack", "--cols", "attack"],
            "--rows and --cols are both 'attack'",
        ),
        (
            ["{sweep}", "--paper", "emnist", "--rows", "attack", "--cols", "defense"],
            "--paper needs rows 'defense' and columns 'attack'",
        ),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    make_sweep(tmp_path / "sweep")
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "sweep": tmp_path / "sweep"}
    argv = ["report"] + [a.format(**paths) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedsec: error: ") and message in err
    assert not (tmp_path / "sweep" / "report.md").exists()


def test_auroc_column_and_selection_quota_lines(tmp_path, capsys):
    """Runs with a detection AUROC (mean ± std over seeds like the other columns), a run
    from before the AUROC (none: it is left out of the mean), and a quota line under the
    long table for the defense that states one."""
    quota = (
        "keeps the 3 of the 10 clients of each round with the lowest scores "
        "(keep_fraction = 0.3) by design"
    )
    runs = {
        ("multi-metrics", "0"): (0.9, quota),
        ("multi-metrics", "1"): (0.8, quota),
        ("multi-metrics", "2"): (1.0, quota),
        ("flame", "0"): (0.75, None),
        ("flame", "1"): (None, None),
        ("flame", "2"): (None, None),
    }
    for (d, seed), (auroc, q) in runs.items():
        run = tmp_path / f"defense={d}" / f"attack={MR}" / f"seed={seed}"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "main_accuracy": 0.9}) + "\n")
        detection = {"precision": 0.25, "recall": 1.0, "false_positive_rate": 0.7}
        if auroc is not None:
            detection.update(auroc=auroc, auroc_rounds=3)
        if q is not None:
            detection["selection_quota"] = q
        summary = {
            "final_main_accuracy": 0.9,
            "best_main_accuracy": 0.9,
            "detection": detection,
            "config": {"defense": {"name": d, "params": {}}},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    rep, md = _report(tmp_path)
    mm = _group(rep, "multi-metrics", MR)["metrics"]["auroc"]
    assert mm["mean"] == pytest.approx(90.0) and mm["std"] == pytest.approx(10.0) and mm["n"] == 3
    fl = _group(rep, "flame", MR)["metrics"]["auroc"]
    assert fl["values"] == pytest.approx([75.0]) and fl["std"] is None
    assert (
        "| defense | attack | final MA | best MA | final BA | max BA | precision | recall | AUROC "
        "| attacker kept | attacker weight | BA − baseline | MA lost | seeds |" in md
    )
    assert (
        f"| multi-metrics | {MR} | 90.0 ± 0.0 | 90.0 ± 0.0 | - | - | 25.0 ± 0.0 | 100.0 ± 0.0 "
        "| 90.0 ± 10.0 | - | - | - | - | 3 |" in md
    )
    assert (
        f"| flame | {MR} | 90.0 ± 0.0 | 90.0 ± 0.0 | - | - | 25.0 ± 0.0 | 100.0 ± 0.0 | 75.0 "
        "| - | - | - | - | 3 |" in md
    )
    assert rep["sets"][0]["selection_quotas"] == [{"defense": "multi-metrics", "quota": quota}]
    line = (
        f"- multi-metrics {quota}: its precision and false-positive rate reflect that quota; "
        "its AUROC does not."
    )
    assert md.count(line) == 1 and md.index("| AUROC |") < md.index(line)
    assert "flame keeps" not in md and "50 = chance" in md


def test_runs_without_auroc_or_quota_render_as_before(tmp_path, capsys):
    _, md = _report(make_sweep(tmp_path))
    assert (
        "| precision | recall | AUROC | attacker kept | attacker weight | BA − baseline "
        "| MA lost | seeds |" in md
    )
    assert "50 = chance" not in md and "by design" not in md


def test_certified_accuracy_columns_for_runs_that_certified(tmp_path, capsys):
    # Two seeds of one cell certified their final model (CRFL): the long table gets the
    # smoothed accuracy and a column per radius, averaged over the seeds like any metric.
    root = make_sweep(tmp_path)
    for seed, (smoothed, at0, at1) in {"0": (0.9, 0.8, 0.5), "1": (0.7, 0.6, 0.3)}.items():
        path = root / f"defense=fedavg/attack={MR}/seed={seed}/summary.json"
        summary = json.loads(path.read_text())
        summary.update(
            final_smoothed_accuracy=smoothed,
            final_certified_accuracy={"0": at0, "0.001": at1},
        )
        path.write_text(json.dumps(summary))
    report, md = _report(root)
    assert report["metric_columns"][-3:] == [
        ["final_smoothed_accuracy", "smoothed acc"],
        ["certified_accuracy@0", "certified @r=0"],
        ["certified_accuracy@0.001", "certified @r=0.001"],
    ]
    g = _group(report, "fedavg", MR)
    assert g["metrics"]["final_smoothed_accuracy"]["mean"] == pytest.approx(80.0)
    assert g["metrics"]["certified_accuracy@0"]["mean"] == pytest.approx(70.0)
    assert g["metrics"]["certified_accuracy@0.001"]["mean"] == pytest.approx(40.0)
    assert _group(report, "multi-metrics", MR)["metrics"]["certified_accuracy@0"]["n"] == 0
    assert "| smoothed acc | certified @r=0 | certified @r=0.001 |" in md
    assert "noisy copies of the model" in md


def _set_provenance(root, rel, commit, initial_model="m0", kernels="cpu:AVX512"):
    path = root / rel / "summary.json"
    summary = json.loads(path.read_text())
    summary["provenance"] = {
        "initial_model": initial_model,
        "commits": [None if commit is None else {"commit": commit, "dirty": False}],
        "kernels": [kernels],
    }
    path.write_text(json.dumps(summary))


def test_a_cell_whose_seeds_ran_at_different_commits_is_flagged(tmp_path, capsys):
    root = make_sweep(tmp_path / "sweep")
    for key, final in FINAL.items():
        if final is not None:
            _set_provenance(root, "defense={}/attack={}/seed={}".format(*key), "a" * 40)
    # one seed of FedAvg's attacked cell ran at another commit
    _set_provenance(root, f"defense=fedavg/attack={MR}/seed=1", "b" * 40, initial_model="m1")
    report, md = _report(root)
    assert report["mixed_commits"] == {f"fedavg / {MR}": ["a" * 40, "b" * 40]}
    by_id = {r["id"]: r for r in report["runs"]}
    assert by_id[f"defense=fedavg/attack={MR}/seed=1"]["commits"] == ["b" * 40]
    assert by_id[f"defense=fedavg/attack={MR}/seed=1"]["initial_model"] == "m1"
    assert _group(report, "fedavg", "none")["commits"] == ["a" * 40]
    assert "1 cells mix runs from different source commits" in md
    assert f"fedavg / {MR}: {'a' * 12}, {'b' * 12}" in md
    assert "cells mix runs from different source commits" in capsys.readouterr().err
    assert report["mixed_kernels"] == {}
    # the same commit on another CPU family: flagged too
    _set_provenance(root, f"defense=fedavg/attack={MR}/seed=1", "a" * 40, kernels="cpu:AVX2")
    report, md = _report(root)
    assert report["mixed_commits"] == {}
    assert report["mixed_kernels"] == {f"fedavg / {MR}": ["cpu:AVX2", "cpu:AVX512"]}
    assert f"fedavg / {MR}: cpu:AVX2, cpu:AVX512" in md


def test_runs_without_provenance_are_not_flagged(tmp_path, capsys):
    report, md = _report(make_sweep(tmp_path / "sweep"))
    assert report["mixed_commits"] == {} and report["mixed_kernels"] == {}
    assert _group(report, "fedavg", MR)["commits"] == ["unknown"]
    assert "source commits" not in md


def test_only_reports_a_slice_of_the_sweep(tmp_path, capsys):
    """--only keeps the runs with those labels: the other cells are not asked for, so
    they are neither counted missing nor shown; the slice is named in report.md."""
    rep, md = _report(make_sweep(tmp_path), "--only", "defense=fedavg", "--only", "seed=0")
    assert rep["counts"] == {"finished": 2, "unfinished": 0, "missing": 0, "total": 2}
    assert rep["axes"]["defense"] == ["fedavg"] and rep["only"] == ["defense=fedavg", "seed=0"]
    assert [g["labels"]["defense"] for s in rep["sets"] for g in s["groups"]] == ["fedavg"] * 2
    assert "(the slice `--only defense=fedavg seed=0`)" in md
    assert main(["report", str(tmp_path), "--only", "defense=krum"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "fedsec: error: --only defense=krum: defense has no label 'krum'; its labels: "
        "fedavg, multi-metrics"
    )
