"""The GPU path of local training and of the defense math, checked against the CPU path.

Tests marked ``gpu`` need a CUDA device and skip without one (``torch.cuda.is_available()``
is False). On a machine with CUDA run them as (from the repository root)::

    timeout 600 python -m pytest -q -m gpu tests/test_gpu.py

They need torch, numpy, scipy, scikit-learn and pytest only, no Flower: ``defenses.rules``
and ``fedsec_core.training`` import none of it. Timings are not tested here;
``benchmarks/gpu_timing.py`` prints them.

Tests that take a ``device`` run on the CPU everywhere, at sizes that keep them to
seconds on two cores, and on CUDA (marked ``gpu``) at the full sizes below. Tests that
compare the two devices are gpu-only; they run the CPU side at the full sizes too.

Training path, for ``lenet`` (1x28x28) and ``vgg9`` (3x32x32), 10 classes: synthetic but
learnable data (each class has a fixed smooth random image as its mean, plus unit
Gaussian noise; seeded), the same initial weights and seed on every device (VGG-9's
convolutions He-initialised: see ``TrainSetup.he_init``).

- ``test_train_learns_on_device``: ``fedsec_core.training.train`` lowers the loss (last
  epoch's training loss at most half the initial test loss), ``evaluate`` gives a test
  accuracy far above chance, every parameter and buffer ends on the requested device.
  On the CPU LeNet trains on 256 examples (same thresholds) and VGG-9 is a smoke run (16
  examples, one epoch: finite loss and placement only), because the full VGG-9 run takes
  minutes on two cores; the full CPU runs are checked in ``test_train_final_loss_*``.
- ``test_train_cpu_matches_cuda_fp64`` (gpu): a short run (16 steps) with dropout off, in
  float64 (model and data) on both devices: the final losses and the trained weights
  must agree to 1e-6 relative (weights: relative to the update). Only rounding
  (summation order in cuDNN/cuBLAS vs oneDNN) differs there. In float32 it does not
  stay small: on the GPU check of 2026-11-30 (H200) VGG-9's weights after 16 steps
  differed by 8.3e-3 of the update with TF32 off (LeNet: 3.4e-7), the float32 rounding
  of about 6e-8 amplified about 1e5-fold by SGD on this deep net without BatchNorm; so
  float32 gives no bound that separates rounding from a bug. Float64's rounding (1e-16)
  amplified alike stays near 1e-11, while any real difference in the GPU path (data
  order, seeding, a batch left on the wrong device, the loss reduction) changes the
  update by O(1). ``benchmarks/gpu_timing.py`` reports the float32 differences.
- ``test_train_final_loss_cpu_vs_cuda`` (gpu): the full training runs' final losses.
  These cannot match closely: dropout draws its masks from each device's own generator
  (CPU Mersenne Twister, CUDA Philox), so the same seed gives different masks, and cuDNN
  convolutions use TF32 by default; SGD amplifies both. Both runs must learn and reach
  the same regime: ``|l_cpu - l_cuda| <= 0.05 + 0.25 max(l_cpu, l_cuda)``.

Defense math path: one round of ``n = 10`` flattened models around a common base (client
i's noise grows with i, so that scores are well apart) with one outlier (client 3: a
sign-flipped, 4x-scaled update plus 10x noise), example counts, FLTrust's root update and
client ids. On CUDA and in the comparisons the models have VGG-9's size (d = 9,225,610);
on the CPU alone d = 135,291 (one column block of the blocked helpers plus a partial
chunk, so their edges run). Each rule (Multi-metrics in both variants) aggregates the
round once per size and device, with a fresh rule; the tests share those results.

- ``test_rule_result_on_input_device``: the aggregate, the accepted mask, the scores (and
  FoolsGold's history) live on the input's device; the aggregate exists and is finite.
- ``test_rule_cpu_matches_cuda`` (gpu): the accepted clients are the same and the
  aggregates agree: ``||a_cpu - a_cuda|| / ||a_cpu - w_0|| <= 1e-4``. Noisy rules
  (WeakDP, CRFL, FLAME) are compared with their noise set to 0: the CPU and CUDA
  generators give different streams from one seed.
- ``test_rule_noise`` (WeakDP, CRFL, FLAME), per device: with the default noise, the
  aggregate minus the noise-free one has mean ~0 and the expected standard deviation
  (WeakDP and CRFL: ``noise_std``; FLAME: ``noise_lambda * median ||w_i - w_0||``)
  within 5%, and a second rule with the same seed reproduces it bit for bit on that
  device.
- ``test_every_exported_rule_is_exercised``: the rules above are every rule class that
  ``defenses.rules`` exports.

Batched clients (``fedsec.batched``, issue 32):

- ``test_batched_clients_match_sequential_on_cuda_fp64`` (gpu): a round of unequal
  clients (LeNet 1x28x28: 37, 10, 64 and 3 examples, batch 16, 2 epochs; VGG-9 3x32x32:
  20, 7 and 33, batch 8, 1 epoch) trained together on CUDA in float64 with dropout off:
  each client's weights equal ``train``'s on CUDA and on the CPU to 1e-6 of the update,
  its loss to 1e-6, its step count exactly. ``benchmarks/batched_clients.py`` times it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defenses import rules
from defenses.rules import AggregationResult, AggregationRule
from defenses.rules.base import BLOCK_COLUMNS, CHUNK_COLUMNS, column_blocks
from defenses.rules.bulyan import distance_to_median
from defenses.testing import BiasProbe, Round, make_round
from fedsec.models import build_model
from fedsec_core.training import evaluate, train

SEED = 0
NUM_CLASSES = 10
NUM_CLIENTS = 10
VGG9_SIZE = 9_225_610
#: Model size of the CPU-only rule tests: crosses a column block and ends mid-chunk.
CPU_SIZE = BLOCK_COLUMNS + CHUNK_COLUMNS + 123
#: train-match (float64): relative tolerance of the final loss and of the weights (module
#: docstring).
MATCH_TOL = 1e-6
#: Rules: relative tolerance of the CPU vs CUDA aggregate, relative to the aggregate's update.
AGG_TOL = 1e-4
#: Noise: relative tolerance of the noise's measured standard deviation. With d >= 135,291
#: draws the estimate's own relative error is about 1 / sqrt(2 d) <= 0.2%.
NOISE_TOL = 0.05
CPU = torch.device("cpu")
MODELS = ("lenet", "vgg9")

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def gpu_test(test: Callable) -> Callable:
    """Mark ``test`` ``gpu`` and skip it without CUDA (before any fixture is set up)."""
    return pytest.mark.gpu(needs_cuda(test))


#: The ``device`` fixture's parameters: the CPU always, CUDA as a gpu case.
DEVICES = (
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=(pytest.mark.gpu, needs_cuda)),
)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device under test: ``cpu``, or the current CUDA device."""
    if request.param == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return CPU


