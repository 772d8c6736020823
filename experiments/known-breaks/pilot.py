"""The pilot of the known-breaks sweep: what each attack cost, and how many seeds the
full sweep needs.

Reads a ``fedsec sweep`` output of this folder's sweeps (any slice), pairs every attack
cell with its regime's and defense's no-attack cell (``attack=none``, or the label that
``--baseline`` names) seed by seed, and prints one markdown row per cell: the final
main accuracy (MA) per seed, the MA lost to
the attack per seed and its mean with the 95% t interval over seeds, and, from the
per-seed spread of that loss, the seeds a paired two-sided t test would need (80%
power, ``fedsec.report.stats.seeds_needed``) to separate a loss of 5 or 10 points
beyond the 5-point "breaks" threshold at the strictest Holm level of the whole sweep
(0.05 / its number of attack cells: the (regime, defense, attack) cells of the sweep's
``sweep.json``, which lists the whole grid whatever slice ran, that are not the
baseline; ``--cells N`` sets another family, e.g. ``--cells 143``, sweep.toml's, for a
side study planned as part of the main sweep's family). A cell with one seed has no
spread of its own: it is planned with the pooled standard deviation of the cells that
have two or more (marked "pooled").

    python experiments/known-breaks/pilot.py runs/known-breaks-pilot --json pilot.json

``--versus A=B`` (repeatable) adds, for every regime and attack that both defenses
``A`` and ``B`` ran, the paired difference of their MA lost (A's minus B's, seed by
seed) with its 95% t interval: whether one rule loses more than another to the same
attack.

``--json`` also writes the table's numbers (unrounded) to a file, the machine-readable
record that prose quoting the pilot copies from. ``--best`` uses the papers' end point
instead of the final MA: the best MA the run reached in any round (ALIE's Table 1,
"maximal accuracy"; NDSS'21's attack impact is the drop of the best global model's
accuracy), so a cell reads like the papers' tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fedsec.report.stats import format_ci, seeds_needed, summarize
from fedsec.results import METRICS_FILE, read_rounds

THRESHOLD = 5.0  # points of MA lost: the robustness matrix's "breaks"
EFFECTS = (5.0, 10.0)  # beyond the threshold


def final_accuracy(run_dir: Path, last: int = 1, best: bool = False) -> float | None:
    """The run's MA in points: at the end, the final round's (``last = 1``) or the mean
    over its last ``last`` rounds (a steadier end point where the MA dips and recovers
    from round to round); with ``best``, the highest MA of any round (the papers' end
    point). None when the run has not finished."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    if last == 1 and not best:
        return 100.0 * float(json.loads(summary.read_text())["final_main_accuracy"])
    values = [r.main_accuracy for r in read_rounds(run_dir / METRICS_FILE)]
    values = [v for v in values if v is not None]
    return 100.0 * (max(values) if best else statistics.fmean(values[-last:]))


def cells(
    sweep_dir: Path, runs: list[dict], last: int = 1, best: bool = False
) -> dict[tuple[str, str, str], dict[int, float]]:
    """(regime, defense, attack) -> {seed: MA} over the finished ones of ``runs`` (the
    sweep.json listing's; see :func:`final_accuracy` for ``last`` and ``best``)."""
    out: dict[tuple[str, str, str], dict[int, float]] = {}
    for run in runs:
        labels = run["labels"]
        ma = final_accuracy(sweep_dir / run["dir"], last, best)
        if ma is None:
            continue
        key = (labels["regime"], labels["defense"], labels["attack"])
        out.setdefault(key, {})[int(labels["seed"])] = ma
    return out


