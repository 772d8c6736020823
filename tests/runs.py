"""Helpers the end-to-end tests share: run the CLI, read a run's rounds."""

from __future__ import annotations

from pathlib import Path

from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.results import read_metrics


def run_cli(out: Path, overrides: list[str]) -> None:
    """``fedsec run fedsec/default.toml --out OUT --set ...`` in this process; fails the
    test unless it succeeds."""
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0


def rounds_without_time(run_dir: Path) -> list[dict]:
    """The rounds of ``run_dir``'s metrics.jsonl without wall-clock times."""
    return [{k: v for k, v in r.items() if k != "time_s"}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl")]