@pytest.fixture
def cuda_device() -> torch.device:
    """The current CUDA device (for gpu-only tests, which skip before this runs)."""
    return torch.device("cuda", torch.cuda.current_device())


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
    #: Thresholds; None skips the learning checks (the VGG-9 smoke run on the CPU).
    min_accuracy: float | None = 0.8
    max_loss_ratio: float | None = 0.5
    #: Examples of the 16-step CPU vs CUDA run (16 batches of 32).
    match_examples: int = 512


#: The runs on CUDA and in the CPU vs CUDA comparisons.
FULL_TRAIN = {
    "lenet": TrainSetup("lenet", (1, 28, 28), 2048, 512, epochs=2, lr=0.02),
    # lr 0.003: at 0.01 the He-initialised VGG-9 (no BatchNorm) learns the task in two
    # epochs, then diverges (NaN training loss from epoch 3 on CPU, torch 2.13).
    "vgg9": TrainSetup("vgg9", (3, 32, 32), 1024, 512, epochs=5, lr=0.003, he_init=True),
}
#: The runs on the CPU alone (seconds on two cores). LeNet keeps the full thresholds: on
#: 256 examples it reaches a training loss of about 0.24 from 2.29 and test accuracy 1.0.
CPU_TRAIN = {
    "lenet": TrainSetup("lenet", (1, 28, 28), 256, 128, epochs=2, lr=0.02),
    "vgg9": TrainSetup(
        "vgg9",
        (3, 32, 32),
        16,
        16,
        epochs=1,
        lr=0.003,
        he_init=True,
        batch_size=8,
        min_accuracy=None,
        max_loss_ratio=None,
    ),
}


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


