"""``fedsec report``: tables, statistics, curves and heatmaps of a sweep's results.

    fedsec report RESULTS_DIR [RESULTS_DIR ...] [--out DIR] [--rows AXIS] [--cols AXIS]
                  [--paper emnist|cifar10]

Input: ``RESULTS_DIR/sweep.json`` as ``fedsec sweep`` writes it::

    {"name": ..., "axes": {"defense": [...], "attack": [...], "seed": ["0", "1"]},
     "runs": [{"id": ..., "dir": "defense=fedavg/attack=none/seed=0",
               "labels": {"defense": "fedavg", "attack": "none", "seed": "0"}}, ...]}

where every ``dir`` (relative to RESULTS_DIR) is a run directory (:mod:`fedsec.results`).
Without ``sweep.json`` the run directories (those holding ``metrics.jsonl``) are found
below RESULTS_DIR and labelled by their ``key=value`` path components. Several
directories are reported as one (the sweeps of a regime map, each over some values of a
shared ``regime`` axis); a run id must not repeat among them.

A run counts once it has its ``summary.json``; an unfinished or missing run is listed as
such and left out of every number and curve. The axis ``seed`` is averaged over: mean,
sample standard deviation and Student's t 95% interval, and every comparison is paired
by seed and called *not separated* when its interval contains the threshold
(:mod:`fedsec.report.stats`). One axis gives the table rows (``--rows``, default
``defense``), one the columns (``--cols``, default ``attack``), and every further axis
one set of tables and one curve PNG per value; a cell without runs (left out by a
sweep's ``exclude``) is not shown.

Output, into ``--out`` (default the first RESULTS_DIR):

- ``report.md``: per set, a compact table ("MA / BA", final values, percent), a long
  table (final and best MA, final and max BA, detection precision, recall and AUROC,
  attacker kept, BA above the no-attack baseline, seeds), the per-seed values with
  their intervals, one line per defense that keeps a fixed number of clients per round
  by design (its precision and FPR reflect that quota, its AUROC does not) and, when
  rows are defenses, columns attacks and a ``fedavg`` row exists, the ranking score of
  Huang et al. (ICCV 2023)::

      score(d) = sum over attacks a != "none" of
                 (MA[d,a] - MA[fedavg,a]) / MA[fedavg,a] - (BA[d,a] - BA[fedavg,a]) / BA[fedavg,a]

  on mean final MA and BA, and per seed: per-seed ranks, and whether the leader is
  separated from each other defense (the paired interval of the score gap above 0).
  With ``--paper`` the paper's Table 1 numbers beside ours and the paper's score
  computed the same way from its table over the same attacks.
- Attacker kept: for defenses that select clients, the share of attack rounds in which
  an attacker was in the aggregate. BA above baseline: final BA minus that of the
  ``none-*`` cell of the same defense that measures the same backdoor inputs (equal
  ``attacks.backdoor_key``), in the same set, else in the first set (the base of a
  one-at-a-time design, whose honest federation the axes that change only the attack
  share).
- ``heatmap_<attack>.png`` per attacked column: set (e.g. regime) x defense, colour =
  BA above the baseline, annotated with the attacker acceptance.
- ``curves.png`` (``curves_<axis>=<value>.png`` per extra-axis value): one panel per
  column value, MA (solid) and BA (dashed) per round, one colour per row value, means
  over seeds.
- ``report.json``: every aggregated number (percent), for tools that check claims.

Layers: :mod:`~fedsec.report.load` (runs and labels), :mod:`~fedsec.report.stats`
(intervals, verdicts, ranking scores), :mod:`~fedsec.report.build` (report.json),
:mod:`~fedsec.report.render` (report.md), :mod:`~fedsec.report.plot` (PNGs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsec import paper as paper_mod
from fedsec.report.build import build_report, choose_layout, mix_warnings
from fedsec.report.load import load_results
from fedsec.report.plot import plot_curves, plot_heatmaps
from fedsec.report.render import render_markdown
from fedsec.report.stats import paper_ranking, ranking_scores
from fedsec_core.atomic import atomic_write_text
from fedsec_core.errors import FedsecError

__all__ = ["load_results", "paper_ranking", "ranking_scores", "register", "write_report"]


def write_report(
    results_dirs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    rows: str | None = None,
    cols: str | None = None,
    paper: str | None = None,
    only: Sequence[str] = (),
) -> tuple[dict[str, Any], str]:
    """Write report.md, report.json and the PNGs; return the report and the terminal text.
    ``only``: report the slice of the runs those ``AXIS=LABEL,...`` items select."""
    if paper is not None:
        paper_mod.paper_table(paper)  # fail before reading anything
    sweep = load_results(results_dirs, only)
    layout = choose_layout(sweep.axes, rows, cols)
    report = build_report(sweep, layout, paper)
    if only:
        report["only"] = list(only)
    out_dir = Path(out) if out is not None else sweep.root
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FedsecError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    pngs = plot_curves(report, out_dir)
    heatmaps = plot_heatmaps(report, out_dir)
    report["files"] = {
        "markdown": "report.md",
        "json": "report.json",
        "png": list(pngs.values()) + list(heatmaps.values()),
    }
    text, short = render_markdown(report, pngs, heatmaps)
    atomic_write_text(out_dir / "report.md", text)
    # compact: a regime map's report holds every cell's per-seed numbers (MBs indented)
    atomic_write_text(out_dir / "report.json", json.dumps(report, separators=(",", ":")) + "\n")
    return report, short


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the ``fedsec`` parser's subparsers."""
    p = sub.add_parser(
        "report", help="tables, statistics, curves and heatmaps of a sweep's results"
    )
    p.add_argument(
        "results_dirs",
        metavar="RESULTS_DIR",
        nargs="+",
        help="a sweep's output (or any folder of runs); several are reported as one",
    )
    p.add_argument(
        "--out", help="where to write report.md, report.json, PNGs (default: the first RESULTS_DIR)"
    )
    p.add_argument("--rows", metavar="AXIS", help="axis of the table rows (default: defense)")
    p.add_argument("--cols", metavar="AXIS", help="axis of the table columns (default: attack)")
    p.add_argument(
        "--paper",
        metavar="NAME",
        help="show Huang et al. (ICCV 2023) Table 1 beside ours: "
        + "|".join(paper_mod.paper_names()),
    )
    p.add_argument(
        "--only",
        metavar="AXIS=LABEL,...",
        action="append",
        default=[],
        help="report only the runs with these labels (repeatable; as fedsec sweep --only)",
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    report, short = write_report(
        args.results_dirs, args.out, args.rows, args.cols, args.paper, args.only
    )
    out = Path(args.out) if args.out else Path(args.results_dirs[0])
    print(short, end="")
    failures = report["attacker_failures"]
    if failures:
        print(
            f"fedsec: report: warning: in {len(failures)} runs an attacker's reply failed "
            "(their cells measure an attack that did not take part; see report.md): "
            + ", ".join(failures),
            file=sys.stderr,
        )
    for warning in mix_warnings(report):
        print(f"fedsec: report: warning: {warning}", file=sys.stderr)
    c = report["counts"]
    print(
        f"fedsec: wrote report.md, report.json, {', '.join(report['files']['png'])} to {out} "
        f"({c['finished']} of {c['total']} runs finished)"
    )
    return 0
