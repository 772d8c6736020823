"""The DBA study's numbers from a ``fedsec report`` of its sweeps: per cell, and paired by seed.

Reads ``report.json`` and prints, as markdown, one row per cell (defense x attack): the
final backdoor accuracy (BA) per seed with its mean and 95% t interval, the gain (final
BA above the same defense's no-attack run, same seed), the final main accuracy (MA) and
the attacker's weight as a share of FedAvg's weighted-by-examples weight. Then the
paired comparisons the README reads, each per seed, with the t interval, the two-sided
t and exact sign-flip p-values and how many seeds are above 0:

- per defense, the distributed backdoor's final BA minus the centralized one's (the
  paper's persistence claim: positive where DBA lasts longer);
- per ``--versus A=B`` and per attack, defense A's final BA minus defense B's (e.g.
  ``fedavg-equal=fedavg``: FedAvg weighted equally against FedAvg weighted by examples).

    python experiments/dba/persistence.py experiments/results/dba/report.json \\
        --versus fedavg-equal=fedavg --json experiments/results/dba/persistence.json

Several reports may be given: their cells are read together, so a sweep reported on its
own pairs with one reported earlier (``--versus fedavg-mnist=fedavg-scratch`` across
``scratch/report.json`` and ``mnist/report.json``) without its runs on this machine. A
cell (defense x attack) may be in one report only.

``--json`` writes every number printed, unrounded: prose copies from that file.

``--at-round R`` reads the BA of round R instead of the final round, from each run's
metrics.jsonl in the directories report.json names (the runs must be on this machine):
the multiple-shot attack's claims are made at a round during the attack (the paper's
round 30, 20 rounds into it). The gain over the no-attack run is then left out (report.json
has it at the final round only); the no-attack cell's own row gives its BA at R.

    python experiments/dba/persistence.py experiments/results/dba/multi-shot/report.json \
        --at-round 20 --json experiments/results/dba/multi-shot/round-20.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedsec.report.stats import (
    format_ci,
    paired_difference,
    past_threshold,
    per_seed_values,
    sign_flip_p,
    summarize,
    t_test_p,
)
from fedsec.results import METRICS_FILE, read_rounds

DISTRIBUTED, CENTRALIZED = "distributed", "centralized"


def cells(reports: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(defense, attack): group}`` over every set of the reports; a cell in two reports
    is an error (which of its runs to pair would be a guess)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        for s in report["sets"]:
            for g in s["groups"]:
                key = (g["row"], g["col"])
                if key in groups:
                    raise ValueError(
                        f"cell {key[0]}/{key[1]} is in more than one report; "
                        "give each cell's report once"
                    )
                groups[key] = g
    return groups


def at_round(report: dict[str, Any], server_round: int) -> None:
    """Put each group's BA at ``server_round`` in place of its final BA (percent, as
    report.json has it), read from the runs' metrics.jsonl; drop the final-round gain."""
    run_dir = {run["id"]: Path(run["dir"]) for run in report["runs"]}
    seed_of = {run["id"]: run["labels"][report["seed_axis"]] for run in report["runs"]}
    for s in report["sets"]:
        for group in s["groups"]:
            values = {}
            for run_id in group["runs"]:
                rounds = read_rounds(run_dir[run_id] / METRICS_FILE)
                record = next((r for r in rounds if r.round == server_round), None)
                if record is None or record.backdoor_accuracy is None:
                    raise SystemExit(
                        f"{run_dir[run_id]}: no backdoor accuracy at round {server_round}"
                    )
                values[seed_of[run_id]] = 100.0 * record.backdoor_accuracy
            group["metrics"]["final_backdoor_accuracy"] = summarize(values)
            group.pop("ba_above_baseline", None)