def flat(model: nn.Module) -> torch.Tensor:
    """The parameters as one float64 CPU vector."""
    return torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])


@dataclass
class TrainRun:
    initial_loss: float
    final_loss: float
    accuracy: float
    #: Parameters or buffers of the trained model that are not on the requested device.
    misplaced: list[str]


class Training:
    """Initial models, data and training runs, each made once per module: the learning
    test and the CPU vs CUDA comparison read the same runs."""

    def __init__(self) -> None:
        self._initial: dict[str, nn.Module] = {}
        self._data: dict[TrainSetup, tuple] = {}
        self._runs: dict[tuple[TrainSetup, torch.device], TrainRun] = {}

    def initial(self, setup: TrainSetup) -> nn.Module:
        """The model's initial weights (one per model, whatever the setup), on the CPU."""
        if setup.model not in self._initial:
            torch.manual_seed(SEED)
            init = build_model(setup.model, setup.shape, NUM_CLASSES)
            if setup.he_init:
                for module in init.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                        nn.init.zeros_(module.bias)
            self._initial[setup.model] = init
        return self._initial[setup.model]

    def data(self, setup: TrainSetup) -> tuple:
        """((x, y) training, (x, y) test), on the CPU."""
        if setup not in self._data:
            self._data[setup] = (
                synthetic(setup, setup.train_examples, 1),
                synthetic(setup, setup.test_examples, 2),
            )
        return self._data[setup]

    def run(self, setup: TrainSetup, device: torch.device) -> TrainRun:
        """Evaluate, train and evaluate a copy of the initial model on ``device``."""
        key = (setup, device)
        if key not in self._runs:
            (x, y), (x_test, y_test) = self.data(setup)
            model = copy.deepcopy(self.initial(setup))
            before = evaluate(model, x_test, y_test, device=device)
            stats = train(
                model,
                x,
                y,
                epochs=setup.epochs,
                batch_size=setup.batch_size,
                lr=setup.lr,
                seed=SEED,
                device=device,
            )
            after = evaluate(model, x_test, y_test, device=device)
            misplaced = [
                f"{name} on {tensor.device}"
                for name, tensor in [*model.named_parameters(), *model.named_buffers()]
                if tensor.device.type != device.type
            ]
            self._runs[key] = TrainRun(before.loss, stats.loss, after.accuracy, misplaced)
        return self._runs[key]

    def match_run(self, setup: TrainSetup, device: torch.device) -> tuple[float, torch.Tensor]:
        """16 steps without dropout in float64: (final loss, trained weights on the CPU)."""
        (x, y), _ = self.data(setup)
        model = copy.deepcopy(self.initial(setup)).double()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        stats = train(
            model,
            x[: setup.match_examples].double(),
            y[: setup.match_examples],
            epochs=1,
            batch_size=setup.batch_size,
            lr=setup.lr,
            seed=SEED,
            device=device,
        )
        return stats.loss, flat(model)


@pytest.fixture(scope="module")
def training() -> Training:
    return Training()


def assert_learned(setup: TrainSetup, run: TrainRun, device: torch.device) -> None:
    """The run's loss is finite and everything is on ``device``; with the setup's
    thresholds, the loss fell enough and the test accuracy is far above chance (0.1)."""
    text = (
        f"{setup.model} on {device}: loss {run.initial_loss:.3f} -> {run.final_loss:.3g}, "
        f"test acc {run.accuracy:.3f} (chance 0.1)"
    )
    assert run.misplaced == [], f"{text}; not on {device.type}: {run.misplaced[:5]}"
    assert math.isfinite(run.final_loss), text
    if setup.max_loss_ratio is not None:
        assert run.final_loss <= setup.max_loss_ratio * run.initial_loss, (
            f"{text}: the loss did not fall to {setup.max_loss_ratio} of the initial loss"
        )
    if setup.min_accuracy is not None:
        assert run.accuracy >= setup.min_accuracy, f"{text}: accuracy below {setup.min_accuracy}"


@pytest.mark.parametrize("model", MODELS)
def test_train_learns_on_device(training: Training, model: str, device: torch.device) -> None:
    """Training lowers the loss, the model predicts well above chance, and every parameter
    and buffer ends on the requested device (VGG-9 on the CPU: a smoke run)."""
    setup = FULL_TRAIN[model] if device.type == "cuda" else CPU_TRAIN[model]
    assert_learned(setup, training.run(setup, device), device)


