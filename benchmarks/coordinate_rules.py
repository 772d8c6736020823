"""Time the coordinate-wise rules' column sort: numpy's (what ``sorted_columns`` runs on
the CPU) against ``torch.sort(dim=0)`` (what it replaced), inside the rules.

For each rule that sorts every coordinate's n values (median, trimmed mean, Bulyan),
one aggregation of a random round at the size of the known-breaks study's ``ndss-mnist``
regime (n = 100 clients, d = 407,050: the FC 784-512-10 network), two ways in this
process on the same matrix: ``torch`` (each rule module's ``sorted_columns`` replaced by
``torch.sort(values, dim=0).values`` for the call) and ``numpy`` (the rule as it is).
Each is the best of ``--repeats``, the two alternated so that they share the machine's
drift, at one torch thread (a fedsec client's default). It prints the seconds of each,
their ratio (torch / numpy: > 1 means the numpy sort pays), whether the two aggregates
are equal bit for bit, and ends with ``sort_speedup:`` and each rule's ratio.

Usage (from the repository root)::

    python benchmarks/coordinate_rules.py
    python benchmarks/coordinate_rules.py --clients 30 --dim 1199882   # the EMNIST LeNet
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from defenses.rules import BulyanRule, MedianRule, TrimmedMeanRule  # noqa: E402
from defenses.rules import bulyan as bulyan_module  # noqa: E402
from defenses.rules import median as median_module  # noqa: E402
from defenses.rules import trimmed_mean as trimmed_mean_module  # noqa: E402

SORTING_MODULES = (median_module, trimmed_mean_module, bulyan_module)


def torch_sorted_columns(values: torch.Tensor) -> torch.Tensor:
    return torch.sort(values, dim=0).values


@contextmanager
def torch_sort():
    """The rules with ``torch.sort`` in place of ``sorted_columns`` (the baseline)."""
    saved = [module.sorted_columns for module in SORTING_MODULES]
    for module in SORTING_MODULES:
        module.sorted_columns = torch_sorted_columns
    try:
        yield
    finally:
        for module, original in zip(SORTING_MODULES, saved, strict=True):
            module.sorted_columns = original


def timed(rule, models: torch.Tensor, base: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    model = rule.aggregate(models, torch.ones(models.shape[0]), base).model
    return time.perf_counter() - start, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--dim", type=int, default=407_050)
    parser.add_argument("--malicious", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    base = 0.05 * torch.randn(args.dim, generator=generator)
    models = base + 0.01 * torch.randn(args.clients, args.dim, generator=generator)
    rules = {
        "median": MedianRule(),
        "trimmed-mean": TrimmedMeanRule(beta=args.malicious / args.clients),
        "bulyan": BulyanRule(num_malicious=args.malicious),
    }
    print(
        f"n = {args.clients}, d = {args.dim:,}, float32, 1 torch thread, best of "
        f"{args.repeats}; torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.machine()}"
    )
    ratios = {}
    for name, rule in rules.items():
        best = {"torch": float("inf"), "numpy": float("inf")}
        out = {}
        for _ in range(args.repeats):
            with torch_sort():
                seconds, out["torch"] = timed(rule, models, base)
            best["torch"] = min(best["torch"], seconds)
            seconds, out["numpy"] = timed(rule, models, base)
            best["numpy"] = min(best["numpy"], seconds)
        ratio = best["torch"] / best["numpy"]
        ratios[name] = ratio
        print(
            f"{name:13s}: torch.sort {best['torch']:6.2f} s, numpy sort {best['numpy']:6.2f} s, "
            f"ratio {ratio:5.2f}, equal: {torch.equal(out['torch'], out['numpy'])}"
        )
    print("sort_speedup: " + ", ".join(f"{name} {r:.2f}" for name, r in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
