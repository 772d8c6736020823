"""Time the GPU path of local training and of the defense math against the CPU path.

Measurements, not checks: the checks are ``tests/test_gpu.py`` (``python -m pytest -m gpu
tests/test_gpu.py`` on a machine with CUDA). It needs torch, numpy, scipy and
scikit-learn only (no Flower) and prints a header (machine, versions, TF32 defaults),
then one line per measurement, each a ratio against a baseline measured in this process:

- ``train-speed/MODEL``: one epoch of ``fedsec_core.training.train`` for ``lenet`` (1x28x28,
  2048 examples) and ``vgg9`` (3x32x32, 1024 examples), batch 32, synthetic data, the
  same initial weights on every device; the best of ``--repeats`` epochs after one
  warm-up epoch (cuDNN algorithm choice, allocator), ``torch.cuda.synchronize`` around
  each. With CUDA: CPU epoch time / GPU epoch time.
- ``train-tf32/MODEL`` (CUDA): 16 steps without dropout on CPU and CUDA; the CUDA
  run's final loss and weights relative to the CPU run's, with TF32 off and at its
  default (cuDNN convolutions use TF32 by default).
- ``rule-speed/NAME``: every rule of ``defenses.rules`` (Multi-metrics in both variants)
  on one round of ``n = 10`` float32 models of VGG-9 size (d = 9,225,610) with one
  outlier; per device a fresh rule aggregates once (warm-up), then the best of
  ``--repeats`` calls of fresh rules, as a multiple of FedAvg's time on that device (the
  cheapest rule: one weighted mean). With CUDA: best CPU time / best GPU time, and the
  peak extra GPU memory of one aggregation relative to the ``(n, d)`` float32 matrix.
- ``rule-tf32/NAME`` (CUDA): the CUDA result with TF32 matrix products switched on
  (``torch.backends.cuda.matmul.allow_tf32 = True``, off by default, often switched on by
  training code for speed) against the default: same clients? how far off?

Without a CUDA device it says so and times the CPU only (exit code 0). The exit code is
1 only if a measurement raised (its line then says ``error``).

Usage (from the repository root)::

    python benchmarks/gpu_timing.py                 # cpu and cuda, compared
    python benchmarks/gpu_timing.py --device cuda   # cuda only: no ratios to the CPU
    python benchmarks/gpu_timing.py --device cpu --d 100000 --examples 64   # small
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The GPU machine has no flwr: defenses/__init__.py imports the Flower strategies only
# when they are asked for, so `from defenses import rules` needs none of it.
# They come after the sys.path setup above, hence the noqa: E402.
from defenses.testing import OUTLIER, BiasProbe, Round, make_round  # noqa: E402
from fedsec.models import build_model  # noqa: E402  # torch/numpy/fedsec_core.errors only
from fedsec_core.training import train  # noqa: E402

SEED = 0
NUM_CLASSES = 10
VGG9_SIZE = 9_225_610
BATCH = 32
#: (model, input shape, training examples per timed epoch, lr, He-initialised convs).
#: VGG-9 has no BatchNorm and plateaus at PyTorch's default initialisation; He
#: initialisation (as in tests/test_gpu.py) makes the TF32 runs train, not stall.
MODELS = (
    ("lenet", (1, 28, 28), 2048, 0.02, False),
    ("vgg9", (3, 32, 32), 1024, 0.003, True),
)
#: train-tf32: steps of the short run without dropout.
MATCH_STEPS = 16

#: --fake-cuda: a CPU device that plays the "cuda" part, so that the two-device code runs
#: (and can be tested) without a GPU. torch.device("cpu", 0) != torch.device("cpu").
FAKE_CUDA = torch.device("cpu", 0)


def role(device: torch.device) -> str:
    """ "cuda" or "cpu": the part a device plays in the output."""
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
        return (
            f"cudnn {torch.backends.cudnn.allow_tf32}, "
            f"matmul {torch.backends.cuda.matmul.allow_tf32}"
        )
    except Exception as error:  # noqa: BLE001
        return f"unreadable ({type(error).__name__}: {error})"


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def ratio(slow_s: float, fast_s: float) -> str:
    return f"{slow_s / fast_s:.1f}x" if fast_s > 0 else "inf"


class Output:
    """One line per measurement; a measurement that raises prints an error line."""

    def __init__(self) -> None:
        self.errors = 0

    def line(self, name: str, text: str) -> None:
        print(f"{name:<40} {text}", flush=True)

    def measure(self, name: str, fn: Callable[[], str]) -> None:
        try:
            text = fn()
        except Exception as error:  # noqa: BLE001 - report it and go on
            traceback.print_exc(file=sys.stderr)
            self.errors += 1
            text = f"error: {type(error).__name__}: {error}"
        self.line(name, text)


# ----------------------------------------------------------------------------- training


def synthetic(shape: tuple[int, int, int], n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Labels uniform over 10 classes; x = class mean (a smooth random image) + N(0, 1)."""
    channels, height, width = shape
    low = torch.randn(NUM_CLASSES, channels, 4, 4, generator=torch.Generator().manual_seed(1234))
    means = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    means = means / means.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return means[y] + torch.randn(n, channels, height, width, generator=gen), y


