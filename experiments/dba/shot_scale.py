"""How far each scaled shot moved the global model under FedAvg, run by run, beside the
run's final backdoor accuracy: the measured reason a single shot lasts or fades.

An attacker of the single-shot attack sends ``scale x (w - w0)``; FedAvg adds
``server_lr x weight x`` that to the model, where ``weight`` is the attacker's share of
the round's examples (``defense.weighting = "examples"``) or one over the number of
clients of the round (``"equal"``, the DBA authors' server). The product
``scale x server_lr x weight`` is the shot's *effective scale*: 1 is model replacement
(the global model steps exactly onto the attacker's model), below 1 the shot lands
short of it, above 1 past it. With the DBA authors' ``scale = 100``, ``eta = 0.1`` and 10
clients a round it is 1 in every round when clients are weighed equally, and
``10 x share`` when they are weighed by examples.

Who attacks in which round, beside whom, and how many examples each reports follow from
the config alone (the partition and the sampling are fixed by the seed, not by
training), so the shots are computed from the sweep files, and each run's final BA is
read from the ``report.json`` of ``fedsec report`` that holds it: the numbers are
rebuilt from the repository and the data, without the runs' folders. Only FedAvg runs
are measured (every reply is aggregated, so the weight is the config's); runs without an
attacker, and runs no report holds, are left out.

    R=experiments/results/dba
    python experiments/dba/shot_scale.py experiments/dba/sweep.toml \\
        experiments/dba/sweep-scratch.toml --report $R/report.json \\
        --report $R/scratch/report.json --json $R/shot-scale.json

Then, per cell (the run's labels but the seed) whose runs have one shot each (the
centralized attack), Spearman's rank correlation of the shot's effective scale with the
final BA over the seeds, with its exact two-sided permutation p-value (every pairing of
the seeds, ``scipy.stats.permutation_test``).

``--json`` writes every number printed, unrounded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fedsec.config import ExperimentConfig
from fedsec.sweep import load_sweep
from fedsec.task import get_task
from fedsec_core.errors import FedsecError
from fedsec_core.sampling import AttackSchedule


def final_backdoor_accuracy(reports: list[dict[str, Any]]) -> dict[str, float]:
    """``{run id: final BA in percent}`` over every group of the reports."""
    out: dict[str, float] = {}
    for report in reports:
        seed_of = {run["id"]: run["labels"][report["seed_axis"]] for run in report["runs"]}
        for s in report["sets"]:
            for group in s["groups"]:
                ba = group["metrics"]["final_backdoor_accuracy"]
                by_seed = dict(zip(ba["seeds"], ba["values"], strict=True))
                for run_id in group["runs"]:
                    if by_seed.get(seed_of[run_id]) is not None:
                        out[run_id] = by_seed[seed_of[run_id]]
    return out


def shots(config: ExperimentConfig) -> tuple[str, list[dict[str, Any]]]:
    """FedAvg's weighting and every shot of the run: round, client, the examples it
    reports, its share of the round's examples and its effective scale."""
    flat = config.to_flat()
    scale = float(flat.get("attack.scale", 1.0))
    server_lr = float(flat["train.server_lr"])
    weighting = flat.get("defense.weighting", "examples")
    schedule = AttackSchedule.for_config(config)
    task = get_task(config)
    sizes = [len(p) for p in task.partitions]
    out = []
    for server_round in schedule.attack_rounds():
        clients, malicious = schedule.sample(server_round)
        # what each client reports to FedAvg: an attacker may train on other data
        reported = {
            c: task.attack.num_examples(sizes[c]) if c in malicious else sizes[c] for c in clients
        }
        total = sum(reported.values())
        for client in malicious:
            share = reported[client] / total
            weight = share if weighting == "examples" else 1.0 / len(clients)
            out.append(
                {
                    "round": server_round,
                    "client": client,
                    "examples": reported[client],
                    "share_of_examples": share,
                    "effective_scale": scale * server_lr * weight,
                }
            )
    return weighting, out


def rank_correlation(scales: list[float], final_ba: list[float]) -> dict[str, Any]:
    """Spearman's rho of the one-shot runs' effective scale with their final BA and its
    exact two-sided permutation p over every pairing (None below 3 runs, and where
    either is the same in every run: equal weights give every shot the same scale)."""
    out: dict[str, Any] = {"n": len(scales), "effective_scale": scales, "final_ba": final_ba}
    if len(scales) < 3 or len(set(scales)) < 2 or len(set(final_ba)) < 2:
        return {**out, "spearman_rho": None, "p": None}
    result = stats.permutation_test(
        (scales, final_ba),
        lambda a, b: stats.spearmanr(a, b).statistic,
        permutation_type="pairings",
        n_resamples=np.inf,
        alternative="two-sided",
    )
    return {**out, "spearman_rho": float(result.statistic), "p": float(result.pvalue)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+", metavar="sweep", help="sweep files")
    parser.add_argument(
        "--report",
        type=Path,
        action="append",
        required=True,
        help="report.json of `fedsec report` holding the runs' final BA (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        runs = [run for path in args.sweeps for run in load_sweep(path).runs]
    except FedsecError as error:
        print(error, file=sys.stderr)
        return 2
    final_ba = final_backdoor_accuracy([json.loads(p.read_text()) for p in args.report])
    out: dict[str, Any] = {}
    print(
        "| run | weighting | shots: round, client (examples, share) -> effective scale | final BA |"
    )
    print("|---|---|---|---|")
    for run in runs:
        config = run.config
        if config.defense.name != "fedavg" or run.id not in final_ba:
            continue
        weighting, measured = shots(config)
        if not measured:
            continue
        out[run.id] = {
            "seed": config.seed,
            "weighting": weighting,
            "final_backdoor_accuracy": final_ba[run.id],
            "shots": measured,
        }
        shot_text = "; ".join(
            f"{s['round']}, {s['client']} ({s['examples']}, {s['share_of_examples']:.3f}) "
            f"-> {s['effective_scale']:.2f}"
            for s in measured
        )
        print(f"| {run.id} | {weighting} | {shot_text} | {final_ba[run.id]:.1f} |")
    one_shot: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        numbers = out.get(run.id)
        if numbers is not None and len(numbers["shots"]) == 1:
            cell = "/".join(f"{a}={v}" for a, v in run.labels.items() if a != "seed")
            scale = numbers["shots"][0]["effective_scale"]
            one_shot.setdefault(cell, []).append((scale, numbers["final_backdoor_accuracy"]))
    correlations = {
        cell: rank_correlation([a for a, _ in pairs], [b for _, b in pairs])
        for cell, pairs in one_shot.items()
    }
    print()
    print("| one-shot cell | seeds | Spearman rho (effective scale, final BA) | exact p |")
    print("|---|---|---|---|")
    for cell, c in correlations.items():
        rho = "-" if c["spearman_rho"] is None else f"{c['spearman_rho']:.2f}"
        p = "-" if c["p"] is None else f"{c['p']:.3g}"
        print(f"| {cell} | {c['n']} | {rho} | {p} |")
    if args.json:
        document = {"runs": out, "one_shot_rank_correlation": correlations}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
