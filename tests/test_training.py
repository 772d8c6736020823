"""Tests of the training/evaluation loops and the flat-parameter helpers.

Trainings that are compared bitwise run in this one process at one thread count (the
``one_thread`` fixture): torch results differ bitwise between ``torch.set_num_threads`` values.
"""

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedsec.models import build_model
from fedsec_core.errors import ConfigError
from fedsec_core.training import (
    EvalStats,
    TrainStats,
    assign_flat_params,
    evaluate,
    flatten_params,
    parameter_count,
    predict_logits,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run on one thread: these small models gain nothing from more, and on a shared,
    loaded 2-core machine multi-threaded torch slows down several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(n: int, seed: int, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """One unit-variance Gaussian blob per class in 16 dims (as 1x4x4 images), means 4 apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    means = 4.0 * np.eye(num_classes, 16)
    x = means[y] + rng.standard_normal((n, 16))
    return torch.from_numpy(x.astype(np.float32)).reshape(n, 1, 4, 4), torch.from_numpy(y)


def small_lenet() -> nn.Module:
    """LeNet (with dropout) on 8x8 inputs: small enough to train in milliseconds."""
    torch.manual_seed(0)
    return build_model("lenet", (1, 8, 8), 4)


def lenet_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(50, 1, 8, 8, generator=g), torch.randint(0, 4, (50,), generator=g)


def train_lenet(seed: int, caller_seed: int = 0) -> nn.Module:
    """Train small_lenet with ``seed`` after putting torch's global RNG in state ``caller_seed``."""
    model = small_lenet()
    x, y = lenet_data()
    torch.manual_seed(caller_seed)
    train(model, x, y, epochs=2, batch_size=16, lr=0.05, seed=seed)
    return model


def test_same_seed_gives_bit_identical_weights() -> None:
    # Different global RNG states before the calls: dropout must still draw the same masks.
    a, b = train_lenet(seed=5, caller_seed=100), train_lenet(seed=5, caller_seed=200)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_different_seed_gives_different_weights() -> None:
    a, b = train_lenet(seed=5), train_lenet(seed=6)
    assert not torch.equal(flatten_params(a), flatten_params(b))


def test_training_leaves_the_callers_random_stream_alone() -> None:
    model = small_lenet()
    x, y = lenet_data()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, x, y, epochs=1, batch_size=16, lr=0.05, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_loss_falls_and_accuracy_rises_on_separable_blobs() -> None:
    x, y = blobs(600, seed=0)
    x_test, y_test = blobs(300, seed=1)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3)
    before = evaluate(model, x_test, y_test)
    stats = train(model, x, y, epochs=5, batch_size=32, lr=0.05, seed=0)
    after = evaluate(model, x_test, y_test)
    assert before.accuracy < 0.6 and before.loss > 0.9
    assert after.accuracy >= 0.97
    assert after.loss < 0.15 and stats.loss < 0.15
    assert stats == TrainStats(loss=stats.loss, num_examples=600, num_steps=5 * math.ceil(600 / 32))


def test_after_step_is_called_once_per_step_with_a_running_count() -> None:
    model = nn.Linear(3, 2)
    calls: list[int] = []
    stats = train(
        model,
        torch.randn(10, 3),
        torch.randint(0, 2, (10,)),
        epochs=3,
        batch_size=4,
        lr=0.1,
        seed=0,
        after_step=calls.append,
    )
    assert calls == list(range(1, 3 * math.ceil(10 / 4) + 1))
    assert stats.num_steps == 9 and stats.num_examples == 10


def test_each_epoch_uses_every_example_once_including_the_partial_batch() -> None:
    model = nn.Linear(1, 2)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)
    train(model, x, torch.zeros(10, dtype=torch.long), epochs=2, batch_size=4, lr=0.1, seed=0)
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]
    for epoch in (seen[:3], seen[3:]):
        assert torch.equal(torch.cat(epoch).flatten().sort().values, x.flatten())
    assert not torch.equal(torch.cat(seen[:3]), torch.cat(seen[3:])), "each epoch draws a new order"


def test_train_accepts_numpy_arrays_and_matches_tensors() -> None:
    x, y = lenet_data()
    a, b = small_lenet(), small_lenet()
    train(a, x, y, epochs=1, batch_size=16, lr=0.05, seed=2)
    train(b, x.numpy(), y.numpy(), epochs=1, batch_size=16, lr=0.05, seed=2)
    assert torch.equal(flatten_params(a), flatten_params(b))


def test_train_leaves_train_mode_and_evaluate_sets_eval_mode() -> None:
    model = small_lenet()
    x, y = lenet_data()
    model.eval()
    train(model, x, y, epochs=1, batch_size=64, lr=0.01, seed=0)
    assert model.training
    evaluate(model, x, y)
    assert not model.training


