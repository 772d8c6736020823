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


def stat(*values, ci=None):
    """A report.json statistic of per-seed ``values``; ``ci`` as a report stored it (the
    summary recomputes it from the values)."""
    seeds = [str(i) for i in range(len(values))]
    mean = sum(values) / len(values)
    return {"mean": mean, "n": len(values), "values": list(values), "seeds": seeds, "ci": ci}


def group(defense, attack, n=3, **stats):
    metrics = {"acceptance": stats.pop("acceptance")} if "acceptance" in stats else {}
    return {"row": defense, "col": attack, "n": n, "n_expected": 3, "metrics": metrics, **stats}


def test_each_cell_is_bold_plain_or_italic_by_where_its_interval_lies():
    report = {
        "counts": {"finished": 10, "total": 12},
        "sets": [
            {
                "groups": [
                    group("median", "gaussian", ma_drop=stat(10.0, 12.0, 14.0)),  # breaks
                    group("median", "sign-flip", ma_drop=stat(0.0, 0.1, 0.2)),  # holds
                    group("median", "alie-full", ma_drop=stat(2.0, 4.0, 6.0)),  # straddles
                    # identical seeds: a stored zero-width interval is no hold
                    group("median", "ipm-partial", ma_drop=stat(0.0, 0.0, 0.0, ci=[0.0, 0.0])),
                    group("median", "ipm-full", n=2, ma_drop=stat(30.0, 40.0)),
                    group(
                        "median",
                        "edge-case-pgd",
                        ba_above_baseline=stat(50.0, 60.0, 70.0),
                        acceptance=stat(10.0, 40.0, 70.0),
                    ),
                ]
            }
        ],
    }
    text = load_summary().tables(report).splitlines()
    untargeted, backdoor = (line for line in text if line.startswith("| median |"))
    cells = [c.strip() for c in untargeted.strip("|").split("|")]
    # t(0.975, 2) = 4.3027: 12 +- 4.97, 0.1 +- 0.25, 4 +- 4.97, 60 +- 24.8
    assert cells[1:6] == [
        "**12.0 [7.0, 17.0]**",
        "0.1 [-0.1, 0.3]",
        "-",
        "_4.0 [-1.0, 9.0]_",
        "_0.0 (3 identical seeds, no interval)_",
    ]
    assert cells[6] == "-"  # ipm-full: 2 of its 3 seeds
    assert "**60.0 [35.2, 84.8]**, kept 40%" in backdoor
    assert text[-1] == "10 of 12 runs finished."