@gpu_test
@pytest.mark.parametrize("model", MODELS)
def test_train_cpu_matches_cuda_fp64(
    training: Training, model: str, cuda_device: torch.device
) -> None:
    """16 steps in float64, dropout off: same loss and weights on CPU and CUDA to 1e-6."""
    setup = FULL_TRAIN[model]
    loss_cpu, w_cpu = training.match_run(setup, CPU)
    loss_gpu, w_gpu = training.match_run(setup, cuda_device)
    start = flat(training.initial(setup))
    loss_rel = abs(loss_cpu - loss_gpu) / abs(loss_cpu)
    w_rel = ((w_cpu - w_gpu).norm() / (w_cpu - start).norm()).item()
    text = (
        f"fp64, no dropout, {setup.match_examples // setup.batch_size} steps: loss "
        f"{loss_cpu:.5f} vs {loss_gpu:.5f} (rel {loss_rel:.1e}), weights rel diff "
        f"{w_rel:.1e} of the update (tol {MATCH_TOL:g})"
    )
    assert loss_rel <= MATCH_TOL, text
    assert w_rel <= MATCH_TOL, text


@gpu_test
@pytest.mark.parametrize("model", MODELS)
def test_train_final_loss_cpu_vs_cuda(
    training: Training, model: str, cuda_device: torch.device
) -> None:
    """The full runs learn on both devices and end in the same loss regime (different
    dropout streams and TF32 convolutions keep them from matching closely)."""
    setup = FULL_TRAIN[model]
    cpu_run, cuda_run = training.run(setup, CPU), training.run(setup, cuda_device)
    assert_learned(setup, cpu_run, CPU)
    assert_learned(setup, cuda_run, cuda_device)
    a, b = cpu_run.final_loss, cuda_run.final_loss
    bound = 0.05 + 0.25 * max(a, b)
    assert abs(a - b) <= bound, (
        f"final loss cpu {a:.4f}, cuda {b:.4f}, |diff| {abs(a - b):.4f} > tol {bound:.4f}"
    )


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleSpec:
    label: str
    #: A fresh rule; for noisy rules, with the noise set to 0.
    make: Callable[[], AggregationRule]
    #: A fresh rule with its default noise (WeakDP, CRFL, FLAME), else None.
    make_noisy: Callable[[], AggregationRule] | None = None
    #: The columns where the rule's aggregate is not unique (a tie it breaks in a
    #: device-dependent way), given the CPU round and the CPU result; None: none.
    ambiguous: Callable[[Round, AggregationResult], torch.Tensor] | None = None


def bulyan_tie_columns(batch: Round, result: AggregationResult) -> torch.Tensor:
    """Bulyan's columns where the ``beta``-th and ``(beta + 1)``-th of the selected values
    closest to their median are equally close (``beta = theta - 2f``, f = 1). Either
    value gives a valid Bulyan aggregate there, and ``torch.topk`` breaks such ties one
    way on the CPU and another on CUDA (GPU check, 2026-11-30: 16 of 9,225,610 columns of
    this round, which alone moved the aggregate by 2e-4 of the update). The distances
    are the rule's own (``distance_to_median``), so the tie set is the same on both
    devices."""
    selected = batch.models[result.accepted.cpu()]
    beta = selected.shape[0] - 2
    ties = torch.empty(selected.shape[1], dtype=torch.bool)
    for cols in column_blocks(selected.shape[1]):
        closest = torch.sort(distance_to_median(selected[:, cols]), dim=0).values
        ties[cols] = closest[beta - 1] == closest[beta]
    return ties