@pytest.mark.parametrize(
    "override, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_raise_config_error(override: dict, field: str) -> None:
    settings = {"epochs": 1, "batch_size": 4, "lr": 0.1, "seed": 0} | override
    with pytest.raises(ConfigError, match=field):
        train(nn.Linear(3, 2), torch.randn(5, 3), torch.zeros(5, dtype=torch.long), **settings)


def test_empty_data_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        train(
            nn.Linear(3, 2),
            torch.zeros(0, 3),
            torch.zeros(0, dtype=torch.long),
            epochs=1,
            batch_size=4,
            lr=0.1,
            seed=0,
        )


def hand_set_linear() -> nn.Linear:
    """Logits equal the two input features: the prediction is the larger feature's index."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model


def test_evaluate_matches_a_hand_computation() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 4.0]])
    y = torch.tensor([0, 1, 1, 1])  # predictions 0, 1, 1, 0: three of four right
    # cross-entropy of logits (a, b) with label l: log(1 + exp(other - own))
    expected_loss = (
        math.log1p(math.exp(-2))
        + math.log1p(math.exp(-1))
        + math.log1p(math.exp(-2))
        + math.log1p(math.exp(1))
    ) / 4
    stats = evaluate(hand_set_linear(), x, y, batch_size=3)
    assert stats.accuracy == 0.75 and stats.num_examples == 4
    assert stats.loss == pytest.approx(expected_loss, rel=1e-6)
    assert evaluate(hand_set_linear(), x.numpy(), y.numpy()) == EvalStats(stats.loss, 0.75, 4)


def test_predict_logits_batches_and_returns_cpu_logits() -> None:
    x = torch.randn(7, 2)
    logits = predict_logits(hand_set_linear(), x, batch_size=3)
    assert logits.device.type == "cpu"
    assert torch.equal(logits, x)


def test_flatten_and_assign_round_trip() -> None:
    source, target = small_lenet(), build_model("lenet", (1, 8, 8), 4)
    flat = flatten_params(source)
    assert flat.shape == (parameter_count(source),) and parameter_count(source) == 52_228
    assign_flat_params(target, flat)
    assert all(
        torch.equal(p, q) for p, q in zip(source.parameters(), target.parameters(), strict=True)
    )
    assert torch.equal(flatten_params(target), flat)


def test_flat_vectors_are_copies() -> None:
    model = small_lenet()
    original = flatten_params(model)
    flat = flatten_params(model)
    flat.add_(1.0)  # changing the copy leaves the model alone
    assert torch.equal(flatten_params(model), original)
    assign_flat_params(model, flat)
    flat.zero_()  # the model holds its own copy of the values
    assert torch.equal(flatten_params(model), original + 1.0)


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(1, 6)])
def test_assign_rejects_a_vector_of_the_wrong_length(bad: torch.Tensor) -> None:
    model = nn.Linear(2, 2)  # 6 parameters
    with pytest.raises(ValueError, match="6 values"):
        assign_flat_params(model, bad)


def test_max_steps_stops_mid_epoch_on_the_seeded_minibatches():
    """max_steps = k: the first k minibatches of train's own sequence (the same weights
    as a full run stopped there, checked against one step taken by hand), the loss over
    the examples of the last epoch it used; 0 and a cap beyond the epochs change nothing."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    model = nn.Linear(6, 3)
    hyper = {"epochs": 2, "batch_size": 4, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}

    one = copy.deepcopy(model)
    stats = train(one, x, y, seed=3, max_steps=1, **hyper)
    assert (stats.num_steps, stats.num_examples) == (1, 10)
    # by hand: the first 4 of the epoch's permutation, one SGD step at lr 0.5
    first = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4]
    by_hand = copy.deepcopy(model)
    loss = F.cross_entropy(by_hand(x[first]), y[first])
    loss.backward()
    with torch.no_grad():
        expected = [p - 0.5 * p.grad for p in by_hand.parameters()]
    for got, want in zip(one.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert stats.loss == pytest.approx(loss.item(), rel=1e-6)

    # 5 steps: epoch 1's 3 (4 + 4 + 2 examples), then 2 of epoch 2 (8 examples)
    cut_model = copy.deepcopy(model)
    cut = train(cut_model, x, y, seed=3, max_steps=5, **hyper)
    assert cut.num_steps == 5
    full, capped = copy.deepcopy(model), copy.deepcopy(model)
    at_step_5 = []

    def snapshot(step):
        if step == 5:
            at_step_5.extend(p.detach().clone() for p in full.parameters())

    whole = train(full, x, y, seed=3, after_step=snapshot, **hyper)
    assert all(torch.equal(a, b) for a, b in zip(cut_model.parameters(), at_step_5, strict=True))
    beyond = train(capped, x, y, seed=3, max_steps=100, **hyper)
    assert whole.num_steps == beyond.num_steps == 6 and whole.loss == beyond.loss
    assert all(
        torch.equal(a, b) for a, b in zip(full.parameters(), capped.parameters(), strict=True)
    )
