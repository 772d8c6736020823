"""``fedsec report``: tables, curves and ranking scores of a sweep's results.

    fedsec report RESULTS_DIR [--out DIR] [--rows AXIS] [--cols AXIS] [--paper emnist|cifar10]

Input: ``RESULTS_DIR/sweep.json`` as ``fedsec sweep`` writes it::

    {"name": ..., "axes": {"defense": [...], "attack": [...], "seed": ["0", "1"]},
     "runs": [{"id": ..., "dir": "defense=fedavg/attack=none/seed=0",
               "labels": {"defense": "fedavg", "attack": "none", "seed": "0"}}, ...]}

where every ``dir`` (relative to RESULTS_DIR) is a run directory (:mod:`fedsec.results`).
Without ``sweep.json`` the run directories (those holding ``metrics.jsonl``) are found
below RESULTS_DIR and labelled by their ``key=value`` path components.

A run counts once it has its ``summary.json``; an unfinished or missing run is listed as
such and left out of every number and curve. The axis ``seed`` is averaged over (mean
and sample standard deviation); one axis gives the table rows (``--rows``, default
``defense``), one the columns (``--cols``, default ``attack``), and every further axis
one set of tables and one PNG per value.

Output, into ``--out`` (default RESULTS_DIR):

- ``report.md``: per set, a compact table ("MA / BA", final values, percent), a long
  table (final and best MA, final and max BA, detection precision, recall and AUROC,
  seeds) followed by one line per defense that keeps a fixed number of clients per round
  by design (its precision and FPR reflect that quota, its AUROC does not) and, when
  rows are defenses, columns attacks and a ``fedavg`` row exists, the ranking score of
  Huang et al. (ICCV 2023)::

      score(d) = sum over attacks a != "none" of
                 (MA[d,a] - MA[fedavg,a]) / MA[fedavg,a] - (BA[d,a] - BA[fedavg,a]) / BA[fedavg,a]

  on mean final MA and BA; with ``--paper`` the paper's Table 1 numbers beside ours and
  the paper's score computed the same way from its table over the same attacks.
- ``curves.png`` (``curves_<axis>=<value>.png`` per extra-axis value): one panel per
  column value, MA (solid) and BA (dashed) per round, one colour per row value, means
  over seeds.
- ``report.json``: every aggregated number (percent), for tools that check claims.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsec import paper as paper_mod
from fedsec.errors import ConfigError, FedsecError
from fedsec.results import METRICS_FILE, SUMMARY_FILE, read_metrics

SWEEP_FILE = "sweep.json"
SEED_AXIS = "seed"
BASELINE = "fedavg"
NO_ATTACK = "none"
ALL = "all"  # the one row or column value when there is no rows or cols axis


def is_no_attack(label: str) -> bool:
    """``none`` and ``none-*`` label no-attack baselines (e.g. ``none-edge``: the edge-case
    attack configured to start after the last round, so its backdoor accuracy is measured
    on an honest federation); the ranking score leaves them out."""
    return label == NO_ATTACK or label.startswith(NO_ATTACK + "-")


#: (key in report.json, column title) of the long table, in its order.
METRICS: tuple[tuple[str, str], ...] = (
    ("final_main_accuracy", "final MA"),
    ("best_main_accuracy", "best MA"),
    ("final_backdoor_accuracy", "final BA"),
    ("max_backdoor_accuracy", "max BA"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("auroc", "AUROC"),
)


# --------------------------------------------------------------------------- loading

@dataclass
class Run:
    """One run of a sweep: its labels and, once finished, its summary and rounds."""

    id: str
    path: Path
    labels: dict[str, str]
    status: str  # "finished", "unfinished" (no summary.json yet) or "missing" (no directory)
    summary: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def values(self) -> dict[str, float | None]:
        """The run's final numbers in percent (None where the run did not record one)."""
        s = self.summary or {}
        det = s.get("detection") or {}
        raw = {key: s.get(key) for key, _ in METRICS[:4]}
        # auroc: the mean per-round AUROC of the defense's scores (fedsec.results); runs
        # whose rounds logged no scores (older runs, defenses without scores) have none.
        raw.update(precision=det.get("precision"), recall=det.get("recall"), auroc=det.get("auroc"))
        return {k: None if v is None else 100.0 * float(v) for k, v in raw.items()}

    def defense(self) -> str | None:
        """The run's defense: its ``defense`` label, else the one its summary's config names."""
        config = (self.summary or {}).get("config") or {}
        return self.labels.get("defense") or (config.get("defense") or {}).get("name")

    def selection_quota(self) -> str:
        """The defense's quota sentence that summary.json records ("" when it has none)."""
        return ((self.summary or {}).get("detection") or {}).get("selection_quota") or ""


