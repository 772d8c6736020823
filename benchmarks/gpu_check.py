"""Check the GPU path of local training and of the defense math against the CPU path.

One prepared script for a machine with a GPU (issue 8, item 3). It needs torch, numpy,
scipy and scikit-learn only (no Flower), and prints one line per check:

    NAME  DEVICES  PASS|FAIL|INFO  numbers

ending with ``gpu_check: N passed, M failed`` (exit code 1 if anything failed). INFO
lines (speed ratios, TF32 effects) are measurements, not checks.

Training path, for ``lenet`` (1x28x28) and ``vgg9`` (3x32x32), 10 classes: synthetic but
learnable data (each class has a fixed smooth random image as its mean, plus unit
Gaussian noise; seeded), the same initial weights and seed on every device (VGG-9's
convolutions He-initialised: see ``TrainSetup.he_init``).

- ``train/MODEL``: ``fedsec.training.train`` lowers the loss (last epoch's training loss
  at most half the initial test loss), ``evaluate`` gives a test accuracy far above
  chance, every parameter and buffer ends on the requested device; one more epoch is
  timed (after the training run as warm-up, ``torch.cuda.synchronize`` around it).
- ``train-match/MODEL`` (cpu+cuda): a short run (16 steps) with dropout off and TF32 off
  on both devices: the final losses and the trained weights must agree to 1e-3 relative.
  Only float32 rounding (summation order in cuDNN/cuBLAS vs oneDNN) differs there; it is
  about 1e-6 relative per step and stays far below 1e-3 over 16 steps, while any real
  difference in the GPU path (data order, seeding, a batch left on the wrong device, the
  loss reduction) changes the update by O(1). The same run with TF32 at its default is
  reported as INFO.
- ``train-loss/MODEL`` (cpu+cuda): the full training runs' final losses. These cannot
  match closely: dropout draws its masks from each device's own generator (CPU
  Mersenne Twister, CUDA Philox), so the same seed gives different masks, and cuDNN
  convolutions use TF32 by default; SGD amplifies both. Both runs must reach the same
  regime: ``|l_cpu - l_cuda| <= 0.05 + 0.25 max(l_cpu, l_cuda)``.
- INFO ``train-speed/MODEL``: CPU epoch time / GPU epoch time.

Defense math path: one round of ``n = 10`` flattened models of VGG-9 size
(d = 9,225,610) around a common base (client i's noise grows with i, so that scores are
well apart) with one outlier (client 3: a sign-flipped, 4x-scaled update plus 10x
noise), example counts, FLTrust's root update and client ids.
For every rule of ``defenses.rules`` (Multi-metrics in both variants), on each device,
a fresh rule aggregates the same inputs (first call: result and warm-up), then the
best of ``--repeats`` calls of fresh rules is timed.

- ``rule/NAME``: the aggregate, the accepted mask, the scores (and FoolsGold's history)
  live on the input's device; the aggregate is finite; with both devices the accepted
  clients are the same and the aggregates agree: ``||a_cpu - a_cuda|| / ||a_cpu - w_0||
  <= 1e-4``. Noisy rules (WeakDP, FLAME) are compared with their noise set to 0: the
  CPU and CUDA generators give different streams from one seed.
- ``noise/NAME`` (WeakDP, FLAME), per device: with the default noise, the aggregate
  minus the noise-free one has mean ~0 and the expected standard deviation (WeakDP:
  ``noise_std``; FLAME: ``noise_lambda * median ||w_i - w_0||``) within 5%, and a second
  rule with the same seed reproduces it bit for bit on that device.
- INFO ``rule-speed/NAME``: best CPU time / best GPU time, and the peak extra GPU memory
  of one aggregation relative to the ``(n, d)`` float32 matrix.
- INFO ``rule-tf32/NAME``: the CUDA result with TF32 matrix products switched on
  (``torch.backends.cuda.matmul.allow_tf32 = True``, off by default, often switched on
  by training code for speed) against the default: same clients? how far off?

Usage (from the repository root)::

    python benchmarks/gpu_check.py                 # cpu and cuda (cuda must exist)
    python benchmarks/gpu_check.py --device cuda   # cuda only: no comparisons
    python benchmarks/gpu_check.py --quick --device cpu   # small CPU smoke (the test)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The GPU machine has no flwr: defenses/__init__.py imports the Flower strategies only
# when they are asked for, so `from defenses import rules` needs none of it.
from fedsec.models import build_model  # torch/numpy/fedsec.errors only
from fedsec.training import evaluate, train

SEED = 0
NUM_CLASSES = 10
OUTLIER = 3
VGG9_SIZE = 9_225_610
#: train-match: relative tolerance of the final loss and of the weights (see the docstring).
MATCH_TOL = 1e-3
#: rule/NAME: relative tolerance of the aggregate, relative to the aggregate's update.
AGG_TOL = 1e-4
#: noise/NAME: relative tolerance of the noise's measured standard deviation.
NOISE_TOL = 0.05


# ----------------------------------------------------------------------------- report


class Report:
    """Runs checks, each wrapped so that one failure does not stop the others."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def line(self, name: str, devices: str, verdict: str, text: str) -> None:
        print(f"{name:<30} {devices:<9} {verdict:<4}  {text}", flush=True)

    def check(self, name: str, devices: str, fn: Callable[[], tuple[bool, str]]) -> None:
        try:
            ok, text = fn()
        except Exception as error:  # noqa: BLE001 - report it and go on
            ok, text = False, f"{type(error).__name__}: {error}"
            traceback.print_exc(file=sys.stderr)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        self.line(name, devices, "PASS" if ok else "FAIL", text)

    def info(self, name: str, devices: str, text: str) -> None:
        self.line(name, devices, "INFO", text)


