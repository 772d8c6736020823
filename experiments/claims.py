"""Check the claims of Huang et al. (ICCV 2023) against a report, regime by regime.

Reads a ``report.json`` that ``fedsec report`` wrote (rows = defenses, columns =
attacks; one set per value of any further axis, e.g. each regime of the regime map) and
prints, per set, one line per claim: HOLDS, FAILS or NOT SEPARATED. The claims, with one
threshold for every defense:

- the backdoor gets in (FedAvg under each attack; and the paper's failures: RFA,
  FoolsGold, Multi-Krum, Weak DP where its EMNIST table has BA >= 20): final BA
  above the same defense's no-attack baseline by more than 5 points;
- Multi-metrics (each variant) holds on every attack: BA at most 5 points above its
  no-attack baseline, and final MA at least FedAvg's no-attack MA minus 1 point;
- Multi-metrics ranks first by the ranking score: it leads and the paired score gap to
  every other defense is above 0 (per-seed scores).
- with ``--separation``, the paper's separation itself, directly: for each Multi-metrics
  variant, attack and other defense, Multi-metrics keeps out what that defense lets in:
  the other's BA above its baseline minus Multi-metrics', paired by seed, is more than 5
  points (the "gets in" threshold). Pairing the two gains seed by seed removes what a
  seed does to both (its partition, its attacker's data); each is one more claim of the
  family.

How a claim is decided (``fedsec.report.stats``): every comparison is paired by seed. Its
p-value is the two-sided paired Student's t test of the per-seed values against the
threshold (with identical seeds, which give no spread estimate, the exact sign-flip
test's); the p-values of all the claims of the report, every set together, are adjusted
by Holm's method, and a claim holds (or fails) only when its adjusted p is at most 0.05
and the mean lies on its side (or the other side) of the threshold: the family-wise error
of the whole table is at most 5%. Beside each verdict: the mean and its unadjusted 95% t
interval, "k/n" (seeds past the threshold on the claim's side), the exact sign-flip
(permutation) p, which needs no normality (its smallest value is 2 / 2^n: 0.25 with three
seeds), and from the per-seed spread the seeds a paired t test would need to separate an
effect of 5 and 10 points from the threshold with 80% power at the strictest Holm level
(0.05 / the number of claims).

    python experiments/claims.py experiments/results/cpu-table/report.json
    python experiments/claims.py --separation experiments/results/regimes/separation/report.json

With ``--table``, one markdown table instead: a row per claim, a column per set (regime),
each cell the verdict and the mean [interval] behind it, with k/n and the Holm-adjusted
p, for reading a claim across the regimes of a map (``experiments/results/REPRODUCTION.md``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedsec.paper import ATTACKS, paper_table
from fedsec.report.stats import (
    FAILS,
    HOLDS,
    NOT_SEPARATED,
    format_ci,
    holm,
    paired_difference,
    past_threshold,
    per_seed_values,
    seeds_needed,
    sign_flip_p,
    summarize,
    t_test_p,
)

MM_VARIANTS = ("multi-metrics", "multi-metrics-reference")
BACKDOOR_IN = 5.0  # points of BA above the no-attack baseline
MA_MARGIN = 1.0  # points of MA below FedAvg's no-attack MA
PAPER_FAILURE_BA = 20.0  # a paper cell with BA >= 20 is a failure of that defense
FAMILY_ALPHA = 0.05  # family-wise error of one claims table (Holm)
EFFECTS = (5.0, 10.0)  # points beyond the threshold, for the seeds-needed estimate
LABEL = {HOLDS: "HOLDS        ", FAILS: "FAILS        ", NOT_SEPARATED: "NOT SEPARATED"}
SHORT = {HOLDS: "holds", FAILS: "**fails**", NOT_SEPARATED: "not separated"}


@dataclass(frozen=True)
class Test:
    """One paired comparison against a threshold: the per-seed values, the threshold and
    the claim's side (``above``: the claim is that the quantity exceeds it)."""

    stat: dict[str, Any]
    threshold: float
    above: bool

    def p(self) -> float | None:
        """Two-sided p of the paired t test; the sign-flip test's with identical seeds."""
        values = self.stat["values"]
        p = t_test_p(values, self.threshold)
        return sign_flip_p(values, self.threshold) if p is None else p

    def on_claims_side(self) -> bool:
        mean = self.stat["mean"]
        return mean is not None and (
            mean > self.threshold if self.above else mean <= self.threshold
        )


