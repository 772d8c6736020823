"""experiments/robustness/summary.py: the matrix's cells judged against 5 points."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def load_summary():
    path = Path(__file__).resolve().parents[1] / "experiments" / "robustness" / "summary.py"
    spec = importlib.util.spec_from_file_location("robustness_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stat(mean, low, high, n=3):
    return {"mean": mean, "n": n, "ci": [low, high]}


def group(defense, attack, n=3, **stats):
    metrics = {"acceptance": stats.pop("acceptance")} if "acceptance" in stats else {}
    return {"row": defense, "col": attack, "n": n, "n_expected": 3, "metrics": metrics, **stats}


def test_each_cell_is_bold_plain_or_italic_by_where_its_interval_lies():
    report = {
        "counts": {"finished": 10, "total": 12},
        "sets": [
            {
                "groups": [
                    group("median", "gaussian", ma_drop=stat(12.0, 6.0, 18.0)),  # breaks
                    group("median", "sign-flip", ma_drop=stat(0.1, -0.2, 0.4)),  # holds
                    group("median", "alie-full", ma_drop=stat(4.0, -1.0, 9.0)),  # straddles
                    group("median", "ipm-full", n=2, ma_drop=stat(30.0, 20.0, 40.0, n=2)),
                    group(
                        "median",
                        "edge-case-pgd",
                        ba_above_baseline=stat(60.0, 50.0, 70.0),
                        acceptance=stat(40.0, 10.0, 70.0),
                    ),
                ]
            }
        ],
    }
    text = load_summary().tables(report).splitlines()
    untargeted, backdoor = (line for line in text if line.startswith("| median |"))
    cells = [c.strip() for c in untargeted.strip("|").split("|")]
    assert cells[1:5] == ["**12.0 [6.0, 18.0]**", "0.1 [-0.2, 0.4]", "-", "_4.0 [-1.0, 9.0]_"]
    assert cells[7] == "-"  # ipm-full: 2 of its 3 seeds
    assert "**60.0 [50.0, 70.0]**, kept 40%" in backdoor
    assert text[-1] == "10 of 12 runs finished."