#: --fake-cuda: a CPU device that plays the "cuda" part, so that the comparison code runs
#: (and can be tested) without a GPU. torch.device("cpu", 0) != torch.device("cpu").
FAKE_CUDA = torch.device("cpu", 0)


def role(device: torch.device) -> str:
    """"cuda" or "cpu": the part a device plays in the report."""
    return "cuda" if device.type == "cuda" or device == FAKE_CUDA else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """Set cuDNN's and cuBLAS's TF32 switches for a block (None: leave the defaults)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_state() -> str:
    """The TF32 switches as text (reading them can raise if another API set them)."""
    try:
        return (f"cudnn {torch.backends.cudnn.allow_tf32}, "
                f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    except Exception as error:  # noqa: BLE001
        return f"unreadable ({type(error).__name__}: {error})"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(cpu_s: float, cuda_s: float) -> str:
    return f"{cpu_s / cuda_s:.1f}x" if cuda_s > 0 else "inf"


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSetup:
    model: str
    shape: tuple[int, int, int]
    train_examples: int
    test_examples: int
    epochs: int
    lr: float
    #: Kaiming-normal conv weights and zero conv biases instead of PyTorch's default
    #: initialisation. VGG-9 has no BatchNorm: at the default its eight conv layers shrink
    #: the signal below the biases, and SGD sits on a plateau for a number of steps that
    #: varies from run to run (60 to over 200 here), so whether a run has learned, and the
    #: CPU-vs-CUDA final losses, would hinge on when each run leaves it. He initialisation
    #: has no plateau; the path under test (train, evaluate) is the same.
    he_init: bool = False
    batch_size: int = 32
    #: Thresholds; None skips the learning checks (the quick VGG-9 smoke).
    min_accuracy: float | None = 0.8
    max_loss_ratio: float | None = 0.5
    match_examples: int = 512


FULL_TRAIN = (
    TrainSetup("lenet", (1, 28, 28), 2048, 512, epochs=2, lr=0.02),
    # lr 0.003: at 0.01 the He-initialised VGG-9 (no BatchNorm) learns the task in two
    # epochs, then diverges (NaN training loss from epoch 3 on CPU, torch 2.13).
    TrainSetup("vgg9", (3, 32, 32), 1024, 512, epochs=5, lr=0.003, he_init=True),
)
QUICK_TRAIN = (
    TrainSetup("lenet", (1, 28, 28), 384, 128, epochs=2, lr=0.02, min_accuracy=0.5,
               match_examples=128),
    TrainSetup("vgg9", (3, 32, 32), 16, 16, epochs=1, lr=0.003, he_init=True, batch_size=8,
               min_accuracy=None, max_loss_ratio=None, match_examples=16),
)


def synthetic(setup: TrainSetup, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels uniform over 10 classes; x = class mean + N(0, 1).

    The class means are fixed smooth random images (4x4 noise upsampled, unit std),
    the same for every call with this shape; ``seed`` draws the labels and the noise.
    """
    channels, height, width = setup.shape
    means_gen = torch.Generator().manual_seed(1234)
    low = torch.randn(NUM_CLASSES, channels, 4, 4, generator=means_gen)
    means = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    means = means / means.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    x = means[y] + torch.randn(n, channels, height, width, generator=gen)
    return x, y


