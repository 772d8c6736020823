"""Aggregating runs into report.json: the layout, per-cell statistics, baselines, rankings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsec import paper as paper_mod
from fedsec.report.load import (
    METRICS,
    SEED_AXIS,
    Run,
    SweepResults,
    is_no_attack,
    metric_columns,
)
from fedsec.report.stats import (
    BASELINE,
    paired_difference,
    paper_ranking,
    per_seed_values,
    ranking_scores,
    seed_rankings,
    summarize,
)
from fedsec_core.errors import ConfigError

ALL = "all"  # the one row or column value when there is no rows or cols axis


@dataclass
class Layout:
    """Which axis gives the rows, the columns and the separate sets (None: no such axis)."""

    rows: str | None
    cols: str | None
    extra: list[str]
    seed: str | None


def choose_layout(
    axes: dict[str, list[str]], rows: str | None = None, cols: str | None = None
) -> Layout:
    """Rows ``--rows`` or defense or the first non-seed axis; cols likewise; the rest extra."""
    seed = SEED_AXIS if SEED_AXIS in axes else None
    free = [a for a in axes if a != SEED_AXIS]
    for flag, axis in (("--rows", rows), ("--cols", cols)):
        if axis is not None and axis not in free:
            why = (
                "it is averaged over"
                if axis == SEED_AXIS
                else f"valid: {', '.join(free) or 'none'}"
            )
            raise ConfigError(f"unknown {flag} axis {axis!r}; {why}")
    if rows is not None and rows == cols:
        raise ConfigError(f"--rows and --cols are both {rows!r}")
    if rows is None:
        rest = [a for a in free if a != cols]
        rows = "defense" if "defense" in rest else (rest[0] if rest else None)
    if cols is None:
        rest = [a for a in free if a != rows]
        cols = "attack" if "attack" in rest else (rest[0] if rest else None)
    return Layout(rows, cols, [a for a in free if a not in (rows, cols)], seed)


def mean_curves(runs: Sequence[Run]) -> dict[str, list]:
    """Per-round mean over ``runs`` of main and backdoor accuracy (percent; None if absent)."""
    rounds = sorted({r.round for run in runs for r in run.rounds})
    out: dict[str, list] = {"round": rounds}
    col = {r: i for i, r in enumerate(rounds)}
    for key in ("main_accuracy", "backdoor_accuracy"):
        grid = np.full((len(runs), len(rounds)), np.nan)
        for i, run in enumerate(runs):
            pts = [
                (col[r.round], getattr(r, key)) for r in run.rounds if getattr(r, key) is not None
            ]
            if pts:
                idx, vals = zip(*pts, strict=True)
                grid[i, list(idx)] = vals
        count = np.sum(~np.isnan(grid), axis=0)
        mean = np.where(count > 0, np.nansum(grid, axis=0) / np.maximum(count, 1), np.nan) * 100.0
        out[key] = [None if np.isnan(m) else float(m) for m in mean]
    return out


def build_report(sweep: SweepResults, layout: Layout, paper: str | None = None) -> dict[str, Any]:
    """Every aggregated number of ``sweep`` (the content of report.json).

    A set is one combination of the extra axes; its cells are the (row, column) pairs
    that have at least one run in the sweep (a one-at-a-time design leaves some out).
    """
    if paper is not None:
        paper_mod.paper_table(paper)  # a ConfigError names the valid tables
        if (layout.rows, layout.cols) != ("defense", "attack"):
            raise ConfigError(
                f"--paper needs rows 'defense' and columns 'attack' "
                f"(got {layout.rows!r} and {layout.cols!r})"
            )
    axes = sweep.axes
    columns = metric_columns(sweep.runs)
    row_vals = axes[layout.rows] if layout.rows else [ALL]
    col_vals = axes[layout.cols] if layout.cols else [ALL]

    sets = []
    for combo in itertools.product(*(axes[a] for a in layout.extra)):
        extra = dict(zip(layout.extra, combo, strict=True))
        groups = []
        for rv, cv in itertools.product(row_vals, col_vals):
            labels = {
                **extra,
                **({layout.rows: rv} if layout.rows else {}),
                **({layout.cols: cv} if layout.cols else {}),
            }
            members = [
                r for r in sweep.runs if all(r.labels.get(k) == v for k, v in labels.items())
            ]
            if not members:
                continue
            groups.append(_group(labels, rv, cv, members, layout, paper, columns))
        if not groups:
            continue
        members = [
            r
            for r in sweep.runs
            if r.status == "finished" and all(r.labels.get(k) == v for k, v in extra.items())
        ]
        sets.append(
            {
                "extra": extra,
                "groups": groups,
                "ranking": _set_ranking(groups, layout, paper),
                "selection_quotas": selection_quotas(members),
            }
        )
    _add_baselines(sets)

    report: dict[str, Any] = {
        "name": sweep.name,
        "results_dir": ", ".join(str(r) for r in sweep.roots),
        "source": sweep.source,
        "units": "percent",
        "statistics": "per cell: mean, sample std and Student's t 95% interval over seeds; "
        "comparisons paired by seed",
        "axes": axes,
        "rows": layout.rows,
        "cols": layout.cols,
        "extra_axes": layout.extra,
        "seed_axis": layout.seed,
        "counts": {
            s: sum(r.status == s for r in sweep.runs) for s in ("finished", "unfinished", "missing")
        },
        "runs": [
            {
                "id": r.id,
                "dir": str(r.path),
                "labels": r.labels,
                "status": r.status,
                "rounds_logged": len(r.rounds),
                **r.provenance(),
            }
            for r in sweep.runs
        ],
        "sets": sets,
    }
    report["counts"]["total"] = len(sweep.runs)
    for what in ("commits", "kernels"):  # cells whose seeds ran at other programs or CPUs
        report[f"mixed_{what}"] = {
            f"{g['row']} / {g['col']}" + (f" ({set_title(st)})" if st["extra"] else ""): g[what]
            for st in sets
            for g in st["groups"]
            if len(g[what]) > 1
        }
    failures = {r.id: r.attacker_failures() for r in sweep.runs}
    report["attacker_failures"] = {k: v for k, v in failures.items() if v}
    if columns != METRICS:  # the long table's extra columns (CRFL's certified accuracy)
        report["metric_columns"] = [list(c) for c in columns]
    if paper is not None:
        report["paper"] = {
            "name": paper,
            "citation": paper_mod.CITATION,
            "ranking_all_attacks": paper_ranking(paper),
        }
    return report


def _group(
    labels: dict[str, str],
    rv: str,
    cv: str,
    members: list[Run],
    layout: Layout,
    paper: str | None,
    columns: tuple[tuple[str, str], ...] = METRICS,
) -> dict[str, Any]:
    """One cell: its runs, per-metric statistics over seeds, mean curves, backdoor key."""
    done = [r for r in members if r.status == "finished"]
    seed_of = {r.id: r.labels.get(layout.seed, r.id) if layout.seed else r.id for r in done}
    values = {r.id: r.values() for r in done}
    keys = {r.backdoor_key() for r in done}
    group = {
        "labels": labels,
        "row": rv,
        "col": cv,
        "runs": [r.id for r in done],
        "left_out": [r.id for r in members if r.status != "finished"],
        "n": len(done),
        "n_expected": len(members),
        # the programs its seeds ran at: more than one (or one unknown beside known ones)
        # means the cell mixes code versions, and report.md says so
        "commits": sorted({c or "unknown" for r in done for c in r.provenance()["commits"]}),
        "kernels": sorted({k or "unknown" for r in done for k in r.provenance()["kernels"]}),
        "metrics": {
            k: summarize({seed_of[r.id]: values[r.id].get(k) for r in done}) for k, _ in columns
        },
        "curves": mean_curves(done),
        "no_attack": is_no_attack(cv),
        # what the backdoor accuracy is measured on; None when untargeted or mixed
        "backdoor_key": list(keys.pop()) if len(keys) == 1 and None not in keys else None,
    }
    if paper is not None:
        cell = paper_mod.paper_cell(paper, rv, cv)
        group["paper"] = (
            None if cell is None else {"main_accuracy": cell[0], "backdoor_accuracy": cell[1]}
        )
    group["cell"] = compact_cell(group)
    return group


def _add_baselines(sets: list[dict[str, Any]]) -> None:
    """Pair every attacked cell with its no-attack baseline: the no-attack cell of the
    same row that measures backdoor accuracy on the same inputs (equal backdoor keys), in
    the same set, else in the first set (the base of a one-at-a-time design, whose honest
    federation the others share when they leave their baselines out). Adds
    ``baseline`` ({"col", "set"}) and ``ba_above_baseline`` (the per-seed paired
    difference of final BA, with its 95% interval) to the cell; and to every attacked
    cell, targeted or not, ``ma_drop``: the same no-attack cell's final MA (or, for an
    untargeted attack, the row's first no-attack cell's) minus the cell's, paired by
    seed, with ``ma_baseline`` saying which cell that was."""

    def no_attack_cells(s):
        return {
            (g["row"], tuple(g["backdoor_key"])): g
            for g in s["groups"]
            if g["no_attack"] and g["backdoor_key"] is not None
        }

    def first_no_attack(s):
        out: dict[str, dict[str, Any]] = {}
        for g in s["groups"]:
            if g["no_attack"]:
                out.setdefault(g["row"], g)
        return out

    first, first_any = (no_attack_cells(sets[0]), first_no_attack(sets[0])) if sets else ({}, {})
    ba, ma = "final_backdoor_accuracy", "final_main_accuracy"
    for s in sets:
        own, own_any = no_attack_cells(s), first_no_attack(s)
        for g in s["groups"]:
            if g["no_attack"]:
                continue
            base, where = None, None
            if g["backdoor_key"] is not None:
                key = (g["row"], tuple(g["backdoor_key"]))
                base, where = (own[key], s) if key in own else (first.get(key), sets[0])
            if base is not None:
                g["baseline"] = {"col": base["col"], "set": where["extra"]}
                g["ba_above_baseline"] = paired_difference(_per_seed(g, ba), _per_seed(base, ba))
            else:
                base, where = (
                    (own_any[g["row"]], s)
                    if g["row"] in own_any
                    else (first_any.get(g["row"]), sets[0])
                )
            if base is not None:
                g["ma_baseline"] = {"col": base["col"], "set": where["extra"]}
                g["ma_drop"] = paired_difference(_per_seed(base, ma), _per_seed(g, ma))


def _per_seed(group: dict[str, Any], metric: str) -> dict[str, float]:
    return per_seed_values(group["metrics"][metric])


def selection_quotas(runs: Sequence[Run]) -> list[dict[str, str]]:
    """``{"defense", "quota"}`` per defense among ``runs`` that keeps a fixed number of
    clients per round by design, as their summary.json states it (in order, no repeats)."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        quota = run.selection_quota()
        if quota:
            seen.setdefault((run.defense() or "(unnamed defense)", quota), None)
    return [{"defense": d, "quota": q} for d, q in seen]


