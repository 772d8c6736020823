"""The robustness matrix as two tables: where each defense holds and where it breaks.

Reads the ``report.json`` that ``fedsec report runs/robustness`` wrote and prints two
markdown tables, a row per defense:

- untargeted attacks: final MA lost against the same defense's no-attack run;
- backdoors: final BA above the same defense's no-attack run on the same backdoor
  inputs, and the share of attack rounds in which the defense kept an attacker.

Each cell is the mean [Student's t 95% interval] over seeds, paired by seed
(``fedsec.report.stats``), judged against one threshold for every defense, 5 points:
**bold** when the whole interval lies above it (the attack breaks the defense), plain
when it lies at or below it (the defense holds), _italic_ when it straddles it or when
the seeds are identical (not separated: no interval). A cell with fewer than its 3 seeds
shows ``-``.

    python experiments/robustness/summary.py experiments/results/robustness/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedsec.report.stats import (
    FAILS,
    HOLDS,
    format_ci,
    per_seed_values,
    summarize,
    verdict_at_most,
)

THRESHOLD = 5.0  # points of MA lost, or of BA above the no-attack baseline
UNTARGETED = (
    "gaussian",
    "sign-flip",
    "alie-partial",
    "alie-full",
    "ipm-partial",
    "ipm-full",
    "min-max-partial",
    "min-max-full",
    "min-sum-partial",
    "min-sum-full",
)
BACKDOORS = (
    "edge-case-pgd",
    "edge-case-pgd-scaling-partial",
    "edge-case-pgd-scaling-full",
    "edge-case-pgd-multi-metrics",
    "dba",
    "a3fl",
)


def judged(stat: dict | None) -> str:
    """``mean [low, high]``, bold / plain / italic by its verdict against the threshold.

    The interval is recomputed from the per-seed values (``summarize``), so a cell of
    identical seeds, which older report.json files hold with a zero-width interval,
    reads "(3 identical seeds, no interval)" and not separated, never as a hold."""
    if not stat or not stat.get("n") or stat["n"] < stat.get("n_expected", stat["n"]):
        return "-"
    stat = summarize(per_seed_values(stat))
    text = format_ci(stat)
    verdict = verdict_at_most(stat, THRESHOLD)
    return text if verdict == HOLDS else f"**{text}**" if verdict == FAILS else f"_{text}_"


def tables(report: dict) -> str:
    groups = {(g["row"], g["col"]): g for s in report["sets"] for g in s["groups"]}
    defenses = list(dict.fromkeys(g["row"] for g in groups.values()))

    def stat(defense: str, attack: str, key: str) -> dict | None:
        group = groups.get((defense, attack))
        if group is None or group["n"] < group["n_expected"]:
            return None
        return group.get(key) or group["metrics"].get(key)

    def kept(defense: str, attack: str) -> str:
        acceptance = stat(defense, attack, "acceptance")
        if not acceptance or acceptance.get("mean") is None:
            return ""
        return f", kept {acceptance['mean']:.0f}%"

    lines = [
        "MA lost against the no-attack run (points):",
        "",
        "| defense | " + " | ".join(UNTARGETED) + " |",
        "|---" * (len(UNTARGETED) + 1) + "|",
    ]
    for d in defenses:
        cells = [judged(stat(d, a, "ma_drop")) for a in UNTARGETED]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "BA above the no-attack run (points), and the attack rounds in which the defense "
        "kept an attacker:",
        "",
        "| defense | " + " | ".join(BACKDOORS) + " |",
        "|---" * (len(BACKDOORS) + 1) + "|",
    ]
    for d in defenses:
        cells = []
        for a in BACKDOORS:
            text = judged(stat(d, a, "ba_above_baseline"))
            cells.append(text if text == "-" else text + kept(d, a))
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    counts = report["counts"]
    lines += ["", f"{counts['finished']} of {counts['total']} runs finished."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.json of fedsec report")
    args = parser.parse_args()
    print(tables(json.loads(args.report.read_text())))


if __name__ == "__main__":
    main()
