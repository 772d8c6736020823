"""The server's step on the aggregate (train.server_lr, train.server_momentum)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsec.config import load_config
from fedsec.server.optimizer import ServerOptimizer
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
    ],
)
def test_server_step_parameters_out_of_range_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