def _set_ranking(groups: list[dict], layout: Layout, paper: str | None) -> dict[str, Any] | None:
    """Our ranking score (means, and per seed with separation), and the paper's over the
    same attacks, for one set, if it applies: rows are defenses, columns attacks, and
    every defense of the set has every attack of it."""
    row_vals = list(dict.fromkeys(g["row"] for g in groups))
    col_vals = list(dict.fromkeys(g["col"] for g in groups))
    if (layout.rows, layout.cols) != ("defense", "attack") or BASELINE not in row_vals:
        return None
    by = {(g["row"], g["col"]): g["metrics"] for g in groups}
    ma = {k: m["final_main_accuracy"]["mean"] for k, m in by.items()}
    ba = {k: m["final_backdoor_accuracy"]["mean"] for k, m in by.items()}
    ranking = ranking_scores(ma, ba, row_vals, col_vals)
    cells = {(g["row"], g["col"]): g for g in groups}
    ranking["per_seed"] = seed_rankings(
        {k: _per_seed(g, "final_main_accuracy") for k, g in cells.items()},
        {k: _per_seed(g, "final_backdoor_accuracy") for k, g in cells.items()},
        row_vals,
        ranking["attacks"],
    )
    if paper is not None:
        attacks = [a for a in ranking["attacks"] if a in paper_mod.ATTACKS]
        theirs = paper_ranking(paper, attacks)
        paper_scores = {e["defense"]: e for e in theirs["scores"]}
        mapped = {d: paper_mod.paper_defense(d) for d in row_vals}
        # The paper's rank is its own (over its eight defenses): two of our rows that map to
        # one paper row (both Multi-metrics variants) share it and shift nobody else.
        for entry in ranking["scores"]:
            theirs_entry = paper_scores.get(mapped.get(entry["defense"]))
            entry["paper_score"] = theirs_entry and theirs_entry["score"]
            entry["paper_rank"] = theirs_entry and theirs_entry["rank"]
        ranking["paper_attacks"] = attacks
    return ranking