def on_device(model: nn.Module, device: torch.device) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    return all(t.device.type == device.type for t in tensors)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])


@dataclass
class TrainRun:
    initial_loss: float
    final_loss: float
    accuracy: float
    on_device: bool
    epoch_s: float


def train_run(setup: TrainSetup, init: nn.Module, data, device: torch.device) -> TrainRun:
    (x, y), (x_test, y_test) = data
    model = copy.deepcopy(init)
    before = evaluate(model, x_test, y_test, device=device)
    stats = train(model, x, y, epochs=setup.epochs, batch_size=setup.batch_size,
                  lr=setup.lr, seed=SEED, device=device)
    after = evaluate(model, x_test, y_test, device=device)
    placed = on_device(model, device)
    # The run above was the warm-up (cuDNN algorithm choice, allocator); time one epoch.
    epoch_s, _ = timed(device, lambda: train(model, x, y, epochs=1, batch_size=setup.batch_size,
                                             lr=setup.lr, seed=SEED + 1, device=device))
    return TrainRun(before.loss, stats.loss, after.accuracy, placed, epoch_s)


def match_run(setup: TrainSetup, init: nn.Module, data, device: torch.device,
              allow_tf32: bool | None) -> tuple[float, torch.Tensor]:
    """16 steps without dropout: (final loss, trained weights as a float64 CPU vector)."""
    (x, y), _ = data
    model = copy.deepcopy(init)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with tf32(allow_tf32):
        stats = train(model, x[: setup.match_examples], y[: setup.match_examples], epochs=1,
                      batch_size=setup.batch_size, lr=setup.lr, seed=SEED, device=device)
    return stats.loss, flat(model)


def check_training(report: Report, setups, devices: list[torch.device]) -> None:
    for setup in setups:
        check_model(report, setup, devices)


