"""Check the claims of Huang et al. (ICCV 2023) against a report, regime by regime.

Reads a ``report.json`` that ``fedsec report`` wrote (rows = defenses, columns =
attacks; one set per value of any further axis, e.g. each regime of the regime map) and
prints, per set, one line per claim: HOLDS, FAILS or NOT SEPARATED, with the mean and
the Student's t 95% interval over seeds behind it (``fedsec.report.stats``; every
comparison is paired by seed). A claim holds only when the whole interval is on its
side of the threshold; when the interval straddles it, the seeds cannot decide and the
claim is "not separated". The claims, with one threshold for every defense:

- the backdoor gets in (FedAvg under each attack; and the paper's failures: RFA,
  FoolsGold, Multi-Krum, Weak DP where its EMNIST table has BA >= 20): final BA
  above the same defense's no-attack baseline by more than 5 points;
- Multi-metrics (each variant) holds on every attack: BA at most 5 points above its
  no-attack baseline, and final MA at least FedAvg's no-attack MA minus 1 point;
- Multi-metrics ranks first by the ranking score: it leads and the paired interval of
  the score gap to every other defense lies above 0 (per-seed scores).

    python experiments/claims.py experiments/results/cpu-table/report.json

With ``--table``, one markdown table instead: a row per claim, a column per set (regime),
each cell the verdict and the mean [interval] behind it, for reading a claim across the
regimes of a map (``experiments/results/REPRODUCTION.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

from fedsec.paper import ATTACKS, paper_table
from fedsec.report.stats import (
    FAILS,
    HOLDS,
    NOT_SEPARATED,
    format_ci,
    paired_difference,
    per_seed_values,
    verdict_at_least,
    verdict_at_most,
)

MM_VARIANTS = ("multi-metrics", "multi-metrics-reference")
BACKDOOR_IN = 5.0  # points of BA above the no-attack baseline
MA_MARGIN = 1.0  # points of MA below FedAvg's no-attack MA
PAPER_FAILURE_BA = 20.0  # a paper cell with BA >= 20 is a failure of that defense
LABEL = {HOLDS: "HOLDS        ", FAILS: "FAILS        ", NOT_SEPARATED: "NOT SEPARATED"}
SHORT = {HOLDS: "holds", FAILS: "**fails**", NOT_SEPARATED: "not separated"}


class Claim(NamedTuple):
    """One checked claim: ``key`` names it the same way in every set (a table row),
    ``text`` is the full line, ``value`` the number behind the verdict."""

    key: str
    verdict: str
    text: str
    value: str


def paper_failures() -> list[tuple[str, str]]:
    """(defense, attack) where the paper's EMNIST table has the backdoor in (BA >= 20),
    for the baselines the paper says fail."""
    table = paper_table("emnist")
    return [
        (d, a)
        for d in ("fedavg", "rfa", "foolsgold", "multi-krum", "weak-dp")
        for a in ATTACKS
        if table[d][a][1] >= PAPER_FAILURE_BA
    ]


def check_set(s: dict) -> list[Claim]:
    cells = {(g["row"], g["col"]): g for g in s["groups"]}
    attacks = [a for a in ATTACKS if any(col == a for _, col in cells)]
    out: list[Claim] = []

    def line(verdict: str, text: str, key: str, value: str) -> None:
        out.append(Claim(key, verdict, text, value))

    for d, a in paper_failures():
        g = cells.get((d, a))
        if g is None or "ba_above_baseline" not in g:
            continue
        gain = g["ba_above_baseline"]
        line(
            verdict_at_least(gain, BACKDOOR_IN),
            f"{d}: the {a} backdoor gets in "
            f"(BA > {BACKDOOR_IN:g} points above {g['baseline']['col']}): {format_ci(gain)}",
            f"{d}: {a} gets in",
            format_ci(gain),
        )
    for mm in MM_VARIANTS:
        for a in attacks:
            g = cells.get((mm, a))
            if g is None:
                continue
            if "ba_above_baseline" in g:
                gain = g["ba_above_baseline"]
                line(
                    verdict_at_most(gain, BACKDOOR_IN),
                    f"{mm} keeps the {a} backdoor out (BA <= {BACKDOOR_IN:g} points above "
                    f"{g['baseline']['col']}): {format_ci(gain)}",
                    f"{mm} keeps {a} out",
                    format_ci(gain),
                )
            fed = cells.get(("fedavg", (g.get("baseline") or {}).get("col", "")))
            if fed is not None:
                drop = paired_difference(
                    per_seed_values(g["metrics"]["final_main_accuracy"]),
                    per_seed_values(fed["metrics"]["final_main_accuracy"]),
                )
                line(
                    verdict_at_least(drop, -MA_MARGIN),
                    f"{mm} keeps MA under {a} "
                    f"(within {MA_MARGIN:g} point of FedAvg's no-attack MA): "
                    f"difference {format_ci(drop)}",
                    f"{mm} keeps MA under {a}",
                    format_ci(drop),
                )
    ranking = (s.get("ranking") or {}).get("per_seed")
    if ranking and ranking["first"]:
        first = ranking["first"]
        gaps = {e["defense"]: e.get("behind_leader") for e in ranking["defenses"]}
        for mm in MM_VARIANTS:
            if mm not in gaps:
                continue
            if first["defense"] == mm:
                verdict = first["verdict"]
                detail = (
                    "separated from every other defense"
                    if verdict == HOLDS
                    else f"leads, not separated from {', '.join(first['not_separated_from'])}"
                )
            else:
                gap = gaps[mm]
                verdict = FAILS if gap and gap["ci"] and gap["ci"][0] > 0 else NOT_SEPARATED
                detail = f"{first['defense']} leads by {format_ci(gap, 3)}"
            line(
                verdict,
                f"{mm} ranks first by the ranking score: {detail}",
                f"{mm} ranks first",
                "leads"
                if first["defense"] == mm
                else f"{first['defense']} leads by {format_ci(gap, 3)}",
            )
    return out


def verdict_table(report: dict) -> str:
    """Markdown: a row per claim (in first-seen order), a column per set; '-' where a
    set has no cell for that claim."""
    titles = [
        ", ".join(str(v) for v in s["extra"].values()) or report["name"] for s in report["sets"]
    ]
    claims = [{c.key: c for c in check_set(s)} for s in report["sets"]]
    keys = list(dict.fromkeys(k for per_set in claims for k in per_set))
    lines = [
        "| claim | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(titles),
    ]
    for key in keys:
        row = [
            f"{SHORT[c.verdict]}: {c.value}" if (c := per_set.get(key)) else "-"
            for per_set in claims
        ]
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json (rows defense, columns attack)")
    parser.add_argument(
        "--table", action="store_true", help="one markdown table: claims x sets (regimes)"
    )
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    if args.table:
        print(verdict_table(report))
        return
    c = report["counts"]
    print(
        f"{report['name']}: {c['finished']} of {c['total']} runs finished; "
        f"{report.get('statistics', 'statistics over seeds')}"
    )
    for s in report["sets"]:
        title = ", ".join(f"{k}={v}" for k, v in s["extra"].items())
        if title:
            print(f"\n[{title}]")
        for claim in check_set(s):
            print(f"{LABEL[claim.verdict]}  {claim.text}")
        ranking = s.get("ranking")
        if ranking:
            # ordered by the mean of the per-seed scores, the number the interval is about
            # (the pooled score of the mean cells can order them differently)
            scored = [e for e in ranking["per_seed"]["defenses"] if e["score"]["n"]]
            scored.sort(key=lambda e: -e["score"]["mean"])
            print(
                "ranking score (mean [95% interval over seeds]; ranks per seed): "
                + "; ".join(
                    f"{i}. {e['defense']} {format_ci(e['score'], 3)} "
                    f"({', '.join(str(r) for r in e['ranks'].values()) or '-'})"
                    for i, e in enumerate(scored, 1)
                )
            )


if __name__ == "__main__":
    main()