def format_mean_std(stat: dict[str, Any], digits: int = 1) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``-`` for none)."""
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def mix_warnings(report: dict[str, Any]) -> list[str]:
    """A sentence for each kind of cell whose seeds do not all come from one program on one
    kernel family (``mixed_kernels``, ``mixed_commits``), naming the cells."""
    out = []
    kernels = report.get("mixed_kernels") or {}
    if kernels:
        out.append(
            f"{len(kernels)} cells mix runs computed with different kernel families (CPU "
            "instruction sets or GPUs round differently, so the same seed gives another "
            "model): " + "; ".join(f"{cell}: {', '.join(k)}" for cell, k in kernels.items())
        )
    commits = report.get("mixed_commits") or {}
    if commits:
        out.append(
            f"{len(commits)} cells mix runs from different source commits (or known and "
            "unknown ones), so their seeds may come from different programs; rerun them at "
            "one commit before comparing: "
            + "; ".join(f"{cell}: {', '.join(c[:12] for c in cs)}" for cell, cs in commits.items())
        )
    return out


def set_title(s: dict[str, Any]) -> str:
    """``axis=value, ...`` of a set's extra axes ("" without extra axes)."""
    return ", ".join(f"{k}={v}" for k, v in s["extra"].items())


def compact_cell(group: dict[str, Any]) -> str:
    """The compact table's cell: ``MA / BA`` (final, percent), ``(n=k)`` if seeds are missing,
    and with a paper table ``(paper MA / BA)``."""
    m = group["metrics"]
    ma, ba = m["final_main_accuracy"], m["final_backdoor_accuracy"]
    cell = f"{format_mean_std(ma)} / {format_mean_std(ba)}"
    if group["n"] == 0:
        cell = "-"
    if group["n"] != group["n_expected"]:
        cell += f" (n={group['n']})"
    if group.get("paper"):
        p = group["paper"]
        cell += f" (paper {p['main_accuracy']:.2f} / {p['backdoor_accuracy']:.2f})"
    return cell