@dataclass
class SweepResults:
    """The runs below a results directory and the axes that label them (values in order)."""

    root: Path
    name: str
    axes: dict[str, list[str]]
    runs: list[Run]
    source: str  # "sweep.json" or "discovered"


def load_results(results_dir: str | Path) -> SweepResults:
    """Read ``sweep.json`` (or discover run directories) and every run's files."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FedsecError(f"results directory {root} does not exist")
    if (root / SWEEP_FILE).is_file():
        name, axes, entries = _read_sweep_json(root / SWEEP_FILE)
        source = SWEEP_FILE
    else:
        name, (axes, entries) = root.resolve().name, _discover(root)
        source = "discovered"
    if not entries:
        raise FedsecError(f"no runs found in {root}: no {SWEEP_FILE} and no directory "
                          f"holding {METRICS_FILE} below it")
    runs = [_load_run(root, run_id, rel, labels) for run_id, rel, labels in entries]
    for run in runs:  # every label value appears on its axis
        for key, value in run.labels.items():
            values = axes.setdefault(key, [])
            if value not in values:
                values.append(value)
    for run in runs:  # and every run has a value for every axis
        for key in axes:
            run.labels.setdefault(key, "(none)")
            if run.labels[key] not in axes[key]:
                axes[key].append(run.labels[key])
    return SweepResults(root=root, name=name, axes=axes, runs=runs, source=source)


def _read_sweep_json(path: Path) -> tuple[str, dict[str, list[str]], list[tuple[str, str, dict[str, str]]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        axes = {str(k): [str(v) for v in vals] for k, vals in doc.get("axes", {}).items()}
        entries = []
        for r in doc["runs"]:
            labels = {str(k): str(v) for k, v in r.get("labels", {}).items()}
            rel = str(r.get("dir") or r["id"])
            entries.append((str(r.get("id", rel)), rel, labels))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise FedsecError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    return str(doc.get("name", path.parent.name)), axes, entries


def _discover(root: Path) -> tuple[dict[str, list[str]], list[tuple[str, str, dict[str, str]]]]:
    """Run directories below ``root``, labelled by their ``key=value`` path components."""
    dirs = sorted({p.parent for pattern in (METRICS_FILE, SUMMARY_FILE) for p in root.rglob(pattern)})
    entries = []
    for d in dirs:
        rel = d.relative_to(root).as_posix() if d != root else "."
        labels = dict(part.split("=", 1) for part in Path(rel).parts if "=" in part)
        entries.append((rel, rel, labels))
    if entries and not any(labels for _, _, labels in entries):
        entries = [(rel, rel, {"run": rel}) for rel, _, _ in entries]
    axes: dict[str, list[str]] = {}
    for _, _, labels in entries:
        for key, value in labels.items():
            axes.setdefault(key, [])
            if value not in axes[key]:
                axes[key].append(value)
    return {k: sorted(v, key=_natural_key) for k, v in axes.items()}, entries


def _natural_key(text: str) -> list:
    """Sort key that orders "2" before "10" and "0.05" before "0.5"."""
    try:
        return [0, float(text), ""]
    except ValueError:
        return [1, 0.0] + [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _load_run(root: Path, run_id: str, rel: str, labels: dict[str, str]) -> Run:
    path = root / rel
    if not path.is_dir():
        return Run(run_id, path, labels, "missing")
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    rounds = read_metrics(path / METRICS_FILE)
    if not isinstance(summary, dict):
        return Run(run_id, path, labels, "unfinished", rounds=rounds)
    return Run(run_id, path, labels, "finished", summary, rounds)


# --------------------------------------------------------------------------- layout

@dataclass
class Layout:
    """Which axis gives the rows, the columns and the separate sets (None: no such axis)."""

    rows: str | None
    cols: str | None
    extra: list[str]
    seed: str | None


def choose_layout(axes: dict[str, list[str]], rows: str | None = None, cols: str | None = None) -> Layout:
    """Rows ``--rows`` or defense or the first non-seed axis; cols likewise; the rest extra."""
    seed = SEED_AXIS if SEED_AXIS in axes else None
    free = [a for a in axes if a != SEED_AXIS]
    for flag, axis in (("--rows", rows), ("--cols", cols)):
        if axis is not None and axis not in free:
            why = ("it is averaged over" if axis == SEED_AXIS
                   else f"valid: {', '.join(free) or 'none'}")
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


# --------------------------------------------------------------------------- numbers

def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; None below two values) of the non-None."""
    x = np.array([v for v in values if v is not None], dtype=float)
    return {
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
        "values": x.tolist(),
    }


