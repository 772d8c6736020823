"""Run directories: per-round lines flushed as they end, torn last line tolerated."""

import json

from fedsec.config import ExperimentConfig
from fedsec.results import RunWriter, read_metrics


def test_writer_appends_rounds_and_summarizes(tmp_path):
    writer = RunWriter(tmp_path / "run", ExperimentConfig())
    for r, acc in enumerate([0.5, 0.9, 0.8], start=1):
        writer.log_round({"round": r, "main_accuracy": acc})
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
