"""A rerun beside the committed report: which cells moved, seed by seed.

Reads two ``report.json`` files that ``fedsec report`` wrote for the same sweep, a
committed one (``old``) and a rerun of some of its cells (``new``, e.g. ``fedsec sweep
... --only defense=krum``), matches their cells by labels, and prints one markdown row
per cell both hold runs of: the final MA and final BA per seed (old -> new), the paired
differences the studies judge (MA lost to the attack, ``ma_drop``; BA above the
no-attack baseline, ``ba_above_baseline``) as mean [95% t interval] old -> new, and the
largest change of any per-seed value in the row. Then a count of the cells whose
numbers did not change at all. A cell the rerun's sweep lists but did not run (a report of
``--only`` a few cells still names the sweep's others, with no runs) is not compared.

Written for issue 29's Krum and Bulyan reruns (the pre-fix float32 pairwise distances):

    python experiments/compare_reports.py experiments/results/robustness/report.json \\
        experiments/results/robustness/krum-bulyan/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedsec.report.stats import format_ci

#: (key in a group's metrics, column) of the per-seed values compared.
VALUES = (("final_main_accuracy", "final MA"), ("final_backdoor_accuracy", "final BA"))
#: (key in a group, column) of the paired differences compared.
DIFFERENCES = (("ma_drop", "MA lost"), ("ba_above_baseline", "BA - baseline"))


def groups(report: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Every group of every set, keyed by its labels and its set's extra labels (a label
    both carry, e.g. the regime, once)."""
    out = {}
    for s in report["sets"]:
        for g in s["groups"]:
            out[tuple(sorted({**(s.get("extra") or {}), **g["labels"]}.items()))] = g
    return out


def per_seed(group: dict[str, Any], key: str) -> dict[str, float]:
    block = group["metrics"].get(key) or {}
    return dict(zip(block.get("seeds") or [], block.get("values") or [], strict=True))


def _values(old: dict[str, float], new: dict[str, float]) -> str:
    if not old and not new:
        return "-"
    seeds = sorted(set(old) | set(new), key=int)
    return ", ".join(f"{_num(old.get(s))} -> {_num(new.get(s))}" for s in seeds)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _difference(block: dict[str, Any] | None) -> str:
    if not block or not block.get("n"):
        return "-"
    return format_ci(block)


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], int, int]:
    """The table's rows, the number of cells compared and of those unchanged."""
    old_groups, new_groups = groups(old), groups(new)
    both = sorted(
        key
        for key in set(old_groups) & set(new_groups)
        if old_groups[key].get("n") and new_groups[key].get("n")
    )
    rows, unchanged = [], 0
    for key in both:
        a, b = old_groups[key], new_groups[key]
        largest = 0.0
        cells = []
        for metric, _ in VALUES:
            x, y = per_seed(a, metric), per_seed(b, metric)
            for seed in set(x) & set(y):
                largest = max(largest, abs(x[seed] - y[seed]))
            cells.append(_values(x, y))
        for field, _ in DIFFERENCES:
            cells.append(f"{_difference(a.get(field))} -> {_difference(b.get(field))}")
        unchanged += largest == 0.0
        label = ", ".join(f"{k}={v}" for k, v in key)
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {largest:.1f} |")
    return rows, len(both), unchanged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the committed report.json")
    parser.add_argument("new", type=Path, help="the rerun's report.json")
    args = parser.parse_args(argv)
    old, new = (json.loads(p.read_text()) for p in (args.old, args.new))
    rows, compared, unchanged = compare(old, new)
    head = [c for _, c in VALUES] + [c for _, c in DIFFERENCES]
    print(f"Old: `{args.old}`; new: `{args.new}`. Per seed old -> new; differences as")
    print("mean [95% t interval] over seeds, old -> new; last column: the largest change")
    print("of a per-seed value in the row, points.\n")
    print("| cell | " + " | ".join(head) + " | largest change |")
    print("|---" * (len(head) + 2) + "|")
    print("\n".join(rows))
    print(
        f"\n{compared} cells with runs in both reports; "
        f"{unchanged} unchanged in every per-seed value."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
