"""How much does each engine add on top of the training it runs?

Times the same rounds three ways, in this process:

- ``bare``: the client training (``fedsec_core.training.train`` with the ClientApp's exact
  arguments), a weighted average and the central evaluation, called in a plain loop:
  the compute any engine must do;
- ``inprocess``: ``fedsec run`` on the in-process engine (ServerApp + ClientApp through
  Flower Messages, run directory written every round);
- ``flower``: the same on Flower's simulation engine (Ray), first round excluded
  (Ray start-up) and reported separately.

Each is timed by wall clock and by this process's CPU time (all threads). On a shared
virtual machine the wall clock of the same work varies by 10-20% from run to run (other
tenants, steal time); CPU time is what the work itself costs, so the overhead ratio is
taken on CPU time. ``bare`` and ``inprocess`` alternate ``--repeats`` times, so each pair
shares the machine's drift; the overhead is the median of the pairs' CPU ratios. Prints
the times and ratios and ends with ``inprocess_overhead: <median inprocess / bare CPU>``.

    python benchmarks/engines.py [--rounds 5] [--repeats 5] [--skip-flower]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedsec.cli import DEFAULT_EXPERIMENT
from fedsec.config import load_config
from fedsec.engines import run_experiment
from fedsec.results import read_metrics
from fedsec.server import CentralEvaluator
from fedsec.task import get_task
from fedsec_core.sampling import ClientSampler
from fedsec_core.training import train


class Timer:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bare_rounds(config) -> Timer:
    """The federation's compute with no framework at all."""
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    t = config.train
    sampler = ClientSampler(task.num_clients, t.clients_per_round, config.seed)
    evaluator = CentralEvaluator(task)
    state = task.new_model().state_dict()
    with Timer() as timer:
        for server_round in range(1, t.rounds + 1):
            state = bare_round(task, sampler, evaluator, state, server_round)
    return timer


def bare_round(task, sampler, evaluator, state: dict, server_round: int) -> dict:
    """One round: each sampled client's training, the weighted mean, the evaluation."""
    states, sizes = [], []
    for pid in sampler.sample(server_round):
        model = task.new_model()
        model.load_state_dict(state)
        x, y = task.client_data(pid)
        stats = train(model, x, y, **task.train_kwargs(server_round, pid))
        states.append(model.state_dict())
        sizes.append(stats.num_examples)
    weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    state = {k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) for k in state}
    evaluator(ArrayRecord(state))
    return state


def engine_rounds(config, out: Path) -> tuple[Timer, list[dict]]:
    with Timer() as timer:
        run_experiment(config, out)
    return timer, read_metrics(out / "metrics.jsonl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args()

    config = load_config(DEFAULT_EXPERIMENT, [f"train.rounds={args.rounds}"])
    get_task(config)  # load and partition the data once, outside every timing
    print(
        f"config: default experiment ({config.data.name}, {config.model.name}, "
        f"{config.data.num_clients} clients, {config.train.clients_per_round}/round), "
        f"{args.rounds} rounds, torch threads per client = {config.engine.client_num_cpus}"
    )

    bare, inproc = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # interleaved, so drift hits both alike
            bare.append(bare_rounds(config))
            inproc.append(engine_rounds(config, Path(tmp) / f"inprocess-{i}")[0])
        for label, runs in (("bare compute", bare), ("inprocess engine", inproc)):
            print(
                f"{label:<18}: wall {min(r.wall for r in runs):6.2f} s, cpu "
                f"{min(r.cpu for r in runs):6.2f} s  "
                f"(wall: {', '.join(f'{r.wall:.2f}' for r in runs)};"
                f" cpu: {', '.join(f'{r.cpu:.2f}' for r in runs)})"
            )
        print(
            f"inprocess / bare  : wall "
            f"{min(r.wall for r in inproc) / min(r.wall for r in bare):.3f}"
        )
        if not args.skip_flower:
            flower_cfg = config.with_overrides(["engine.name=flower"]).validate()
            timer, rounds = engine_rounds(flower_cfg, Path(tmp) / "flower")
            total = timer.wall
            first = rounds[0]["time_s"]
            steady = (rounds[-1]["time_s"] - first) / max(len(rounds) - 1, 1)
            bare_per_round = min(r.wall for r in bare) / args.rounds
            print(
                f"flower engine     : {total:7.2f} s in all (start-up, data loading and "
                f"round 1: {total - (rounds[-1]['time_s'] - first):.2f} s)"
            )
            print(
                f"flower per round  : {steady:7.2f} s after round 1 "
                f"(bare: {bare_per_round:.2f} s/round, ratio {steady / bare_per_round:.3f})"
            )
    ratios = sorted(i.cpu / b.cpu for b, i in zip(bare, inproc, strict=True))
    print(f"pair cpu ratios   : {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"inprocess_overhead: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