@dataclass(frozen=True)
class Claim:
    """One checked claim: ``key`` names it the same way in every set (a table row),
    ``text`` is the full line, ``value`` the number behind the verdict. ``tests`` are
    its comparisons: it holds when every one of them is decided on its side (the ranking
    claim: the leader's gap to every other defense), so its p is their largest.
    ``verdict`` and ``adjusted_p`` are set by :func:`judge` over the whole table."""

    key: str
    text: str
    value: str
    tests: tuple[Test, ...] = ()
    negate: bool = False  # the claim is that the tests go the OTHER way (a rival leads)
    in_points: bool = True  # its values are accuracy points (not ranking scores)
    verdict: str = NOT_SEPARATED
    adjusted_p: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def p(self) -> float | None:
        ps = [t.p() for t in self.tests]
        return None if not ps or None in ps else max(ps)

    def details(self, family: int) -> str:
        """k/n, the sign-flip p, the Holm-adjusted p and the seeds needed (one test only)."""
        parts = []
        if len(self.tests) == 1:
            t = self.tests[0]
            values = t.stat["values"]
            k = past_threshold(values, t.threshold, t.above)
            side = "above" if t.above else "at or below"
            parts.append(f"{k}/{len(values)} seeds {side} {t.threshold:g}")
            flip = sign_flip_p(values, t.threshold)
            parts.append("sign-flip p " + ("-" if flip is None else f"{flip:.3g}"))
        parts.append("Holm p " + ("-" if self.adjusted_p is None else f"{self.adjusted_p:.3g}"))
        if len(self.tests) == 1 and self.in_points:
            stat = self.tests[0].stat
            # identical seeds (to float noise) have no spread to plan from
            std = None if stat.get("identical") else stat["std"]
            need = [seeds_needed(std, e, FAMILY_ALPHA / family) for e in EFFECTS]
            parts.append(
                "seeds for "
                + "/".join(f"{e:g}" for e in EFFECTS)
                + " points: "
                + "/".join(_seeds(n, std) for n in need)
            )
        return "; ".join(parts)


def _seeds(needed: int | None, std: float | None) -> str:
    if needed is not None:
        return str(needed)
    return "no spread" if not std else ">1000"


def judge(claims: list[Claim]) -> list[Claim]:
    """The verdicts of a whole table: Holm over every claim's p at family-wise
    ``FAMILY_ALPHA``; a rejected claim holds if its tests lie on its side, else fails."""
    adjusted = holm([c.p() for c in claims])
    out = []
    for claim, p in zip(claims, adjusted, strict=True):
        verdict = NOT_SEPARATED
        if p is not None and p <= FAMILY_ALPHA:
            sides = {t.on_claims_side() for t in claim.tests}
            if len(sides) == 1:
                verdict = HOLDS if sides.pop() != claim.negate else FAILS
        out.append(replace(claim, verdict=verdict, adjusted_p=p))
    return out


def fresh(stat: dict[str, Any]) -> dict[str, Any]:
    """A statistic recomputed from its per-seed values: a report.json written before a
    change of ``fedsec.report.stats`` (e.g. zero-width intervals) reads as today's."""
    return summarize(per_seed_values(stat))


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