def attack_cells(runs: list[dict], baseline: str) -> int:
    """The number of attack cells in the sweep's grid (``runs``, sweep.json's listing):
    distinct (regime, defense, attack) with an attack other than ``baseline``."""
    return len(
        {
            (run["labels"]["regime"], run["labels"]["defense"], run["labels"]["attack"])
            for run in runs
            if run["labels"]["attack"] != baseline
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the table's numbers here")
    parser.add_argument(
        "--baseline",
        default="none",
        help="the attack label of the no-attack cells (default: none)",
    )
    parser.add_argument(
        "--last",
        type=int,
        default=1,
        help="MA at the end: the mean over the last N rounds (default 1: the final MA)",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="the best MA of any round instead (the papers' end point; not with --last)",
    )
    parser.add_argument(
        "--cells",
        type=int,
        help="the Holm family's size (default: the sweep's own attack cells, from sweep.json)",
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="A=B",
        help="also the paired difference of defense A's MA lost minus defense B's (repeatable)",
    )
    args = parser.parse_args(argv)
    pairs = []
    for spec in args.versus:
        first, sep, second = spec.partition("=")
        if not sep or not first or not second:
            parser.error(f"--versus takes two defense labels as A=B, got {spec!r}")
        pairs.append((first, second))
    if args.best and args.last != 1:
        parser.error("--best and --last N > 1 are two end points: give one")
    if args.cells is not None and args.cells < 1:
        parser.error(f"--cells must be a positive number of cells, got {args.cells}")
    runs = json.loads((args.sweep_dir / "sweep.json").read_text())["runs"]
    table = cells(args.sweep_dir, runs, args.last, args.best)
    family = attack_cells(runs, args.baseline) if args.cells is None else args.cells
    alpha = 0.05 / max(family, 1)
    rows = []
    for (regime, defense, attack), by_seed in sorted(table.items()):
        if attack == args.baseline:
            continue
        base = table.get((regime, defense, args.baseline), {})
        seeds = sorted(set(by_seed) & set(base))
        if not seeds:
            continue
        lost = [base[s] - by_seed[s] for s in seeds]
        rows.append((regime, defense, attack, seeds, [by_seed[s] for s in seeds], lost))
    spreads = [statistics.stdev(r[5]) for r in rows if len(r[5]) >= 2]
    pooled = statistics.fmean(s**2 for s in spreads) ** 0.5 if spreads and any(spreads) else None
    print(
        f"Holm's strictest level: 0.05 / {family} = {alpha:.5f}; pooled sd of the "
        f"MA lost over {len(spreads)} cells with 2+ seeds: "
        + ("-" if pooled is None else f"{pooled:.2f} points")
    )
    print(
        "| regime | defense | attack | seeds | "
        + (
            "best MA of any round"
            if args.best
            else "final MA"
            if args.last == 1
            else f"MA over the last {args.last} rounds"
        )
        + " per seed | no-attack MA per seed | "
        "MA lost per seed | mean [95% interval] | seeds for +5 / +10 beyond 5 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    records = []
    for regime, defense, attack, seeds, ma, lost in rows:
        base = table[(regime, defense, args.baseline)]
        sd = statistics.stdev(lost) if len(lost) >= 2 else None
        source = ""
        if not sd:
            sd, source = pooled, " (pooled)"
        needed = [seeds_needed(sd, effect, alpha=alpha) for effect in EFFECTS]
        stat = summarize(dict(zip(seeds, lost, strict=True)))
        print(
            f"| {regime} | {defense} | {attack} | {', '.join(map(str, seeds))} | "
            f"{', '.join(f'{v:.1f}' for v in ma)} | "
            f"{', '.join(f'{base[s]:.1f}' for s in seeds)} | "
            f"{', '.join(f'{v:.1f}' for v in lost)} | {format_ci(stat)} | "
            f"{' / '.join('-' if n is None else str(n) for n in needed)}{source} |"
        )
        records.append(
            {
                "regime": regime,
                "defense": defense,
                "attack": attack,
                "seeds": seeds,
                "final_ma": ma,
                "no_attack_ma": [base[s] for s in seeds],
                "ma_lost": lost,
                "mean_ma_lost": statistics.fmean(lost),
                "ma_lost_ci": stat["ci"],
                "sd_planned_with": sd,
                "sd_source": "pooled" if source else "cell",
                "seeds_needed": dict(zip(("+5", "+10"), needed, strict=True)),
            }
        )
    versus = []
    lost_of = {(r[0], r[1], r[2]): dict(zip(r[3], r[5], strict=True)) for r in rows}
    for first, second in pairs:
        print(
            f"\n| regime | attack | MA lost, {first} minus {second}: seeds | per seed "
            "| mean [95% interval] |"
        )
        print("|---|---|---|---|---|")
        for regime, attack in sorted({(r[0], r[2]) for r in rows}):
            a = lost_of.get((regime, first, attack), {})
            b = lost_of.get((regime, second, attack), {})
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            diff = [a[s] - b[s] for s in seeds]
            stat = summarize(dict(zip(seeds, diff, strict=True)))
            print(
                f"| {regime} | {attack} | {', '.join(map(str, seeds))} | "
                f"{', '.join(f'{v:.1f}' for v in diff)} | {format_ci(stat)} |"
            )
            versus.append(
                {
                    "regime": regime,
                    "attack": attack,
                    "defense": first,
                    "versus": second,
                    "seeds": seeds,
                    "difference": diff,
                    "mean_difference": statistics.fmean(diff),
                    "difference_ci": stat["ci"],
                }
            )
    if args.json is not None:
        out = {
            "sweep_dir": str(args.sweep_dir),
            "holm_level": alpha,
            "attack_cells": family,
            "ma_over_last_rounds": args.last,
            "best_ma_of_any_round": args.best,
            "pooled_sd": pooled,
            "cells": records,
        }
        if pairs:
            out["versus"] = versus
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
