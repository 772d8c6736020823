"""Would the pre-fix pairwise distances have changed a committed Krum / Multi-Krum / Bulyan run?

Until the fix of issue 29, ``defenses.rules.base.squared_distances`` shifted every row by
row 0 and multiplied float32 blocks; with a boosted update in row 0 the honest distances
cancelled catastrophically (``tests/test_defenses_rules.py::test_distance_rules_pick_the_
exact_clients_when_row_0_is_far``). This script reruns sweep cells in this process with
the current rule and, in every round, runs the same rule a second time on the same batch
with the pre-fix distances (a copy of the old formula below), comparing the accepted
clients and the aggregate bit for bit. A run in which no round differs is unaffected: the
old code, given the same inputs, made the same model in every round, so by induction over
the rounds the committed run is the one the fixed code makes.

    python experiments/distance_audit.py experiments/robustness/matrix.toml \\
        --only defense=krum,multi-krum,bulyan --only attack=edge-case-pgd --only seed=0 \\
        --out runs/distance-audit

Prints one line per run and writes ``audit.json`` (per run: the aggregations, those
whose accepted set or model differs, the first such) into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

import defenses.rules.bulyan as bulyan_module
import defenses.rules.krum as krum_module
import defenses.rules.multi_krum as multi_krum_module
from defenses.rules.base import AggregationResult, ClientBatch, blockwise_sums
from fedsec.engines import run_experiment_inprocess
from fedsec.sweep import load_sweep

AUDITED = {
    "krum": (krum_module, krum_module.KrumRule),
    "multi-krum": (multi_krum_module, multi_krum_module.MultiKrumRule),
    "bulyan": (bulyan_module, bulyan_module.BulyanRule),
}


def prefix_squared_distances(models: torch.Tensor) -> torch.Tensor:
    """The pre-fix formula, verbatim in effect: rows shifted by row 0, blocks in the
    models' dtype, block sums in float64."""

    def kernel(block: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor]:
        shifted = block - start
        return (shifted @ shifted.T,)

    products = blockwise_sums(kernel, models, models[0])[0]
    sq = products.diagonal()
    return (sq[:, None] + sq[None, :] - 2 * products).clamp_min(0)


@contextlib.contextmanager
def audited(defense: str, log: list[dict]):
    """Patch ``defense``'s rule so that every round is also decided with the old distances."""
    module, rule_class = AUDITED[defense]
    original = rule_class._aggregate

    def both(self, batch: ClientBatch) -> AggregationResult:
        new = original(self, batch)
        current = module.squared_distances
        module.squared_distances = prefix_squared_distances
        try:
            old = original(self, batch)
        finally:
            module.squared_distances = current
        log.append(
            {
                "same_accepted": bool(torch.equal(new.accepted, old.accepted)),
                "same_model": new.model is not None
                and old.model is not None
                and bool(torch.equal(new.model, old.model)),
            }
        )
        return new

    rule_class._aggregate = both
    try:
        yield
    finally:
        rule_class._aggregate = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="a sweep file (e.g. experiments/robustness/matrix.toml)")
    parser.add_argument("--only", action="append", default=[], help="AXIS=LABEL[,LABEL...]")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", default="runs/distance-audit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    sweep = load_sweep(args.sweep, out, args.overrides)
    results = []
    audit_file = out / "audit.json"
    if audit_file.is_file():
        results = json.loads(audit_file.read_text())
    done = {r["id"] for r in results}
    for run in sweep.select(args.only):
        defense = run.config.defense.name
        if defense not in AUDITED or run.id in done:
            continue
        log: list[dict] = []
        run_dir = out / run.id
        with audited(defense, log):
            run_experiment_inprocess(run.config, run_dir)
        # Aggregations, counted in call order: the server's one a round, and a scaling
        # evasion's trial rounds (the attacker runs the rule too) in between.
        differing = [i + 1 for i, r in enumerate(log) if not r["same_model"]]
        entry = {
            "id": run.id,
            "aggregations": len(log),
            "accepted_differs": sum(not r["same_accepted"] for r in log),
            "model_differs": len(differing),
            "first_differing_aggregation": differing[0] if differing else None,
        }
        results.append(entry)
        out.mkdir(parents=True, exist_ok=True)
        audit_file.write_text(json.dumps(results, indent=1) + "\n")
        verdict = "unaffected" if not differing else f"DIFFERS from aggregation {differing[0]}"
        print(f"{run.id}: {len(log)} aggregations, {verdict}", flush=True)
    affected = [r["id"] for r in results if r["model_differs"]]
    print(f"{len(results)} runs audited, {len(affected)} affected: {', '.join(affected) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