def cell_numbers(group: dict[str, Any]) -> dict[str, Any]:
    metrics = group["metrics"]
    numbers = {
        "final_backdoor_accuracy": summarize(per_seed_values(metrics["final_backdoor_accuracy"])),
        "final_main_accuracy": summarize(per_seed_values(metrics["final_main_accuracy"])),
    }
    gain = group.get("ba_above_baseline")
    if gain and gain.get("n"):
        numbers["gain"] = gain
    weight = metrics.get("attacker_weight", {})
    if weight.get("values"):
        numbers["attacker_weight"] = summarize(per_seed_values(weight))
    return numbers


def comparison(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a - b`` of the final BA, paired by seed."""
    diff = paired_difference(
        per_seed_values(a["metrics"]["final_backdoor_accuracy"]),
        per_seed_values(b["metrics"]["final_backdoor_accuracy"]),
    )
    values = diff["values"]
    return {
        **diff,
        "t_p": t_test_p(values),
        "sign_flip_p": sign_flip_p(values),
        "above_zero": past_threshold(values, 0.0, True),
    }


def per_seed(stat: dict[str, Any]) -> str:
    return ", ".join(f"{v:.1f}" for v in stat["values"])


def pvalue(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "reports", type=Path, nargs="+", metavar="report", help="report.json of `fedsec report`"
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="A=B",
        help="compare defense A with defense B attack by attack (final BA, A - B)",
    )
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    parser.add_argument(
        "--at-round",
        type=int,
        metavar="R",
        help="the BA of round R instead of the final round's (from the runs' metrics.jsonl)",
    )
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    if args.at_round is not None:
        for report in reports:
            at_round(report, args.at_round)
    try:
        groups = cells(reports)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    rows = sorted({d for d, _ in groups})
    versus = []
    for spec in args.versus:
        a, sep, b = spec.partition("=")
        if not sep or a not in rows or b not in rows:
            print(f"--versus {spec!r}: expected A=B with A and B among {rows}", file=sys.stderr)
            return 2
        versus.append((a, b))

    out: dict[str, Any] = {
        # one path as before; several as a list
        "report": str(args.reports[0])
        if len(args.reports) == 1
        else [str(p) for p in args.reports],
        "backdoor_accuracy_at": "final round" if args.at_round is None else args.at_round,
        "cells": {},
        "comparisons": {},
    }
    which = "final BA" if args.at_round is None else f"BA at round {args.at_round}"
    print(f"| defense | attack | {which} per seed | {which} | gain | final MA | attacker weight |")
    print("|---|---|---|---|---|---|---|")
    for (defense, attack), group in sorted(groups.items()):
        numbers = cell_numbers(group)
        out["cells"][f"{defense}/{attack}"] = numbers
        ba = numbers["final_backdoor_accuracy"]
        gain = format_ci(numbers["gain"]) if "gain" in numbers else "-"
        weight = numbers.get("attacker_weight")
        weight_text = ", ".join(f"{v:.2f}%" for v in weight["values"]) if weight else "-"
        print(
            f"| {defense} | {attack} | {per_seed(ba)} | {format_ci(ba)} | {gain} | "
            f"{format_ci(numbers['final_main_accuracy'])} | {weight_text} |"
        )

    pairs = [
        (f"{d}: {DISTRIBUTED} - {CENTRALIZED}", (d, DISTRIBUTED), (d, CENTRALIZED)) for d in rows
    ] + [
        (f"{attack}: {a} - {b}", (a, attack), (b, attack))
        for a, b in versus
        for attack in sorted({c for d, c in groups if d == a})
    ]
    print()
    print(f"| {which}, paired by seed | per seed | mean [95% t] | t p | sign-flip p | above 0 |")
    print("|---|---|---|---|---|---|")
    for label, first, second in pairs:
        if first not in groups or second not in groups:
            continue
        result = comparison(groups[first], groups[second])
        if not result["n"]:
            continue
        out["comparisons"][label] = result
        print(
            f"| {label} | {per_seed(result)} | {format_ci(result)} | {pvalue(result['t_p'])} | "
            f"{pvalue(result['sign_flip_p'])} | {result['above_zero']} of {result['n']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