def check_set(s: dict, separation: bool = False) -> list[Claim]:
    cells = {(g["row"], g["col"]): g for g in s["groups"]}
    attacks = [a for a in ATTACKS if any(col == a for _, col in cells)]
    out: list[Claim] = []

    def line(
        text: str, key: str, value: str, *tests: Test, negate: bool = False, points: bool = True
    ) -> None:
        out.append(Claim(key, text, value, tests, negate, in_points=points))

    for d, a in paper_failures():
        g = cells.get((d, a))
        if g is None or "ba_above_baseline" not in g:
            continue
        gain = fresh(g["ba_above_baseline"])
        line(
            f"{d}: the {a} backdoor gets in "
            f"(BA > {BACKDOOR_IN:g} points above {g['baseline']['col']}): {format_ci(gain)}",
            f"{d}: {a} gets in",
            format_ci(gain),
            Test(gain, BACKDOOR_IN, above=True),
        )
    for mm in MM_VARIANTS:
        for a in attacks:
            g = cells.get((mm, a))
            if g is None:
                continue
            if "ba_above_baseline" in g:
                gain = fresh(g["ba_above_baseline"])
                line(
                    f"{mm} keeps the {a} backdoor out (BA <= {BACKDOOR_IN:g} points above "
                    f"{g['baseline']['col']}): {format_ci(gain)}",
                    f"{mm} keeps {a} out",
                    format_ci(gain),
                    Test(gain, BACKDOOR_IN, above=False),
                )
            fed = cells.get(("fedavg", (g.get("baseline") or {}).get("col", "")))
            if fed is not None:
                drop = paired_difference(
                    per_seed_values(g["metrics"]["final_main_accuracy"]),
                    per_seed_values(fed["metrics"]["final_main_accuracy"]),
                )
                line(
                    f"{mm} keeps MA under {a} "
                    f"(within {MA_MARGIN:g} point of FedAvg's no-attack MA): "
                    f"difference {format_ci(drop)}",
                    f"{mm} keeps MA under {a}",
                    format_ci(drop),
                    Test(drop, -MA_MARGIN, above=True),
                )
    if separation:
        rivals = list(dict.fromkeys(row for row, _ in cells if row not in MM_VARIANTS))
        for a in attacks:
            for mm in MM_VARIANTS:
                ours = cells.get((mm, a))
                if ours is None or "ba_above_baseline" not in ours:
                    continue
                for d in rivals:
                    theirs = cells.get((d, a))
                    if theirs is None or "ba_above_baseline" not in theirs:
                        continue
                    gap = paired_difference(
                        per_seed_values(theirs["ba_above_baseline"]),
                        per_seed_values(ours["ba_above_baseline"]),
                    )
                    line(
                        f"{mm} keeps the {a} backdoor out where {d} lets it in ({d}'s BA "
                        f"gain minus {mm}'s > {BACKDOOR_IN:g} points): {format_ci(gap)}",
                        f"separation: {mm} vs {d} under {a}",
                        format_ci(gap),
                        Test(gap, BACKDOOR_IN, above=True),
                    )
    ranking = (s.get("ranking") or {}).get("per_seed")
    if ranking and ranking["first"]:
        first = ranking["first"]
        gaps = {
            e["defense"]: e.get("behind_leader") and fresh(e["behind_leader"])
            for e in ranking["defenses"]
        }
        for mm in MM_VARIANTS:
            if mm not in gaps:
                continue
            if first["defense"] == mm:
                # it ranks first when its gap to every other scored defense is above 0
                tests = [Test(g, 0.0, above=True) for d, g in gaps.items() if d != mm and g]
                value = f"leads {len(tests)} others"
                line(
                    f"{mm} ranks first by the ranking score: {value}",
                    f"{mm} ranks first",
                    value,
                    *tests,
                    points=False,
                )
            else:
                gap = gaps[mm]
                value = f"{first['defense']} leads by {format_ci(gap, 3)}"
                # the claim fails when the leader's gap over it is decided above 0
                line(
                    f"{mm} ranks first by the ranking score: {value}",
                    f"{mm} ranks first",
                    value,
                    *([Test(gap, 0.0, above=True)] if gap else []),
                    negate=True,
                    points=False,
                )
    return out