def check_model(report: Report, setup: TrainSetup, devices: list[torch.device]) -> None:
    name = setup.model
    holder: dict = {}

    def prepare() -> tuple[bool, str]:
        torch.manual_seed(SEED)
        init = build_model(name, setup.shape, NUM_CLASSES)
        if setup.he_init:
            for module in init.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        data = (synthetic(setup, setup.train_examples, 1),
                synthetic(setup, setup.test_examples, 2))
        holder.update(init=init, data=data)
        params = sum(p.numel() for p in init.parameters())
        init_text = ", He init" if setup.he_init else ""
        return True, (f"{params:,} parameters, {setup.train_examples} examples x "
                      f"{setup.epochs} epochs, batch {setup.batch_size}, lr {setup.lr}{init_text}")

    report.check(f"setup/{name}", "-", prepare)
    if "init" not in holder:
        return
    runs: dict[str, TrainRun] = {}
    for device in devices:

        def run_one(device: torch.device = device) -> tuple[bool, str]:
            run = train_run(setup, holder["init"], holder["data"], device)
            runs[role(device)] = run
            problems = []
            if not (math.isfinite(run.final_loss) and run.on_device):
                problems.append("non-finite loss" if run.on_device else "not on device")
            if setup.max_loss_ratio is not None and \
                    not run.final_loss <= setup.max_loss_ratio * run.initial_loss:
                problems.append("loss did not fall enough")
            if setup.min_accuracy is not None and not run.accuracy >= setup.min_accuracy:
                problems.append(f"accuracy below {setup.min_accuracy}")
            learning = "" if setup.min_accuracy is not None else " (quick: learning not checked)"
            text = (f"loss {run.initial_loss:.3f} -> {run.final_loss:.3g}, test acc "
                    f"{run.accuracy:.3f} (chance 0.1), on {device.type}: {run.on_device}, "
                    f"epoch {fmt_s(run.epoch_s)}{learning}")
            return not problems, text + ("; " + ", ".join(problems) if problems else "")

        report.check(f"train/{name}", role(device), run_one)
    if len(devices) < 2:
        return
    cpu, cuda = devices[0], devices[1]

    def match() -> tuple[bool, str]:
        loss_cpu, w_cpu = match_run(setup, holder["init"], holder["data"], cpu, None)
        loss_gpu, w_gpu = match_run(setup, holder["init"], holder["data"], cuda, False)
        start = flat(holder["init"])
        loss_rel = abs(loss_cpu - loss_gpu) / abs(loss_cpu)
        w_rel = ((w_cpu - w_gpu).norm() / (w_cpu - start).norm()).item()
        holder["match"] = loss_cpu, w_cpu, start
        ok = loss_rel <= MATCH_TOL and w_rel <= MATCH_TOL
        return ok, (f"fp32, no dropout, {setup.match_examples // setup.batch_size} steps: "
                    f"loss {loss_cpu:.5f} vs {loss_gpu:.5f} (rel {loss_rel:.1e}), weights "
                    f"rel diff {w_rel:.1e} of the update (tol {MATCH_TOL:g})")

    report.check(f"train-match/{name}", "cpu+cuda", match)
    if "match" in holder:
        try:
            loss_cpu, w_cpu, start = holder["match"]
            loss_gpu, w_gpu = match_run(setup, holder["init"], holder["data"], cuda, None)
            w_rel = ((w_cpu - w_gpu).norm() / (w_cpu - start).norm()).item()
            report.info(f"train-match-tf32/{name}", "cpu+cuda",
                        f"TF32 at its default ({tf32_state()}): loss rel "
                        f"{abs(loss_cpu - loss_gpu) / abs(loss_cpu):.1e}, weights rel {w_rel:.1e}")
        except Exception as error:  # noqa: BLE001 - information only
            report.info(f"train-match-tf32/{name}", "cpu+cuda", f"{type(error).__name__}: {error}")
    if "cpu" in runs and "cuda" in runs:
        a, b = runs["cpu"].final_loss, runs["cuda"].final_loss

        def final_loss() -> tuple[bool, str]:
            bound = 0.05 + 0.25 * max(a, b)
            return abs(a - b) <= bound, (f"final loss cpu {a:.4f}, cuda {b:.4f}, |diff| "
                                         f"{abs(a - b):.4f} (tol {bound:.4f}: different "
                                         "dropout streams, TF32)")

        report.check(f"train-loss/{name}", "cpu+cuda", final_loss)
        report.info(f"train-speed/{name}", "cpu/cuda",
                    f"epoch cpu {fmt_s(runs['cpu'].epoch_s)}, cuda "
                    f"{fmt_s(runs['cuda'].epoch_s)}: GPU {ratio(runs['cpu'].epoch_s, runs['cuda'].epoch_s)} faster")


# ----------------------------------------------------------------------------- rules


def load_rules():
    """The rule classes (raises if defenses.rules cannot be imported)."""
    from defenses import rules

    return rules


def rule_specs(rules) -> list[tuple[str, Callable[[], object], Callable[[], object] | None]]:
    """(label, fresh deterministic rule, fresh noisy rule or None) for every rule."""
    return [
        ("FedAvgRule", rules.FedAvgRule, None),
        ("KrumRule", lambda: rules.KrumRule(num_malicious=1), None),
        ("MultiKrumRule", lambda: rules.MultiKrumRule(num_malicious=1), None),
        ("MedianRule", rules.MedianRule, None),
        ("TrimmedMeanRule", lambda: rules.TrimmedMeanRule(beta=0.1), None),
        ("BulyanRule", lambda: rules.BulyanRule(num_malicious=1), None),
        ("NormClippingRule", rules.NormClippingRule, None),
        ("WeakDPRule", lambda: rules.WeakDPRule(noise_std=0.0, seed=SEED),
         lambda: rules.WeakDPRule(seed=SEED)),
        ("RFARule", rules.RFARule, None),
        ("FoolsGoldRule", rules.FoolsGoldRule, None),
        ("FLAMERule", lambda: rules.FLAMERule(noise_lambda=0.0, seed=SEED),
         lambda: rules.FLAMERule(seed=SEED)),
        ("FLTrustRule", rules.FLTrustRule, None),
        ("RLRRule", rules.RLRRule, None),
        ("MultiMetricsRule[paper]", lambda: rules.MultiMetricsRule(variant="paper"), None),
        ("MultiMetricsRule[reference]", lambda: rules.MultiMetricsRule(variant="reference"), None),
    ]


