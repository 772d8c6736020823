"""A run directory: the resolved config, one JSON line per round, and a summary.

Layout::

    RUN_DIR/config.toml     the resolved experiment (every key, defaults included)
    RUN_DIR/metrics.jsonl   one JSON object per round, appended and flushed as it ends
    RUN_DIR/summary.json    final numbers, seed, config, package versions, wall time
    RUN_DIR/model.pt        the final global model (state dict)

Nothing is rewritten in place: a run killed midway leaves every finished round on disk.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fedsec.config import ExperimentConfig

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    versions = {"python": platform.python_version()}
    for name in ("fedsec", "flwr", "torch", "numpy", "scipy", "scikit-learn", "flwr-datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunWriter:
    """Writes one run directory as the run goes.

    Parameters
    ----------
    out_dir : str or Path
        The run directory; created if needed.
    config : ExperimentConfig
        The resolved experiment, written to ``config.toml`` at once.
    keep_rounds : int
        Rounds of an existing ``metrics.jsonl`` to keep (a resumed run keeps those up to
        its checkpoint and drops later ones, which it runs again); 0 starts afresh.
    """

    def __init__(self, out_dir: str | Path, config: ExperimentConfig, keep_rounds: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / CONFIG_FILE, config.to_toml())
        metrics = self.out_dir / METRICS_FILE
        kept = [r for r in read_metrics(metrics) if r["round"] <= keep_rounds]
        atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
        self.elapsed_before = kept[-1].get("time_s", 0.0) if kept else 0.0
        self._started = time.time() - self.elapsed_before

    def log_round(self, record: dict[str, Any]) -> None:
        """Append one round's record and flush it to disk."""
        with (self.out_dir / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        rounds = read_metrics(self.out_dir / METRICS_FILE)
        summary = {
            "rounds": len(rounds),
            "seed": self.config.seed,
            "wall_time_s": round(time.time() - self._started, 3),
            **summarize_rounds(rounds),
            **extra,
            "config": self.config.to_dict(),
            "versions": package_versions(),
        }
        atomic_write_text(self.out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        return summary


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best value of each accuracy that the rounds recorded."""
    out: dict[str, Any] = {}
    for key in ("main_accuracy", "backdoor_accuracy"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            out[f"final_{key}"] = values[-1]
            out[f"best_{key}" if key == "main_accuracy" else f"max_{key}"] = max(values)
    counts = {k: sum(r.get(k, 0) for r in rounds)
              for k in ("true_positives", "false_positives", "false_negatives", "true_negatives")}
    if any(k in r for r in rounds for k in counts):
        tp, fp, fn, tn = counts.values()
        out["detection"] = {
            **counts,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "false_positive_rate": fp / (fp + tn) if fp + tn else None,
        }
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rounds of a metrics.jsonl; a torn last line (a killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rounds = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the writer died mid-line; every earlier round is whole
            raise
    return rounds


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