def initial_model(name: str, shape: tuple[int, int, int], he_init: bool) -> nn.Module:
    torch.manual_seed(SEED)
    model = build_model(name, shape, NUM_CLASSES)
    if he_init:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    return model


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])


def epoch_time(init: nn.Module, x, y, lr: float, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` epochs after one warm-up epoch."""
    model = copy.deepcopy(init)

    def epoch(seed: int) -> object:
        return train(model, x, y, epochs=1, batch_size=BATCH, lr=lr, seed=seed, device=device)

    epoch(SEED)
    return min(timed(device, lambda i=i: epoch(SEED + 1 + i))[0] for i in range(repeats))


def match_run(
    init: nn.Module, x, y, lr: float, device: torch.device, allow_tf32: bool | None
) -> tuple[float, torch.Tensor]:
    """MATCH_STEPS steps without dropout: (final loss, weights as a float64 CPU vector)."""
    model = copy.deepcopy(init)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    examples = MATCH_STEPS * BATCH
    with tf32(allow_tf32):
        stats = train(
            model,
            x[:examples],
            y[:examples],
            epochs=1,
            batch_size=BATCH,
            lr=lr,
            seed=SEED,
            device=device,
        )
    return stats.loss, flat(model)


def time_training(
    out: Output, devices: list[torch.device], examples: int | None, repeats: int
) -> None:
    for name, shape, default_examples, lr, he_init in MODELS:
        n = examples or default_examples
        init = initial_model(name, shape, he_init)
        x, y = synthetic(shape, n, 1)
        params = sum(p.numel() for p in init.parameters())

        def speed(init=init, x=x, y=y, lr=lr, n=n, params=params) -> str:
            times = {role(d): epoch_time(init, x, y, lr, d, repeats) for d in devices}
            parts = [f"{r} {fmt_s(t)}/epoch" for r, t in times.items()]
            text = ", ".join(parts)
            if "cpu" in times and "cuda" in times:
                text += f": GPU {ratio(times['cpu'], times['cuda'])} faster"
            return text + f" ({n:,} examples, batch {BATCH}, {params:,} parameters)"

        out.measure(f"train-speed/{name}", speed)
        if len(devices) == 2:

            def match(init=init, x=x, y=y, lr=lr) -> str:
                cpu, cuda = devices
                loss_cpu, w_cpu = match_run(init, x, y, lr, cpu, None)
                start = flat(init)
                parts = []
                for label, setting in (("TF32 off", False), ("TF32 default", None)):
                    loss, w = match_run(init, x, y, lr, cuda, setting)
                    loss_rel = abs(loss - loss_cpu) / abs(loss_cpu)
                    w_rel = ((w - w_cpu).norm() / (w_cpu - start).norm()).item()
                    parts.append(f"{label}: loss rel {loss_rel:.1e}, weights rel {w_rel:.1e}")
                steps = -(-min(len(x), MATCH_STEPS * BATCH) // BATCH)
                steps_text = f"{steps} step" + ("s" if steps != 1 else "")
                return f"cuda vs cpu, {steps_text}, no dropout: " + "; ".join(parts)

            out.measure(f"train-tf32/{name}", match)


# ----------------------------------------------------------------------------- rules


def rule_specs() -> list[tuple[str, Callable[[], object]]]:
    """(label, fresh rule) for every rule of defenses.rules; FedAvg (the baseline) first."""
    from defenses import rules

    def _deepsight():
        # the synthetic round has no model behind it: the probe reads the flat vector
        # as the output layer's biases, and a few noise inputs keep it a timing of the rule
        rule = rules.DeepSightRule(num_seeds=1, num_samples=8, seed=SEED)
        rule.probe = BiasProbe()
        return rule

    return [
        ("FedAvgRule", rules.FedAvgRule),
        ("KrumRule", lambda: rules.KrumRule(num_malicious=1)),
        ("MultiKrumRule", lambda: rules.MultiKrumRule(num_malicious=1)),
        ("MedianRule", rules.MedianRule),
        ("TrimmedMeanRule", lambda: rules.TrimmedMeanRule(beta=0.1)),
        ("BulyanRule", lambda: rules.BulyanRule(num_malicious=1)),
        ("NormClippingRule", rules.NormClippingRule),
        ("CenteredClippingRule", rules.CenteredClippingRule),
        ("DnCRule", lambda: rules.DnCRule(seed=SEED)),
        ("SignGuardRule", lambda: rules.SignGuardRule(seed=SEED)),
        ("FLDetectorRule", lambda: rules.FLDetectorRule(seed=SEED)),
        ("DeepSightRule", _deepsight),
        ("WeakDPRule", lambda: rules.WeakDPRule(seed=SEED)),
        ("CRFLRule", lambda: rules.CRFLRule(seed=SEED)),
        ("RFARule", rules.RFARule),
        ("FoolsGoldRule", rules.FoolsGoldRule),
        ("FLAMERule", lambda: rules.FLAMERule(seed=SEED)),
        ("FLTrustRule", rules.FLTrustRule),
        ("RLRRule", rules.RLRRule),
        ("MultiMetricsRule[paper]", lambda: rules.MultiMetricsRule(variant="paper")),
        ("MultiMetricsRule[reference]", lambda: rules.MultiMetricsRule(variant="reference")),
    ]


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


def rel_diff(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    """``||a - b|| / ||a - start||`` in float64 on the CPU."""
    a, b, start = (t.detach().cpu().double() for t in (a, b, start))
    return ((a - b).norm() / (a - start).norm().clamp_min(1e-300)).item()


def time_rules(out: Output, devices: list[torch.device], n: int, d: int, repeats: int) -> None:
    cpu_round = make_round(n, d, SEED)
    batches = {
        role(dev): (dev, cpu_round if dev.type == "cpu" else cpu_round.to(dev)) for dev in devices
    }
    print(
        f"gpu_timing: rules on n = {n}, d = {d:,} (float32, {n * d * 4 / 2**20:,.0f} MiB), "
        f"outlier = client {OUTLIER}, best of {repeats}",
        flush=True,
    )
    baseline: dict[str, float] = {}
    for label, factory in rule_specs():

        def speed(label=label, factory=factory) -> str:
            times, peaks = {}, {}
            for part, (device, batch) in batches.items():
                batch.call(factory())  # warm-up
                sync(device)
                times[part] = best_time(device, factory, batch, repeats)
                peaks[part] = peak_extra(device, factory, batch)
            if label == "FedAvgRule":
                baseline.update(times)
            parts = []
            for part, seconds in times.items():
                base = f" ({ratio(seconds, baseline[part])} FedAvg)" if part in baseline else ""
                parts.append(f"{part} {fmt_s(seconds)}{base}")
            text = ", ".join(parts)
            if "cpu" in times and "cuda" in times:
                text += f": GPU {ratio(times['cpu'], times['cuda'])} faster"
            if peaks.get("cuda") is not None:
                text += f", peak extra GPU memory {peaks['cuda']:.2f} x the (n, d) matrix"
            return text

        out.measure(f"rule-speed/{label}", speed)
        if "cuda" in batches:
            out.measure(
                f"rule-tf32/{label}",
                lambda factory=factory: tf32_effect(factory, *batches["cuda"], cpu_round),
            )


def tf32_effect(factory, device: torch.device, batch: Round, cpu_round: Round) -> str:
    """The rule on CUDA with TF32 matrix products on, against the default float32 result."""
    with tf32(False):
        fp32 = batch.call(factory())
    with tf32(True):
        result = batch.call(factory())
    sync(device)
    parts = [f"same clients as fp32: {torch.equal(result.accepted, fp32.accepted)}"]
    if result.model is not None and fp32.model is not None:
        parts.append(
            f"agg rel diff {rel_diff(fp32.model, result.model, cpu_round.global_model):.1e}"
        )
    if result.scores is not None and fp32.scores is not None:
        sa, sb = fp32.scores.cpu().double(), result.scores.cpu().double()
        scale = sa.abs().max().clamp_min(1e-300)
        parts.append(f"scores rel diff {((sa - sb).abs().max() / scale).item():.1e}")
    return "matmul TF32 on: " + ", ".join(parts)


# ----------------------------------------------------------------------------- main


def describe(devices: list[torch.device]) -> None:
    print(f"gpu_timing: {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}", flush=True)
    print(
        f"gpu_timing: python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"commit {commit()}",
        flush=True,
    )
    for device in devices:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            print(
                f"gpu_timing: {torch.cuda.get_device_name(device)}, "
                f"{props.total_memory / 2**30:.0f} GiB, "
                f"capability {props.major}.{props.minor}, TF32 default: {tf32_state()}",
                flush=True,
            )


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="all (default): cpu and cuda, with ratios; without CUDA the CPU only",
    )
    parser.add_argument("--only", choices=("train", "rules"), help="time one part only")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed epochs / calls (best kept)"
    )
    parser.add_argument("--n", type=positive_int, default=10, help="clients per round (10)")
    parser.add_argument(
        "--d", type=positive_int, default=VGG9_SIZE, help=f"model size of the round ({VGG9_SIZE:,})"
    )
    parser.add_argument(
        "--examples",
        type=positive_int,
        help="training examples per timed epoch (default: lenet 2048, vgg9 1024)",
    )
    parser.add_argument("--fake-cuda", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    devices = [] if args.device == "cuda" else [torch.device("cpu")]
    if args.fake_cuda:  # exercise the two-device code on a machine without a GPU
        devices.append(FAKE_CUDA)
    elif args.device != "cpu" and torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    try:
        describe(devices)
    except Exception as error:  # noqa: BLE001 - the timings matter more than the header
        print(f"gpu_timing: could not describe the machine: {type(error).__name__}: {error}")
    if args.device != "cpu" and not args.fake_cuda and not torch.cuda.is_available():
        what = "nothing to time" if not devices else "CPU timings only"
        print(f"gpu_timing: no CUDA device (torch.cuda.is_available() is False): {what}")
    if not devices:
        return 0
    out = Output()
    if args.only in (None, "train"):
        time_training(out, devices, args.examples, args.repeats)
    if args.only in (None, "rules"):
        time_rules(out, devices, args.n, args.d, args.repeats)
    print(f"gpu_timing: total {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if out.errors else 0


if __name__ == "__main__":
    sys.exit(main())
