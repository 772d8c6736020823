"""How fast is fedsec's Multi-metrics aggregation next to the reference code's loop?

For two real model sizes (VGG-9 on CIFAR-10: d = 9,225,610, n = 10 clients; the EMNIST
LeNet: d = 1,199,882, n = 30), on random models around a common base with one noisy
outlier, it times

- ``loop``: a re-creation of the authors' reference code: for every ordered pair of
  clients, the cosine of the two models, the L1 norm of their difference and the
  difference of their L2 norms, then ``s = t inv(cov) t^T``, the ``int(0.3 n)`` lowest
  kept and averaged. Run on float32 models (as the reference runs; timed for the
  speedup) and on float64 copies (the accurate scores to compare with);
- ``reference``: ``MultiMetricsRule(variant="reference")``, the same scores with no
  loop over pairs;
- ``paper``: ``MultiMetricsRule(variant="paper")``, the paper's O(n d) definition.

It prints the times, the speedup over the float32 loop, whether the same clients were
kept, the largest relative score difference to each loop, the peak extra memory of
each variant (peak RSS growth in a fresh subprocess, relative to the ``(n, d)``
float32 matrix) and ends with ``speedup_vs_loop: <the smaller of the two speedups>``.
Linux only (it reads /proc).

    python benchmarks/multi_metrics.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defenses.rules import AggregationResult, MultiMetricsRule

SIZES = {"vgg9": (10, 9_225_610), "lenet": (30, 1_199_882)}
OUTLIER = 3


def make_round(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Models around a common base (weights ~ 0.05, shared update, 0.002 noise); the
    outlier has 10x the noise. Filled row by row so no temporary outgrows one row."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.empty(d).normal_(0, 0.05, generator=gen)
    shared = torch.empty(d).normal_(0, 0.005, generator=gen).add_(base)
    models = torch.empty(n, d)
    for i in range(n):
        noise = 0.02 if i == OUTLIER else 0.002
        models[i].normal_(0, noise, generator=gen).add_(shared)
    weights = torch.randint(100, 600, (n,), generator=gen).double()
    return models, weights, base


def loop_aggregate(models: torch.Tensor, weights: torch.Tensor) -> AggregationResult:
    """The reference code's aggregation, pair by ordered pair."""
    n = models.shape[0]
    terms = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            cosine = F.cosine_similarity(models[i], models[j], dim=0).item()
            terms[i, 0] += (1 - cosine) ** 2
            terms[i, 1] += torch.norm(models[i] - models[j], p=1).item()
            terms[i, 2] += abs(torch.norm(models[i]).item() - torch.norm(models[j]).item())
    inverse = np.linalg.inv(np.cov(terms.T))
    scores = np.einsum("ij,jk,ik->i", terms, inverse, terms)
    chosen = torch.from_numpy(np.argsort(scores)[: int(0.3 * n)])
    share = weights[chosen] / weights[chosen].sum()
    model = (share.to(models.dtype)[:, None] * models[chosen]).sum(dim=0)
    accepted = torch.zeros(n, dtype=torch.bool)
    accepted[chosen] = True
    return AggregationResult(model, accepted, torch.from_numpy(scores))


def kept(result: AggregationResult) -> list[int]:
    return result.accepted.nonzero().flatten().tolist()


def relative(result: AggregationResult, truth: AggregationResult) -> float:
    """Largest relative difference of the scores."""
    return ((result.scores - truth.scores).abs() / truth.scores.abs()).max().item()


def best_time(fn, repeats: int) -> tuple[float, AggregationResult]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_extra_memory(variant: str, size: str) -> float:
    """Peak RSS growth of one aggregation, in units of the (n, d) float32 matrix.

    Measured in a fresh process (``VmHWM`` of /proc/self/status: ``ru_maxrss`` would
    inherit this big process's peak across ``exec``)."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory", variant, size],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure_memory(variant: str, size: str) -> None:
    """Run in a fresh process: print the peak RSS growth of one aggregation."""
    n, d = SIZES[size]
    models, weights, start = make_round(n, d)
    rule = MultiMetricsRule(variant=variant)
    rule.aggregate(models[:, :1000], weights, start[:1000])  # load kernels and libraries
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status_kib("VmHWM")
    rule.aggregate(models, weights, start)
    print((_status_kib("VmHWM") - before) * 1024 / models.numel() / models.element_size())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def compare(size: str, repeats: int) -> float:
    """Time and compare the loop and both variants on one model size; return the speedup."""
    n, d = SIZES[size]
    models, weights, start = make_round(n, d)
    reference = MultiMetricsRule(variant="reference")
    paper = MultiMetricsRule(variant="paper")
    reference.aggregate(models[:, :1000], weights, start[:1000])  # warm up
    loop_s, loop = best_time(partial(loop_aggregate, models, weights), 1)
    loop64_s, loop64 = best_time(partial(loop_aggregate, models.double(), weights), 1)
    ref_s, ours = best_time(partial(reference.aggregate, models, weights, start), repeats)
    paper_s, mine = best_time(partial(paper.aggregate, models, weights, start), repeats)
    print(f"\n{size}: n = {n}, d = {d:,}, outlier = client {OUTLIER}")
    print(f"  loop over ordered pairs, float32  {loop_s:8.3f} s")
    print(f"  loop over ordered pairs, float64  {loop64_s:8.3f} s")
    print(
        f"  reference variant                 {ref_s:8.3f} s   "
        f"speedup {loop_s / ref_s:.1f}x (float32 loop), {loop64_s / ref_s:.1f}x (float64)"
    )
    print(
        f"  kept                              {kept(ours)}; float32 loop {kept(loop)}, "
        f"float64 loop {kept(loop64)}"
    )
    print(
        f"  max relative score difference     {relative(ours, loop64):.1e} to the float64 "
        f"loop, {relative(ours, loop):.1e} to the float32 loop "
        f"(float32 loop to float64 loop: {relative(loop, loop64):.1e})"
    )
    print(f"  paper variant                     {paper_s:8.3f} s   kept {kept(mine)}")
    for variant in ("reference", "paper"):
        extra = peak_extra_memory(variant, size)
        print(
            f"  peak extra memory, {variant:9s}      {extra:8.3f} x the (n, d) matrix "
            f"({extra * n * d * 4 / 2**20:,.0f} MiB)"
        )
    return loop_s / ref_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        measure_memory(*args.memory)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start"
    )
    speedups = [compare(size, args.repeats) for size in SIZES]
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    print(f"speedup_vs_loop: {min(speedups):.1f}")


if __name__ == "__main__":
    main()
