"""Where the crafted update lay and what the rule did with it, run by run: the committed
record of the known-breaks study's measured reasons.

Reads a ``fedsec sweep`` output (any of this folder's sweeps) and, for every finished run,
summarises its metrics.jsonl: over the rounds in which the crafting stage logged its
measures (``attacks.crafted.position``: ``crafted_z``, the crafted update's mean
per-coordinate distance to the honest mean in honest standard deviations;
``crafted_norm_ratio``, its distance to the honest mean over the honest updates' rms
distance to it; ``crafted_cos``, its cosine to the honest mean), the mean of each; the
share of attack rounds in which the rule kept an attacker (counted as ``fedsec.results.
attacker_acceptance`` counts them, here over the crafted rounds so that each can be
split by its ratio; meaningful for rules that select clients, 100% for those that keep
every reply) and the mean ``crafted_norm_ratio`` of those rounds and of the others;
and, for every run, the round of the best MA and that MA. No-attack runs have only the last two.

    python experiments/known-breaks/position.py runs/known-breaks-mnist --json position-mnist.json

Prose that quotes these measures copies them from the ``--json`` file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fedsec.results import METRICS_FILE, RoundRecord, read_rounds

MEASURES = ("crafted_z", "crafted_norm_ratio", "crafted_cos")
SUMMARY_KEYS = (
    *MEASURES,
    "crafted_rounds",
    "kept_share",
    "norm_ratio_kept",
    "norm_ratio_not_kept",
    "best_ma",
    "best_round",
    "final_ma",
    "rounds",
)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize_run(rounds: list[RoundRecord]) -> dict:
    """The run's measures (see the module docstring); None where a measure has no round."""
    crafted = [r for r in rounds if "crafted_norm_ratio" in r.stage_log]
    out: dict = {m: _mean([float(r.stage_log[m]) for r in crafted]) for m in MEASURES}
    out["crafted_rounds"] = len(crafted)
    kept, other = [], []
    for r in crafted:
        if r.accepted_clients is None or not r.malicious_clients or r.kept_previous_model:
            continue
        ratio = float(r.stage_log["crafted_norm_ratio"])
        (kept if set(r.malicious_clients) & set(r.accepted_clients) else other).append(ratio)
    judged = len(kept) + len(other)
    out["kept_share"] = len(kept) / judged if judged else None
    out["norm_ratio_kept"] = _mean(kept)
    out["norm_ratio_not_kept"] = _mean(other)
    accuracies = [(r.main_accuracy, r.round) for r in rounds if r.main_accuracy is not None]
    out["best_ma"] = out["best_round"] = out["final_ma"] = None  # a run that logged no MA
    if accuracies:
        best, best_round = max(accuracies, key=lambda pair: (pair[0], -pair[1]))
        out["best_ma"] = 100.0 * best
        out["best_round"] = best_round
        out["final_ma"] = 100.0 * accuracies[-1][0]
    out["rounds"] = rounds[-1].round if rounds else 0
    return out


def runs(sweep_dir: Path) -> list[dict]:
    """One record per finished run under ``sweep_dir``: its labels, read from its folder
    (``axis=label/...``, as ``fedsec sweep`` names them), and :func:`summarize_run`.

    The folders are walked rather than ``sweep.json`` read: several sweeps (slices, or
    pinned commits) writing to one folder each rewrite that listing with their own grid.
    """
    out = []
    for summary in sorted(sweep_dir.rglob("summary.json")):
        run_dir = summary.parent
        parts = run_dir.relative_to(sweep_dir).parts
        labels = dict(part.split("=", 1) for part in parts if "=" in part)
        out.append({**labels, **summarize_run(read_rounds(run_dir / METRICS_FILE))})
    return out


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the records (unrounded) here")
    args = parser.parse_args(argv)
    records = runs(args.sweep_dir)
    axes = [k for k in records[0] if k not in SUMMARY_KEYS] if records else []
    print(
        "| " + " | ".join(axes) + " | crafted_z | crafted_norm_ratio | crafted_cos | kept | "
        "norm ratio kept / not kept | best MA (round) | final MA |"
    )
    print("|" + "---|" * (len(axes) + 7))
    for rec in records:
        print(
            "| " + " | ".join(str(rec[a]) for a in axes) + " | "
            f"{_fmt(rec['crafted_z'])} | {_fmt(rec['crafted_norm_ratio'])} | "
            f"{_fmt(rec['crafted_cos'])} | {_fmt(rec['kept_share'], '.0%')} | "
            f"{_fmt(rec['norm_ratio_kept'])} / {_fmt(rec['norm_ratio_not_kept'])} | "
            f"{_fmt(rec['best_ma'], '.2f')} ({_fmt(rec['best_round'], 'd')}) | "
            f"{_fmt(rec['final_ma'], '.2f')} |"
        )
    if args.json is not None:
        out = {"sweep_dir": str(args.sweep_dir), "runs": records}
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