def check_report(report: dict, separation: bool = False) -> list[list[Claim]]:
    """Every set's claims, judged together: one family for the Holm correction."""
    per_set = [check_set(s, separation) for s in report["sets"]]
    judged = iter(judge([c for claims in per_set for c in claims]))
    return [[next(judged) for _ in claims] for claims in per_set]


def header(family: int) -> str:
    """The table's header line: how a claim of a ``family`` of claims is decided."""
    return (
        f"Verdicts: paired two-sided t test per claim (the exact sign-flip test where the "
        f"seeds are identical), Holm-corrected over the {family} claims of this table at "
        f"family-wise {FAMILY_ALPHA:g}; a claim holds or fails only when its adjusted p is at "
        "most that. Intervals: unadjusted 95% t over seeds; k/n: seeds past the threshold on "
        "the claim's side; sign-flip p: exact permutation test (smallest possible 2/2^n); "
        f"seeds for 5/10 points: a paired t test's seeds for 80% power at {FAMILY_ALPHA:g}/"
        f"{family}, from the per-seed spread."
    )


def verdict_table(report: dict, separation: bool = False) -> str:
    """Markdown: a row per claim (in first-seen order), a column per set; '-' where a
    set has no cell for that claim. Each cell: the verdict, the mean [interval], k/n
    seeds past the threshold and the Holm-adjusted p."""
    titles = [
        ", ".join(str(v) for v in s["extra"].values()) or report["name"] for s in report["sets"]
    ]
    judged = check_report(report, separation)
    claims = [{c.key: c for c in per_set} for per_set in judged]
    keys = list(dict.fromkeys(k for per_set in claims for k in per_set))
    lines = [
        header(sum(len(per_set) for per_set in judged)),
        "",
        "| claim | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(titles),
    ]

    def cell(c: Claim) -> str:
        extra = []
        if len(c.tests) == 1:
            t = c.tests[0]
            extra.append(f"{past_threshold(t.stat['values'], t.threshold, t.above)}/{t.stat['n']}")
        extra.append("p " + ("-" if c.adjusted_p is None else f"{c.adjusted_p:.2g}"))
        return f"{SHORT[c.verdict]}: {c.value} ({', '.join(extra)})"

    for key in keys:
        row = [cell(c) if (c := per_set.get(key)) else "-" for per_set in claims]
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json (rows defense, columns attack)")
    parser.add_argument(
        "--table", action="store_true", help="one markdown table: claims x sets (regimes)"
    )
    parser.add_argument(
        "--separation",
        action="store_true",
        help="also the paper's separation, paired: each Multi-metrics variant against "
        "every other defense, per attack",
    )
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    if args.table:
        print(verdict_table(report, args.separation))
        return
    c = report["counts"]
    print(
        f"{report['name']}: {c['finished']} of {c['total']} runs finished; "
        f"{report.get('statistics', 'statistics over seeds')}"
    )
    judged = check_report(report, args.separation)
    family = sum(len(c) for c in judged)
    print(header(family))
    for s, claims in zip(report["sets"], judged, strict=True):
        title = ", ".join(f"{k}={v}" for k, v in s["extra"].items())
        if title:
            print(f"\n[{title}]")
        for claim in claims:
            print(f"{LABEL[claim.verdict]}  {claim.text} ({claim.details(family)})")
        ranking = s.get("ranking")
        if ranking:
            # ordered by the mean of the per-seed scores, the number the interval is about
            # (the pooled score of the mean cells can order them differently)
            scored = [e for e in ranking["per_seed"]["defenses"] if e["score"]["n"]]
            scored.sort(key=lambda e: -e["score"]["mean"])
            print(
                "ranking score (mean [95% interval over seeds]; ranks per seed): "
                + "; ".join(
                    f"{i}. {e['defense']} {format_ci(fresh(e['score']), 3)} "
                    f"({', '.join(str(r) for r in e['ranks'].values()) or '-'})"
                    for i, e in enumerate(scored, 1)
                )
            )


if __name__ == "__main__":
    main()