def mean_curves(runs: Sequence[Run]) -> dict[str, list]:
    """Per-round mean over ``runs`` of main and backdoor accuracy (percent; None if absent)."""
    rounds = sorted({r["round"] for run in runs for r in run.rounds if "round" in r})
    out: dict[str, list] = {"round": rounds}
    col = {r: i for i, r in enumerate(rounds)}
    for key in ("main_accuracy", "backdoor_accuracy"):
        grid = np.full((len(runs), len(rounds)), np.nan)
        for i, run in enumerate(runs):
            pts = [(col[r["round"]], r[key]) for r in run.rounds if "round" in r and r.get(key) is not None]
            if pts:
                idx, vals = zip(*pts)
                grid[i, list(idx)] = vals
        count = np.sum(~np.isnan(grid), axis=0)
        mean = np.where(count > 0, np.nansum(grid, axis=0) / np.maximum(count, 1), np.nan) * 100.0
        out[key] = [None if np.isnan(m) else float(m) for m in mean]
    return out


def ranking_scores(
    ma: dict[tuple[str, str], float | None],
    ba: dict[tuple[str, str], float | None],
    defenses: Sequence[str],
    attacks: Sequence[str],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """The ranking score of Huang et al. (ICCV 2023) of each defense against ``baseline``.

    ``score(d) = sum_a (MA[d,a] - MA[b,a]) / MA[b,a] - (BA[d,a] - BA[b,a]) / BA[b,a]`` over
    the attacks that are not no-attack baselines (:func:`is_no_attack`) where the
    baseline's MA and BA are known and non-zero (the others are listed in ``excluded``
    with the reason); a defense missing one of those attacks has no score. ``ma`` and ``ba`` map (defense, attack) to a mean accuracy in any
    one unit. Returns ``{"attacks", "excluded", "scores": [{"defense", "score", "rank"}]}``
    sorted best first (unscored last).
    """
    def grid(table: dict) -> np.ndarray:
        return np.array([[np.nan if table.get((d, a)) is None else table[(d, a)] for a in attacks]
                         for d in defenses], dtype=float).reshape(len(defenses), len(attacks))

    m, b = grid(ma), grid(ba)
    base = list(defenses).index(baseline)
    excluded: dict[str, str] = {}
    use = np.zeros(len(attacks), dtype=bool)
    for j, a in enumerate(attacks):
        if is_no_attack(a):
            continue
        if not (np.isfinite(m[base, j]) and np.isfinite(b[base, j])):
            excluded[a] = f"no {baseline} result"
        elif m[base, j] == 0 or b[base, j] == 0:
            excluded[a] = f"{baseline}'s {'MA' if m[base, j] == 0 else 'BA'} is 0"
        else:
            use[j] = True
    terms = (m[:, use] - m[base, use]) / m[base, use] - (b[:, use] - b[base, use]) / b[base, use]
    score = terms.sum(axis=1) if use.any() else np.full(len(defenses), np.nan)
    return {
        "attacks": [a for a, u in zip(attacks, use) if u],
        "excluded": excluded,
        "scores": _ranked({d: None if np.isnan(s) else float(s) for d, s in zip(defenses, score)}),
    }


def _ranked(scores: dict[str, float | None]) -> list[dict[str, Any]]:
    """Entries sorted by score (best first, None last) with competition ranks (1, 2, 2, 4)."""
    order = sorted(scores, key=lambda d: (scores[d] is None, -(scores[d] or 0.0)))
    out, rank = [], 0
    for i, d in enumerate(order):
        if scores[d] is not None and (i == 0 or scores[d] != scores[order[i - 1]]):
            rank = i + 1
        out.append({"defense": d, "score": scores[d], "rank": rank if scores[d] is not None else None})
    return out


def paper_ranking(name: str, attacks: Sequence[str] | None = None) -> dict[str, Any]:
    """The ranking score of the paper's own table ``name`` over ``attacks`` (default: all)."""
    table = paper_mod.paper_table(name)
    attacks = list(paper_mod.ATTACKS if attacks is None else attacks)
    cells = {(d, a): table[d].get(a) for d in paper_mod.DEFENSES for a in attacks}
    return ranking_scores({k: v and v[0] for k, v in cells.items()},
                          {k: v and v[1] for k, v in cells.items()},
                          list(paper_mod.DEFENSES), attacks)


# --------------------------------------------------------------------------- the report

def build_report(sweep: SweepResults, layout: Layout, paper: str | None = None) -> dict[str, Any]:
    """Every aggregated number of ``sweep`` (the content of report.json)."""
    if paper is not None:
        paper_mod.paper_table(paper)  # a ConfigError names the valid tables
        if (layout.rows, layout.cols) != ("defense", "attack"):
            raise ConfigError(f"--paper needs rows 'defense' and columns 'attack' "
                              f"(got {layout.rows!r} and {layout.cols!r})")
    axes = sweep.axes
    row_vals = axes[layout.rows] if layout.rows else [ALL]
    col_vals = axes[layout.cols] if layout.cols else [ALL]
    n_expected = len(axes[layout.seed]) if layout.seed else 1

    sets = []
    for combo in itertools.product(*(axes[a] for a in layout.extra)):
        extra = dict(zip(layout.extra, combo))
        groups = []
        for rv, cv in itertools.product(row_vals, col_vals):
            labels = {**extra, **({layout.rows: rv} if layout.rows else {}),
                      **({layout.cols: cv} if layout.cols else {})}
            members = [r for r in sweep.runs if all(r.labels.get(k) == v for k, v in labels.items())]
            done = [r for r in members if r.status == "finished"]
            values = [r.values() for r in done]
            group = {
                "labels": labels, "row": rv, "col": cv,
                "runs": [r.id for r in done],
                "left_out": [r.id for r in members if r.status != "finished"],
                "n": len(done), "n_expected": n_expected,
                "metrics": {k: mean_std([v[k] for v in values]) for k, _ in METRICS},
                "curves": mean_curves(done),
            }
            if paper is not None:
                cell = paper_mod.paper_cell(paper, rv, cv)
                group["paper"] = (None if cell is None
                                  else {"main_accuracy": cell[0], "backdoor_accuracy": cell[1]})
            group["cell"] = compact_cell(group)
            groups.append(group)
        members = [r for r in sweep.runs if r.status == "finished"
                   and all(r.labels.get(k) == v for k, v in extra.items())]
        sets.append({"extra": extra, "groups": groups,
                     "ranking": _set_ranking(groups, layout, row_vals, col_vals, paper),
                     "selection_quotas": selection_quotas(members)})

    report: dict[str, Any] = {
        "name": sweep.name,
        "results_dir": str(sweep.root),
        "source": sweep.source,
        "units": "percent",
        "axes": axes,
        "rows": layout.rows, "cols": layout.cols, "extra_axes": layout.extra, "seed_axis": layout.seed,
        "counts": {s: sum(r.status == s for r in sweep.runs) for s in ("finished", "unfinished", "missing")},
        "runs": [{"id": r.id, "dir": str(r.path.relative_to(sweep.root)) if r.path != sweep.root else ".",
                  "labels": r.labels, "status": r.status, "rounds_logged": len(r.rounds)}
                 for r in sweep.runs],
        "sets": sets,
    }
    report["counts"]["total"] = len(sweep.runs)
    if paper is not None:
        report["paper"] = {"name": paper, "citation": paper_mod.CITATION,
                           "ranking_all_attacks": paper_ranking(paper)}
    return report


def selection_quotas(runs: Sequence[Run]) -> list[dict[str, str]]:
    """``{"defense", "quota"}`` per defense among ``runs`` that keeps a fixed number of
    clients per round by design, as their summary.json states it (in order, no repeats)."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        quota = run.selection_quota()
        if quota:
            seen.setdefault((run.defense() or "(unnamed defense)", quota), None)
    return [{"defense": d, "quota": q} for d, q in seen]


def _set_ranking(groups: list[dict], layout: Layout, row_vals: list[str], col_vals: list[str],
                 paper: str | None) -> dict[str, Any] | None:
    """Our ranking score (and the paper's over the same attacks) for one set, if it applies."""
    if (layout.rows, layout.cols) != ("defense", "attack") or BASELINE not in row_vals:
        return None
    by = {(g["row"], g["col"]): g["metrics"] for g in groups}
    ma = {k: m["final_main_accuracy"]["mean"] for k, m in by.items()}
    ba = {k: m["final_backdoor_accuracy"]["mean"] for k, m in by.items()}
    ranking = ranking_scores(ma, ba, row_vals, col_vals)
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


def _fmt(stat: dict[str, Any], digits: int = 1) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``-`` for none)."""
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def compact_cell(group: dict[str, Any]) -> str:
    """The compact table's cell: ``MA / BA`` (final, percent), ``(n=k)`` if seeds are missing,
    and with a paper table ``(paper MA / BA)``."""
    m = group["metrics"]
    cell = f"{_fmt(m['final_main_accuracy'])} / {_fmt(m['final_backdoor_accuracy'])}"
    if group["n"] == 0:
        cell = "-"
    if group["n"] != group["n_expected"]:
        cell += f" (n={group['n']})"
    if group.get("paper"):
        p = group["paper"]
        cell += f" (paper {p['main_accuracy']:.2f} / {p['backdoor_accuracy']:.2f})"
    return cell


def _set_title(s: dict[str, Any]) -> str:
    """``axis=value, ...`` of a set's extra axes ("" without extra axes)."""
    return ", ".join(f"{k}={v}" for k, v in s["extra"].items())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _score(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def render_markdown(report: dict[str, Any], pngs: dict[str, str]) -> tuple[str, str]:
    """report.md's text, and its shorter part (compact tables and rankings) for the terminal."""
    rows, cols, seed = report["rows"], report["cols"], report["seed_axis"]
    c = report["counts"]
    head = [f"# Report: {report['name']}", ""]
    head.append(f"Results: `{report['results_dir']}` (runs from {report['source']}): {c['total']} runs, "
                f"{c['finished']} finished, {c['unfinished']} unfinished, {c['missing']} missing.")
    over = (f"mean ± sample std over `{seed}` ({len(report['axes'][seed])} values; `n=k` marks "
            "cells with fewer finished runs)" if seed else "one run per cell (no seed axis)")
    head.append(f"Rows: `{rows or ALL}`, columns: `{cols or ALL}`; {over}. All numbers in percent; "
                "MA = main accuracy, BA = backdoor accuracy, final = last round.")
    if any(g["metrics"]["auroc"]["n"] for s in report["sets"] for g in s["groups"]):
        head.append("AUROC: how well the defense's per-client scores rank the attackers above "
                    "the honest clients, per round, averaged over the rounds with both "
                    "(50 = chance, 100 = every attacker above every honest client).")
    if "paper" in report:
        head.append(f"Paper: {report['paper']['citation']}, data set `{report['paper']['name']}`.")
    left = [r for r in report["runs"] if r["status"] != "finished"]
    if left:
        head += ["", "Unfinished or missing runs, left out of every number and curve:", ""]
        for r in left:
            why = ("no run directory yet" if r["status"] == "missing"
                   else f"no {SUMMARY_FILE}; {r['rounds_logged']} rounds logged")
            head.append(f"- `{r['id']}`: {r['status']} ({why})")
    full, short = list(head), list(head)

    for s in report["sets"]:
        title = _set_title(s)
        level = "###" if title else "##"
        if title:
            full += ["", f"## {title}"]
            short += ["", f"## {title}"]
        groups = {(g["row"], g["col"]): g for g in s["groups"]}
        row_vals = list(dict.fromkeys(g["row"] for g in s["groups"]))
        col_vals = list(dict.fromkeys(g["col"] for g in s["groups"]))
        compact = ["", f"{level} Final MA / BA", "",
                   _table([f"{rows or ''} \\ {cols or ''}".strip(" \\") or ALL] + col_vals,
                          [[r] + [groups[(r, cv)]["cell"] for cv in col_vals] for r in row_vals])]
        long_rows = []
        for g in s["groups"]:
            seeds = str(g["n"]) if g["n"] == g["n_expected"] else f"{g['n']} of {g['n_expected']}"
            long_rows.append([g["row"], g["col"]] + [_fmt(g["metrics"][k]) for k, _ in METRICS] + [seeds])
        long = ["", f"{level} All metrics", "",
                _table([rows or ALL, cols or ALL] + [t for _, t in METRICS] + ["seeds"], long_rows)]
        quotas = [f"- {q['defense']} {q['quota']}: its precision and false-positive rate reflect "
                  "that quota; its AUROC does not." for q in s.get("selection_quotas", [])]
        if quotas:
            long += [""] + quotas
        ranking = _render_ranking(s["ranking"], level, "paper" in report) if s["ranking"] else []
        png = pngs.get(title)
        plot = ["", f"{level} Curves", "", f"![MA and BA per round]({png})"] if png else []
        full += compact + long + ranking + plot
        short += compact + ranking

    if "paper" in report:
        pr = report["paper"]["ranking_all_attacks"]
        line = ", ".join(f"{e['rank']}. {e['defense']} ({_score(e['score'])})" for e in pr["scores"])
        tail = ["", f"The paper's own ranking over {', '.join(pr['attacks'])}: {line}."]
        full += tail
        short += tail
    return "\n".join(full) + "\n", "\n".join(short) + "\n"


def _render_ranking(ranking: dict[str, Any], level: str, with_paper: bool) -> list[str]:
    formula = (f"score(d) = Σ over attacks a of (MA[d,a] − MA[{BASELINE},a]) / MA[{BASELINE},a] − "
               f"(BA[d,a] − BA[{BASELINE},a]) / BA[{BASELINE},a], on mean final MA and BA "
               f"(Huang et al., ICCV 2023); attacks: {', '.join(ranking['attacks']) or 'none usable'}.")
    out = ["", f"{level} Ranking score", "", formula]
    if ranking["excluded"]:
        out[-1] += " Left out: " + "; ".join(f"{a} ({why})" for a, why in ranking["excluded"].items()) + "."
    if with_paper:
        out[-1] += (" The paper's score uses its Table 1 over "
                    f"{', '.join(ranking['paper_attacks']) or 'no attack of ours'}.")
    header = ["rank", "defense", "score"] + (["paper score", "paper rank"] if with_paper else [])
    rows = []
    for e in ranking["scores"]:
        row = ["-" if e["rank"] is None else str(e["rank"]), e["defense"], _score(e["score"])]
        if with_paper:
            row += [_score(e["paper_score"]), "-" if e["paper_rank"] is None else str(e["paper_rank"])]
        rows.append(row)
    return out + ["", _table(header, rows)]


# --------------------------------------------------------------------------- plots

def plot_curves(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """One PNG per set: a panel per column value, MA solid and BA dashed per row value.

    Returns {set title ("" without extra axes): file name}. Uses matplotlib's object API
    with the Agg canvas (no display, pyplot's global state untouched).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    written = {}
    for s in report["sets"]:
        title = _set_title(s)
        name = "curves.png" if not title else "curves_" + re.sub(
            r"[^A-Za-z0-9._=-]+", "_", title.replace(", ", "_")) + ".png"
        row_vals = list(dict.fromkeys(g["row"] for g in s["groups"]))
        col_vals = list(dict.fromkeys(g["col"] for g in s["groups"]))
        cmap = colormaps["tab10" if len(row_vals) <= 10 else "tab20"]
        colours = {r: cmap(i % cmap.N) for i, r in enumerate(row_vals)}
        ncols = min(len(col_vals), 4)
        nrows = -(-len(col_vals) // ncols)
        legend_w = 0.6 + 0.06 * max(len(str(r)) for r in row_vals + [report["rows"] or ""])
        fig = Figure(figsize=(4.2 * ncols + legend_w, 3.4 * nrows + 0.6))
        FigureCanvasAgg(fig)
        axs = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
        groups = {(g["row"], g["col"]): g for g in s["groups"]}
        for ax, cv in zip(axs, col_vals):
            drawn = False
            for rv in row_vals:
                cur = groups[(rv, cv)]["curves"]
                x = np.array(cur["round"], dtype=float)
                for key, style in (("main_accuracy", "-"), ("backdoor_accuracy", "--")):
                    y = np.array([np.nan if v is None else v for v in cur[key]], dtype=float)
                    if np.isfinite(y).any():
                        ax.plot(x, y, style, color=colours[rv], linewidth=1.5,
                                marker="." if x.size < 3 else None)
                        drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{report['cols']}={cv}" if report["cols"] else ALL, fontsize="medium")
            ax.set_ylim(-2, 102)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in axs[len(col_vals):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=colours[r], label=r) for r in row_vals]
        handles += [Line2D([], [], color="black", linestyle="-", label="MA"),
                    Line2D([], [], color="black", linestyle="--", label="BA")]
        fig.legend(handles=handles, title=report["rows"] or None, loc="center right", fontsize="small")
        fig.suptitle(f"{report['name']}" + (f" ({title})" if title else "")
                     + (f": mean over {report['seed_axis']}s" if report["seed_axis"] else ""))
        fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
        fig.savefig(out_dir / name, format="png", dpi=90)
        written[title] = name
    return written


# --------------------------------------------------------------------------- entry points

def write_report(results_dir: str | Path, out: str | Path | None = None, rows: str | None = None,
                 cols: str | None = None, paper: str | None = None) -> tuple[dict[str, Any], str]:
    """Write report.md, report.json and the curve PNGs; return the report and the terminal text."""
    if paper is not None:
        paper_mod.paper_table(paper)  # fail before reading anything
    sweep = load_results(results_dir)
    layout = choose_layout(sweep.axes, rows, cols)
    report = build_report(sweep, layout, paper)
    out_dir = Path(out) if out is not None else sweep.root
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FedsecError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    pngs = plot_curves(report, out_dir)
    report["files"] = {"markdown": "report.md", "json": "report.json", "png": list(pngs.values())}
    text, short = render_markdown(report, pngs)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report, short


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the ``fedsec`` parser's subparsers."""
    p = sub.add_parser("report", help="tables, curves and ranking scores of a sweep's results")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's output (or any folder of runs)")
    p.add_argument("--out", help="where to write report.md, report.json, PNGs (default: RESULTS_DIR)")
    p.add_argument("--rows", metavar="AXIS", help="axis of the table rows (default: defense)")
    p.add_argument("--cols", metavar="AXIS", help="axis of the table columns (default: attack)")
    p.add_argument("--paper", metavar="NAME",
                   help="show Huang et al. (ICCV 2023) Table 1 beside ours: "
                        + "|".join(paper_mod.paper_names()))
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    report, short = write_report(args.results_dir, args.out, args.rows, args.cols, args.paper)
    out = Path(args.out) if args.out else Path(args.results_dir)
    print(short, end="")
    c = report["counts"]
    print(f"fedsec: wrote report.md, report.json, {', '.join(report['files']['png'])} to {out} "
          f"({c['finished']} of {c['total']} runs finished)")
    return 0
