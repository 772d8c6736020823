"""The server's step on the aggregate (train.server_optimizer, train.server_lr,
train.server_momentum)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsec.config import load_config
from fedsec.server.optimizer import ServerAdam, ServerOptimizer, server_optimizer
from fedsec_core.errors import ConfigError


def record(weight: list[float], running: float) -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.array(weight, dtype=np.float32)),
            "bn.running_var": Array(np.array([running], dtype=np.float32)),
        }
    )


def test_momentum_by_hand_over_three_rounds():
    """v1 = d1; v2 = 0.9 v1 + d2; v3 = 0.9 v2 + d3 and w += 0.5 v each round, with
    d the aggregate minus the round's start; the buffer takes the aggregate as it is."""
    step = ServerOptimizer(lr=0.5, momentum=0.9, keys=("w",))
    w = record([1.0, -2.0], 1.0)
    deltas = [np.array([0.5, 1.0]), np.array([-1.0, 0.25]), np.array([0.125, 0.0])]
    expected_w, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for i, delta in enumerate(deltas):
        start = w["w"].numpy().astype(np.float64)
        aggregate = record(list(start + delta), 2.0 + i)
        w = step.step(w, aggregate)
        velocity = 0.9 * velocity + delta
        expected_w = expected_w + 0.5 * velocity
        assert w["w"].dtype == "float32"
        np.testing.assert_allclose(w["w"].numpy(), expected_w, rtol=1e-6)
        assert w["bn.running_var"].numpy().tolist() == [2.0 + i]
    # the last velocity: 0.81 d1 + 0.9 d2 + d3
    np.testing.assert_allclose(
        step.state_dict()["velocity"]["w"].numpy(),
        0.81 * deltas[0] + 0.9 * deltas[1] + deltas[2],
        rtol=1e-6,
    )


def test_the_default_step_is_the_aggregate_itself_and_resumes():
    identity = ServerOptimizer(keys=("w",))
    aggregate = record([3.0, 4.0], 1.0)
    assert identity.is_identity and identity.step(record([0.0, 0.0], 1.0), aggregate) is aggregate
    assert identity.state_dict() == {"velocity": {}}
    first = ServerOptimizer(lr=1.0, momentum=0.5, keys=("w",))
    first.step(record([0.0, 0.0], 1.0), record([1.0, 1.0], 1.0))
    second = ServerOptimizer(lr=1.0, momentum=0.5, keys=("w",))
    second.load_state_dict(first.state_dict())
    start, aggregate = record([1.0, 1.0], 1.0), record([1.0, 1.0], 1.0)
    assert first.step(start, aggregate)["w"].numpy().tolist() == [1.5, 1.5]
    assert second.step(start, aggregate)["w"].numpy().tolist() == [1.5, 1.5]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.server_momentum=1.0", "train.server_momentum must be"),
        ("train.server_lr=0", "train.server_lr must be"),
        ("train.server_optimizer=adagrad", "unknown train.server_optimizer 'adagrad'; valid: sgd"),
    ],
)
def test_server_step_parameters_out_of_range_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_adam_with_server_momentum_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.server_optimizer=adam", "train.server_momentum=0.9"])
    message = str(info.value)
    assert message.startswith("train.server_momentum = 0.9 applies to server_optimizer = 'sgd'")
    assert "\n" not in message


def test_adam_by_hand_over_three_rounds_as_the_ndss_authors_adam():
    """The NDSS'21 code's Adam (femnist/adam.py) written out, with g = w - a: m and s
    the moments, w -= lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(s) + eps)."""
    step = server_optimizer("adam", lr=0.01, momentum=0.0)
    assert isinstance(step, ServerAdam) and not step.is_identity
    step.keys = ("w",)
    w = record([1.0, -2.0], 1.0)
    deltas = [np.array([0.5, -1.0]), np.array([-0.25, 0.125]), np.array([0.0625, 0.0])]
    expected, m, s = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, delta in enumerate(deltas, start=1):
        start = w["w"].numpy().astype(np.float64)
        aggregate = record(list(start + delta), 5.0 + t)
        w = step.step(w, aggregate)
        g = -delta  # the round's start minus the aggregate
        m = 0.9 * m + 0.1 * g
        s = 0.999 * s + 0.001 * g * g
        expected = expected - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(s) + 1e-8)
        assert w["w"].dtype == "float32"
        np.testing.assert_allclose(w["w"].numpy(), expected, rtol=1e-6)
        assert w["bn.running_var"].numpy().tolist() == [5.0 + t]
    # the first step moves every coordinate by lr against the sign of g
    first = ServerAdam(lr=0.01, keys=("w",)).step(record([0.0, 0.0], 1.0), record([3.0, -5.0], 1.0))
    np.testing.assert_allclose(first["w"].numpy(), [0.01, -0.01], rtol=1e-6)


def test_adam_agrees_with_torch_adam_where_the_moments_dwarf_eps():
    """torch.optim.Adam adds eps after the bias correction, the authors' code before;
    with gradients of order 1 the two trajectories agree (to float32 and eps)."""
    import torch

    rng = np.random.default_rng(0)
    ours = ServerAdam(lr=0.001, keys=("w",))
    w = record(list(rng.normal(size=50)), 1.0)
    param = torch.nn.Parameter(torch.tensor(w["w"].numpy(), dtype=torch.float64))
    reference = torch.optim.Adam([param], lr=0.001)
    for _ in range(20):
        gradient = rng.normal(size=50)
        aggregate = record(list(w["w"].numpy().astype(np.float64) - gradient), 1.0)
        w = ours.step(w, aggregate)
        param.grad = torch.from_numpy(gradient)
        reference.step()
    np.testing.assert_allclose(w["w"].numpy(), param.detach().numpy(), rtol=0, atol=1e-5)


def test_adam_resumes_from_its_state_as_if_uninterrupted():
    first, second = ServerAdam(lr=0.1, keys=("w",)), ServerAdam(lr=0.1, keys=("w",))
    start = record([0.0, 0.0], 1.0)
    for optimizer in (first, second):
        start_next = optimizer.step(start, record([1.0, -1.0], 1.0))
    resumed = ServerAdam(lr=0.1, keys=("w",))
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict()["adam_step"] == 1
    aggregate = record([2.0, 0.5], 1.0)
    assert (
        resumed.step(start_next, aggregate)["w"].numpy().tolist()
        == second.step(start_next, aggregate)["w"].numpy().tolist()
    )
