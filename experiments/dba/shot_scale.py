"""How far each scaled shot moved the global model, run by run: the measured reason a
single shot lasts or fades under FedAvg.

An attacker of the single-shot attack sends ``scale x (w - w0)``; FedAvg adds
``server_lr x weight x`` that to the model, where ``weight`` is the attacker's share of
the round's examples (``defense.weighting = "examples"``) or one over the number of
clients aggregated (``"equal"``, the DBA authors' server). The product
``scale x server_lr x weight`` is the shot's *effective scale*: 1 is model replacement
(the global model steps exactly onto the attacker's model), below 1 the shot lands
short of it, above 1 past it. With the DBA authors' ``scale = 100``, ``eta = 0.1`` and 10
clients a round it is 1 in every round when clients are weighed equally, and
``10 x share`` when they are weighed by examples.

For every finished run (one with a ``summary.json``) under ``root`` (a sweep's output,
or any folder of runs) it rebuilds the run's partition from its ``config.toml`` (the
data must be on this machine), reads who attacked in which round from its
``metrics.jsonl``, and prints per run the shots (round, client, its examples, its
share, the effective scale) and the final BA. No-attack runs are skipped.

    M=experiments/results/dba/mnist
    python experiments/dba/shot_scale.py runs/dba-mnist --json $M/shot-scale.json > $M/shot-scale.md

``--json`` writes every number printed, unrounded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedsec.config import load_config
from fedsec.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_rounds
from fedsec.task import get_task


def shots(run_dir: Path) -> dict[str, Any] | None:
    """The run's shots and final BA; None for a run without attackers."""
    config = load_config(run_dir / CONFIG_FILE)
    flat = config.to_flat()
    rounds = read_rounds(run_dir / METRICS_FILE)
    attacked = [r for r in rounds if r.malicious_clients]
    if not attacked:
        return None
    sizes = [len(p) for p in get_task(config).partitions]
    scale = float(flat.get("attack.scale", 1.0))
    server_lr = float(flat["train.server_lr"])
    weighting = flat.get("defense.weighting", "examples")
    out = []
    for record in attacked:
        # a rule that logs no selection aggregated every reply
        aggregated = record.accepted_clients or record.clients
        total = sum(sizes[c] for c in aggregated)
        for client in record.malicious_clients:
            share = sizes[client] / total
            weight = share if weighting == "examples" else 1.0 / len(aggregated)
            if client not in aggregated:  # rejected: the shot moved nothing
                weight = 0.0
            out.append(
                {
                    "round": record.round,
                    "client": client,
                    "examples": sizes[client],
                    "share_of_examples": share,
                    "effective_scale": scale * server_lr * weight,
                }
            )
    final = rounds[-1]
    return {
        "seed": config.seed,
        "weighting": weighting,
        "rounds": final.round,
        "final_backdoor_accuracy": 100.0 * final.backdoor_accuracy,
        "shots": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a folder of runs (a sweep's --out)")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args(argv)
    run_dirs = sorted(p.parent for p in args.root.rglob(CONFIG_FILE))
    if not run_dirs:
        print(f"{args.root}: no runs (no {CONFIG_FILE} below it)", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    print(
        "| run | weighting | shots: round, client (examples, share) -> effective scale | final BA |"
    )
    print("|---|---|---|---|")
    for run_dir in run_dirs:
        if not (run_dir / SUMMARY_FILE).is_file():  # not finished: no final BA yet
            continue
        numbers = shots(run_dir)
        if numbers is None:
            continue
        run_id = str(run_dir.relative_to(args.root))
        out[run_id] = numbers
        shot_text = "; ".join(
            f"{s['round']}, {s['client']} ({s['examples']}, {s['share_of_examples']:.3f}) "
            f"-> {s['effective_scale']:.2f}"
            for s in numbers["shots"]
        )
        print(
            f"| {run_id} | {numbers['weighting']} | {shot_text} | "
            f"{numbers['final_backdoor_accuracy']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