RULES = (
    RuleSpec("FedAvgRule", rules.FedAvgRule),
    RuleSpec("KrumRule", lambda: rules.KrumRule(num_malicious=1)),
    RuleSpec("MultiKrumRule", lambda: rules.MultiKrumRule(num_malicious=1)),
    RuleSpec("MedianRule", rules.MedianRule),
    RuleSpec("TrimmedMeanRule", lambda: rules.TrimmedMeanRule(beta=0.1)),
    RuleSpec("BulyanRule", lambda: rules.BulyanRule(num_malicious=1), ambiguous=bulyan_tie_columns),
    RuleSpec("NormClippingRule", rules.NormClippingRule),
    RuleSpec("CenteredClippingRule", lambda: rules.CenteredClippingRule(tau=1.0)),
    # all coordinates: no random subset, so both devices see the same numbers
    RuleSpec("DnCRule", lambda: rules.DnCRule(num_malicious=1, subsample=10**9, seed=SEED)),
    RuleSpec("SignGuardRule", lambda: rules.SignGuardRule(coordinate_fraction=1.0, seed=SEED)),
    RuleSpec("FLDetectorRule", lambda: rules.FLDetectorRule(seed=SEED)),
    RuleSpec("DeepSightRule", lambda: _deepsight()),
    RuleSpec(
        "WeakDPRule",
        lambda: rules.WeakDPRule(noise_std=0.0, seed=SEED),
        lambda: rules.WeakDPRule(seed=SEED),
    ),
    RuleSpec(
        "CRFLRule",
        lambda: rules.CRFLRule(noise_std=0.0, seed=SEED),
        lambda: rules.CRFLRule(seed=SEED),
    ),
    RuleSpec("RFARule", rules.RFARule),
    RuleSpec("FoolsGoldRule", rules.FoolsGoldRule),
    RuleSpec(
        "FLAMERule",
        lambda: rules.FLAMERule(noise_lambda=0.0, seed=SEED),
        lambda: rules.FLAMERule(seed=SEED),
    ),
    RuleSpec("FLTrustRule", rules.FLTrustRule),
    RuleSpec("RLRRule", rules.RLRRule),
    RuleSpec("MultiMetricsRule[paper]", lambda: rules.MultiMetricsRule(variant="paper")),
    RuleSpec("MultiMetricsRule[reference]", lambda: rules.MultiMetricsRule(variant="reference")),
)
NOISY_RULES = tuple(spec for spec in RULES if spec.make_noisy is not None)


def _deepsight() -> AggregationRule:
    """DeepSight on a synthetic round: the probe reads the flat vector as output biases."""
    rule = rules.DeepSightRule(num_seeds=1, num_samples=8, seed=SEED)
    rule.probe = BiasProbe()
    return rule


def rule_id(spec: RuleSpec) -> str:
    return spec.label


def round_size(device: torch.device) -> int:
    """d of the round a single-device test uses: VGG-9's on CUDA, small on the CPU."""
    return VGG9_SIZE if device.type == "cuda" else CPU_SIZE


class RuleRuns:
    """Rounds (per size and device) and each rule's first aggregation of them, made
    once per module: the single-device test and the comparison read the same results."""

    def __init__(self) -> None:
        self._rounds: dict[tuple[int, torch.device], Round] = {}
        self._results: dict[tuple[str, int, torch.device], tuple] = {}

    def round(self, d: int, device: torch.device) -> Round:
        key = (d, device)
        if key not in self._rounds:
            cpu_round = make_round(NUM_CLIENTS, d, SEED) if device == CPU else self.round(d, CPU)
            self._rounds[key] = cpu_round if device == CPU else cpu_round.to(device)
        return self._rounds[key]

    def first(
        self, spec: RuleSpec, d: int, device: torch.device
    ) -> tuple[AggregationRule, AggregationResult]:
        """(the rule after the call, its result) for a fresh deterministic rule."""
        key = (spec.label, d, device)
        if key not in self._results:
            rule = spec.make()
            self._results[key] = rule, self.round(d, device).call(rule)
        return self._results[key]


@pytest.fixture(scope="module")
def rule_runs() -> RuleRuns:
    return RuleRuns()


def placement(result: AggregationResult, rule: AggregationRule, device: torch.device) -> list:
    """What of the result (and of the rule's state) is not on ``device``."""
    wrong = []
    for what, tensor in (
        ("model", result.model),
        ("accepted", result.accepted),
        ("scores", result.scores),
    ):
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


def accepted_text(result: AggregationResult) -> str:
    rejected = (~result.accepted.cpu()).nonzero().flatten().tolist()
    return (
        f"rejected {rejected}"
        if len(rejected) <= result.accepted.numel() // 2
        else f"accepted {result.accepted.cpu().nonzero().flatten().tolist()}"
    )