@dataclass
class Round:
    models: torch.Tensor
    weights: torch.Tensor
    global_model: torch.Tensor
    root_update: torch.Tensor
    client_ids: list[int]

    def to(self, device: torch.device) -> Round:
        return Round(self.models.to(device), self.weights.to(device),
                     self.global_model.to(device), self.root_update.to(device), self.client_ids)

    def call(self, rule):
        return rule.aggregate(self.models, self.weights, self.global_model,
                              client_ids=self.client_ids, root_update=self.root_update)


def make_round(n: int, d: int, seed: int = SEED) -> Round:
    """Float32 models ``w_0 + s + N(0, sigma_i^2)`` (global w_0 ~ N(0, 0.05), shared
    update s ~ N(0, 0.005), sigma_i = 0.002 (1 + 0.15 i), so that the clients' distances
    and scores are well apart and no selection hinges on a near-tie that rounding could
    flip); client OUTLIER is ``w_0 - 4 s + N(0, 0.02)``. Row by row, so no temporary
    outgrows one row."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.empty(d).normal_(0, 0.05, generator=gen)
    shared = torch.empty(d).normal_(0, 0.005, generator=gen)
    models = torch.empty(n, d)
    for i in range(n):
        if i == OUTLIER:
            models[i].normal_(0, 0.02, generator=gen).add_(shared, alpha=-4).add_(base)
        else:
            models[i].normal_(0, 0.002 * (1 + 0.15 * i), generator=gen).add_(shared).add_(base)
    weights = torch.randint(100, 600, (n,), generator=gen).double()
    root = torch.empty(d).normal_(0, 0.002, generator=gen).add_(shared)
    return Round(models, weights, base, root, list(range(100, 100 + n)))


def placement(result, rule, device: torch.device) -> list[str]:
    """What of the result (and of the rule's state) is not on ``device``."""
    wrong = []
    for what, tensor in (("model", result.model), ("accepted", result.accepted),
                         ("scores", result.scores)):
        if tensor is not None and tensor.device.type != device.type:
            wrong.append(f"{what} on {tensor.device}")
    for client, history in rule.state_dict().get("history", {}).items():
        if history.device.type != device.type:
            wrong.append(f"history[{client}] on {history.device}")
            break
    return wrong


def rel_diff(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    """``||a - b|| / ||a - start||`` in float64 on the CPU."""
    a, b, start = (t.detach().cpu().double() for t in (a, b, start))
    return ((a - b).norm() / (a - start).norm().clamp_min(1e-300)).item()


def accepted_text(result) -> str:
    rejected = (~result.accepted.cpu()).nonzero().flatten().tolist()
    return f"rejected {rejected}" if len(rejected) <= result.accepted.numel() // 2 else \
        f"accepted {result.accepted.cpu().nonzero().flatten().tolist()}"


def best_time(device: torch.device, factory, batch: Round, repeats: int) -> float:
    """Best of ``repeats`` timed calls, each of a fresh rule (stateful rules start over)."""
    return min(timed(device, lambda: batch.call(factory()))[0] for _ in range(repeats))


def peak_extra(device: torch.device, factory, batch: Round) -> float | None:
    """Peak extra GPU memory of one aggregation, in units of the (n, d) matrix."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = batch.call(factory())
    sync(device)
    extra = torch.cuda.max_memory_allocated(device) - before
    del result
    return extra / (batch.models.numel() * batch.models.element_size())


def check_rules(report: Report, devices: list[torch.device], n: int, d: int, repeats: int) -> None:
    holder: dict = {}

    def prepare() -> tuple[bool, str]:
        holder["rules"] = load_rules()
        holder["round"] = make_round(n, d)
        return True, (f"n = {n}, d = {d:,} (float32, {n * d * 4 / 2**20:,.0f} MiB), outlier = "
                      f"client {OUTLIER}, {repeats} timed repeats")

    report.check("setup/rules", "-", prepare)
    if "rules" not in holder:
        return
    cpu_round = holder["round"]
    for label, factory, noisy in rule_specs(holder["rules"]):
        check_rule(report, devices, label, factory, noisy, cpu_round, repeats)


def check_rule(report: Report, devices: list[torch.device], label: str, factory, noisy,
               cpu_round: Round, repeats: int) -> None:
    """rule/LABEL (and noise/LABEL, INFO lines) for one rule on every device."""
    results: dict[str, object] = {}
    times: dict[str, float] = {}
    peaks: dict[str, float | None] = {}
    problems: list[str] = []
    errors: list[str] = []
    for device in devices:
        try:
            batch = cpu_round if device.type == "cpu" else cpu_round.to(device)
            rule = factory()
            _, result = timed(device, partial(batch.call, rule))  # result and warm-up
            results[role(device)] = result
            problems += [f"{role(device)}: {w}" for w in placement(result, rule, device)]
            if result.model is None:
                problems.append(f"{role(device)}: kept the model ({result.note})")
            elif not bool(torch.isfinite(result.model).all()):
                problems.append(f"{role(device)}: aggregate not finite")
            times[role(device)] = best_time(device, factory, batch, repeats)
            peaks[role(device)] = peak_extra(device, factory, batch)
        except Exception as error:  # noqa: BLE001 - one device failing is one finding
            traceback.print_exc(file=sys.stderr)
            errors.append(f"{role(device)}: {type(error).__name__}: {error}")

    def verdict() -> tuple[bool, str]:
        found = problems + errors
        parts = []
        if "cpu" in results and "cuda" in results:
            a, b = results["cpu"], results["cuda"]
            same = torch.equal(a.accepted.cpu(), b.accepted.cpu())
            if not same:
                found.append(f"accepted differ: cpu {accepted_text(a)}, cuda {accepted_text(b)}")
            if a.model is not None and b.model is not None:
                agg = rel_diff(a.model, b.model, cpu_round.global_model)
                if not agg <= AGG_TOL:
                    found.append(f"aggregate rel diff {agg:.1e} > {AGG_TOL:g}")
                parts.append(f"agg rel diff {agg:.1e}")
            if a.scores is not None and b.scores is not None:
                sa, sb = a.scores.cpu().double(), b.scores.cpu().double()
                scale = sa.abs().max().clamp_min(1e-300)
                parts.append(f"scores rel diff {((sa - sb).abs().max() / scale).item():.1e}")
            parts.append(f"same clients: {same}")
        if results:
            parts.insert(0, accepted_text(next(iter(results.values()))))
        timing = ", ".join(f"{k} {fmt_s(v)}" for k, v in times.items())
        if timing:
            parts.append(timing)
        if found:
            parts.append("; ".join(found))
        return not found and len(results) == len(devices), ", ".join(parts)

    report.check(f"rule/{label}", "+".join(role(d) for d in devices), verdict)
    if noisy is not None:
        for device in devices:
            base = results.get(role(device))
            report.check(f"noise/{label}", role(device),
                         partial(check_noise, label, noisy, cpu_round, device, base))
    if "cuda" in results:
        tf32_matmul_info(report, label, factory, cpu_round, results["cuda"], devices[-1])
    if "cpu" in times and "cuda" in times:
        peak = peaks.get("cuda")
        memory = "" if peak is None else f", peak extra GPU memory {peak:.2f} x the (n, d) matrix"
        report.info(f"rule-speed/{label}", "cpu/cuda",
                    f"best cpu {fmt_s(times['cpu'])}, cuda {fmt_s(times['cuda'])}: GPU "
                    f"{ratio(times['cpu'], times['cuda'])} faster{memory}")


def tf32_matmul_info(report: Report, label: str, factory, cpu_round: Round, fp32_result,
                     device: torch.device) -> None:
    """INFO: the rule on CUDA with TF32 matrix products switched on (as training scripts
    often do for speed; torch's default is off) against the default float32 result."""
    try:
        batch = cpu_round.to(device)
        with tf32(True):
            result = batch.call(factory())
        parts = [f"same clients as fp32: {torch.equal(result.accepted, fp32_result.accepted)}"]
        if result.model is not None and fp32_result.model is not None:
            parts.append(f"agg rel diff {rel_diff(fp32_result.model, result.model, cpu_round.global_model):.1e}")
        if result.scores is not None and fp32_result.scores is not None:
            sa, sb = fp32_result.scores.cpu().double(), result.scores.cpu().double()
            parts.append(f"scores rel diff {((sa - sb).abs().max() / sa.abs().max().clamp_min(1e-300)).item():.1e}")
        report.info(f"rule-tf32/{label}", "cuda", "matmul TF32 on: " + ", ".join(parts))
    except Exception as error:  # noqa: BLE001 - information only
        report.info(f"rule-tf32/{label}", "cuda", f"{type(error).__name__}: {error}")


def check_noise(label: str, noisy, cpu_round: Round, device: torch.device, base) -> tuple[bool, str]:
    """The noise of a seeded rule: right size, reproducible on this device."""
    if base is None or base.model is None:
        return False, "no noise-free aggregate to compare with"
    batch = cpu_round if device.type == "cpu" else cpu_round.to(device)
    first = batch.call(noisy())
    second = batch.call(noisy())
    rule = noisy()
    if label.startswith("FLAME"):
        norms = (cpu_round.models.double() - cpu_round.global_model.double()).norm(dim=1)
        expected = rule.noise_lambda * norms.quantile(0.5).item()
    else:
        expected = rule.noise_std
    noise = (first.model - base.model).double()
    std, mean = noise.std().item(), noise.mean().item()
    reproducible = torch.equal(first.model, second.model)
    same_clients = torch.equal(first.accepted, base.accepted)
    on = first.model.device.type == device.type
    ok = (abs(std / expected - 1) <= NOISE_TOL and abs(mean) <= 5 * expected / math.sqrt(noise.numel())
          and reproducible and same_clients and on)
    return ok, (f"noise std {std:.4g} (expected {expected:.4g}), mean {mean:.1e}, same seed "
                f"reproduces: {reproducible}, same clients as noise-free: {same_clients}, on "
                f"{device.type}: {on}")


# ----------------------------------------------------------------------------- main


def describe(devices: list[torch.device]) -> None:
    print(f"gpu_check: {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}", flush=True)
    print(f"gpu_check: python {platform.python_version()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"commit {commit()}", flush=True)
    for device in devices:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            print(f"gpu_check: {torch.cuda.get_device_name(device)}, {props.total_memory / 2**30:.0f} "
                  f"GiB, capability {props.major}.{props.minor}, TF32 default: {tf32_state()}",
                  flush=True)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all (default): cpu and cuda, compared; cuda must be available")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke test of the script (VGG-9 learning not checked)")
    parser.add_argument("--only", choices=("train", "rules"), help="run one part only")
    parser.add_argument("--n", type=int, default=10, help="clients per round (default 10)")
    parser.add_argument("--d", type=int, help=f"model size of the round (default {VGG9_SIZE:,}; "
                        "--quick: 266,363)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rule (best kept)")
    parser.add_argument("--fake-cuda", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = Report()
    devices = [] if args.device == "cuda" else [torch.device("cpu")]
    if args.fake_cuda:  # exercise the comparison code on a machine without a GPU
        devices.append(FAKE_CUDA)
    elif args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    try:
        describe(devices)
    except Exception as error:  # noqa: BLE001 - the checks matter more than the header
        print(f"gpu_check: could not describe the machine: {type(error).__name__}: {error}")
    if args.device in ("cuda", "all") and not args.fake_cuda and not torch.cuda.is_available():
        report.check("cuda-available", "cuda", lambda: (False, "torch.cuda.is_available() is False"))
    if not devices:
        print(f"gpu_check: {report.passed} passed, {report.failed} failed")
        return 1
    if args.only in (None, "train"):
        check_training(report, QUICK_TRAIN if args.quick else FULL_TRAIN, devices)
    if args.only in (None, "rules"):
        d = args.d or (2 * (1 << 17) + 4096 + 123 if args.quick else VGG9_SIZE)
        check_rules(report, devices, args.n, d, 1 if args.quick else args.repeats)
    print(f"gpu_check: total {time.perf_counter() - started:.0f} s", flush=True)
    print(f"gpu_check: {report.passed} passed, {report.failed} failed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