@pytest.mark.parametrize("spec", RULES, ids=rule_id)
def test_rule_result_on_input_device(
    rule_runs: RuleRuns, spec: RuleSpec, device: torch.device
) -> None:
    """The aggregate, mask, scores and rule state live on the input's device; the
    aggregate exists and is finite."""
    rule, result = rule_runs.first(spec, round_size(device), device)
    assert placement(result, rule, device) == []
    assert result.model is not None, f"kept the model: {result.note}"
    assert bool(torch.isfinite(result.model).all()), "aggregate not finite"


@gpu_test
@pytest.mark.parametrize("spec", RULES, ids=rule_id)
def test_rule_cpu_matches_cuda(
    rule_runs: RuleRuns, spec: RuleSpec, cuda_device: torch.device
) -> None:
    """VGG-9-size round: the same clients accepted on CPU and CUDA, aggregates to 1e-4
    (on the columns where the rule's aggregate is unique: see ``RuleSpec.ambiguous``)."""
    _, a = rule_runs.first(spec, VGG9_SIZE, CPU)
    _, b = rule_runs.first(spec, VGG9_SIZE, cuda_device)
    assert torch.equal(a.accepted.cpu(), b.accepted.cpu()), (
        f"accepted differ: cpu {accepted_text(a)}, cuda {accepted_text(b)}"
    )
    assert a.model is not None and b.model is not None, f"cpu {a.note!r}, cuda {b.note!r}"
    cpu_round = rule_runs.round(VGG9_SIZE, CPU)
    unique = torch.ones(VGG9_SIZE, dtype=torch.bool)
    if spec.ambiguous is not None:
        unique = ~spec.ambiguous(cpu_round, a)
    agg = rel_diff(a.model[unique], b.model.cpu()[unique], cpu_round.global_model[unique])
    scores = f", {VGG9_SIZE - int(unique.sum())} tied columns left out"
    if a.scores is not None and b.scores is not None:
        sa, sb = a.scores.cpu().double(), b.scores.cpu().double()
        scale = sa.abs().max().clamp_min(1e-300)
        scores += f", scores rel diff {((sa - sb).abs().max() / scale).item():.1e}"
    assert agg <= AGG_TOL, f"aggregate rel diff {agg:.1e} > {AGG_TOL:g}{scores}"


def test_bulyan_tie_columns_are_where_the_aggregate_is_not_unique() -> None:
    """On a hand-built round (n = 10, f = 1: Bulyan selects 8, averages the 6 closest to
    the median), column 0 has its 6th and 7th closest values equally far from the median
    and column 1 has no tie; the helper flags column 0 only, and off the tie Bulyan's
    aggregate is the unique mean."""
    # column 0: median 3.5; distances 0.5 0.5 1.5 1.5 2.5 | 3 (0.5) and 3 (6.5) tie | 9
    column_tie = [3.0, 4.0, 2.0, 5.0, 1.0, 0.5, 6.5, 12.5]
    # column 1: median 3.5; the six closest are 1..6 (2.5 at most), then 5.5 and 6.5
    column_free = [-3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0]
    selected = torch.tensor([column_tie, column_free]).T
    models = torch.cat([selected, torch.tensor([[1e3, 1e3], [-1e3, -1e3]])])
    weights = torch.ones(10, dtype=torch.float64)
    batch = Round(models, weights, torch.zeros(2), torch.zeros(2), list(range(10)))
    result = batch.call(rules.BulyanRule(num_malicious=1))
    assert result.accepted.tolist() == [True] * 8 + [False] * 2
    assert bulyan_tie_columns(batch, result).tolist() == [True, False]
    assert float(result.model[1]) == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)


@pytest.mark.parametrize("spec", NOISY_RULES, ids=rule_id)
def test_rule_noise(rule_runs: RuleRuns, spec: RuleSpec, device: torch.device) -> None:
    """The seeded noise has mean ~0 and the expected std (5%), keeps the clients, stays
    on the device, and the same seed reproduces it bit for bit on that device.

    The mean bound is 5 standard errors of the mean of d independent draws."""
    d = round_size(device)
    batch = rule_runs.round(d, device)
    _, base = rule_runs.first(spec, d, device)
    assert base.model is not None, base.note
    first = batch.call(spec.make_noisy())
    second = batch.call(spec.make_noisy())
    rule = spec.make_noisy()
    if isinstance(rule, rules.FLAMERule):
        cpu_round = rule_runs.round(d, CPU)
        norms = (cpu_round.models.double() - cpu_round.global_model.double()).norm(dim=1)
        expected = rule.noise_lambda * norms.quantile(0.5).item()
    else:
        expected = rule.noise_std
    assert first.model is not None, first.note
    assert first.model.device.type == device.type
    assert torch.equal(first.model, second.model), "the same seed gave different noise"
    assert torch.equal(first.accepted, base.accepted), (
        f"noisy {accepted_text(first)}, noise-free {accepted_text(base)}"
    )
    noise = (first.model - base.model).double()
    std, mean = noise.std().item(), noise.mean().item()
    assert abs(std / expected - 1) <= NOISE_TOL, f"noise std {std:.4g}, expected {expected:.4g}"
    assert abs(mean) <= 5 * expected / math.sqrt(noise.numel()), f"noise mean {mean:.1e}"


def test_every_exported_rule_is_exercised() -> None:
    """Every rule class in ``defenses.rules.__all__`` (an AggregationRule subclass with a
    config name: the bases AggregationRule and SeededRule have none) is among the rules
    above, and Multi-metrics runs in both variants."""
    exported = {
        obj
        for obj in (getattr(rules, name) for name in rules.__all__)
        if isinstance(obj, type) and issubclass(obj, AggregationRule) and obj.name
    }
    made = [spec.make() for spec in RULES]
    assert {type(rule) for rule in made} == exported
    assert {type(spec.make_noisy()) for spec in NOISY_RULES} == {
        rules.WeakDPRule,
        rules.CRFLRule,
        rules.FLAMERule,
    }
    variants = {rule.variant for rule in made if isinstance(rule, rules.MultiMetricsRule)}
    assert variants == {"paper", "reference"}


# ---------------------------------------------------------- batched clients (fedsec.batched)

#: Unequal clients (a short last batch, one client smaller than a batch) per model:
#: (sizes, batch size, epochs). The CPU-side equality is tests/test_batched.py.
BATCHED_ROUNDS = {"lenet": ((37, 10, 64, 3), 16, 2), "vgg9": ((20, 7, 33), 8, 1)}


@gpu_test
@pytest.mark.parametrize("model", MODELS)
def test_batched_clients_match_sequential_on_cuda_fp64(
    model: str, cuda_device: torch.device
) -> None:
    """``fedsec.batched.train_clients`` on CUDA, float64, dropout off: every client's
    weights equal ``train``'s on CUDA and on the CPU to ``MATCH_TOL`` of the update, its
    loss to ``MATCH_TOL`` relative, its step count exactly (module docstring: float64
    separates rounding from a bug, float32 does not)."""
    from fedsec.batched import train_clients

    sizes, batch_size, epochs = BATCHED_ROUNDS[model]
    shape = (1, 28, 28) if model == "lenet" else (3, 32, 32)
    torch.manual_seed(SEED)
    net = build_model(model, shape, NUM_CLASSES).double()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    g = torch.Generator().manual_seed(SEED)
    data = [
        (
            torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, NUM_CLASSES, (n,), generator=g),
        )
        for n in sizes
    ]
    seeds = [SEED + 17 * i for i in range(len(sizes))]
    hyper = {"epochs": epochs, "batch_size": batch_size, "lr": 0.01}
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    results = train_clients(net, data, seeds=seeds, device=cuda_device, **hyper)
    names = [name for name, _ in net.named_parameters()]
    for (x, y), seed, result in zip(data, seeds, results, strict=True):
        batched = torch.cat([result.params[n].reshape(-1) for n in names]).cpu()
        for device in (cuda_device, CPU):
            ref = copy.deepcopy(net)
            stats = train(ref, x, y, seed=seed, device=device, **hyper)
            ref_w = torch.cat([p.detach().reshape(-1) for p in ref.parameters()]).cpu()
            rel = ((batched - ref_w).norm() / (ref_w - start.cpu()).norm()).item()
            assert rel <= MATCH_TOL, f"{model}, {len(y)} examples, vs {device}: {rel:.1e}"
            assert result.stats.loss == pytest.approx(stats.loss, rel=MATCH_TOL)
            assert result.stats.num_steps == stats.num_steps
