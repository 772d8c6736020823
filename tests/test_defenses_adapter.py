"""The Flower adapter with real Message / ArrayRecord / MetricRecord objects."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

import defenses
from fedsec_core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("server_identity")  # tests/conftest.py


class StubGrid:
    """Just enough of a Grid for ``FedAvg.configure_train`` to sample nodes."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def model_arrays(seed: int, shift: float = 0.0) -> ArrayRecord:
    """A small model with a float32 weight, a float64 bias and an int64 counter."""
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "fc.weight": Array(rng.normal(size=(3, 4)).astype(np.float32) + np.float32(shift)),
            "fc.bias": Array(rng.normal(size=(3,)) + shift),
            "bn.num_batches_tracked": Array(np.array(seed, dtype=np.int64)),
        }
    )


def reply(node_id: int, arrays: ArrayRecord | None, metrics: dict | None) -> Message:
    """A train reply from ``node_id`` as a ClientApp would send it."""
    instruction = Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    records = {}
    if arrays is not None:
        records["arrays"] = arrays
    if metrics is not None:
        records["metrics"] = MetricRecord(metrics)
    return Message(content=RecordDict(records), reply_to=instruction)


def error_reply(node_id: int) -> Message:
    instruction = Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return Message(Error(code=1, reason="client crashed"), reply_to=instruction)


def started(strategy, global_arrays: ArrayRecord, nodes: list[int]):
    """Run ``configure_train`` so the strategy remembers the global model."""
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), StubGrid(nodes)))
    assert len(messages) == len(nodes)
    return strategy


def good_replies(count: int = 4) -> list[Message]:
    return [
        reply(
            100 + i,
            model_arrays(i, shift=0.1),
            {"num-examples": 10 * (i + 1), "loss": float(i), "partition-id": i},
        )
        for i in range(count)
    ]


def test_fedavg_through_the_adapter_equals_flowers_fedavg():
    global_arrays = model_arrays(99)
    ours = started(defenses.FedAvg(), global_arrays, [100, 101, 102, 103])
    arrays, metrics = ours.aggregate_train(1, good_replies())
    flower_arrays, flower_metrics = FlowerFedAvg().aggregate_train(1, good_replies())
    for key in ("fc.weight", "fc.bias"):
        assert arrays[key].dtype == flower_arrays[key].dtype
        np.testing.assert_allclose(arrays[key].numpy(), flower_arrays[key].numpy(), rtol=1e-6)
    assert dict(metrics)["loss"] == pytest.approx(dict(flower_metrics)["loss"])
    # Integer buffers come from the global model, not from the clients.
    assert arrays["bn.num_batches_tracked"].numpy() == 99
    assert list(arrays.keys()) == list(global_arrays.keys())


def test_a_nan_reply_and_a_wrong_shape_reply_are_refused_and_the_rest_aggregated(caplog):
    nan_arrays = model_arrays(7)
    weight = nan_arrays["fc.weight"].numpy().copy()
    weight[0, 0] = np.nan
    nan_arrays["fc.weight"] = Array(weight)
    wrong_shape = model_arrays(8)
    wrong_shape["fc.bias"] = Array(np.zeros(5))
    replies = [
        *good_replies(3),
        reply(200, nan_arrays, {"num-examples": 5, "partition-id": 7}),
        reply(201, wrong_shape, {"num-examples": 5, "partition-id": 8}),
    ]
    strategy = started(defenses.FedAvg(), model_arrays(99), [100, 101, 102, 200, 201])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = strategy.aggregate_round(1, replies)
    expected, _ = FlowerFedAvg().aggregate_train(1, good_replies(3))
    np.testing.assert_allclose(
        report.arrays["fc.weight"].numpy(), expected["fc.weight"].numpy(), rtol=1e-6
    )
    assert report.accepted == [0, 1, 2] and report.rejected == []
    assert set(report.invalid) == {7, 8}
    assert "NaN" in report.invalid[7] and "fc.bias" in report.invalid[8]
    assert "refused reply of client 7" in caplog.text


def test_every_kind_of_bad_reply_is_refused_without_failing_the_round():
    no_weight = reply(301, model_arrays(1), {"loss": 1.0})
    zero_weight = reply(302, model_arrays(2), {"num-examples": 0})
    missing_key = model_arrays(3)
    del missing_key["fc.bias"]
    wrong_dtype = model_arrays(4)
    wrong_dtype["fc.weight"] = Array(np.zeros((3, 4), dtype=np.float64))
    corrupt = model_arrays(5)
    corrupt["fc.weight"] = Array("float32", (3, 4), "numpy.ndarray", b"garbage")
    replies = [
        error_reply(300),
        no_weight,
        zero_weight,
        reply(303, None, {"num-examples": 3}),
        reply(304, missing_key, {"num-examples": 3}),
        reply(305, wrong_dtype, {"num-examples": 3}),
        reply(306, corrupt, {"num-examples": 3}),
        *good_replies(2),
    ]
    strategy = started(defenses.FedAvg(), model_arrays(99), [*range(300, 307), 100, 101])
    report = strategy.aggregate_round(1, replies)
    assert report.arrays is not None
    assert report.accepted == [0, 1]
    assert sorted(report.invalid) == list(range(300, 307))
    assert "client crashed" in report.invalid[300]
    assert "num-examples" in report.invalid[301] and "num-examples" in report.invalid[302]
    assert "ArrayRecord" in report.invalid[303]
    assert "fc.bias" in report.invalid[304]
    assert "float64" in report.invalid[305]
    assert "decoded" in report.invalid[306]


def test_all_bad_replies_keep_the_previous_model(caplog):
    strategy = started(defenses.MultiMetrics(), model_arrays(99), [300, 301])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = strategy.aggregate_round(1, [error_reply(300), reply(301, None, None)])
    assert report.arrays is None and report.metrics is None and report.kept_previous
    assert report.note == "no valid reply"
    assert "kept the previous global model" in caplog.text


def test_two_replies_claiming_one_client_key_are_both_refused():
    replies = good_replies(3)
    replies.append(reply(999, model_arrays(9), {"num-examples": 1, "partition-id": 2}))
    strategy = started(defenses.FedAvg(), model_arrays(99), [100, 101, 102, 999])
    report = strategy.aggregate_round(1, replies)
    assert report.accepted == [0, 1]
    assert "several replies" in report.invalid[2]


def test_the_round_report_lists_verdicts_and_scores_of_a_defense():
    global_arrays = model_arrays(99)
    replies = [
        reply(
            100 + i,
            model_arrays(50, shift=0.01 * i),
            {"num-examples": 10, "partition-id": i, "train_loss": 0.5 + i},
        )
        for i in range(6)
    ]
    outlier = model_arrays(51, shift=30.0)
    replies.append(reply(106, outlier, {"num-examples": 10, "partition-id": 6, "train_loss": 9.0}))
    strategy = started(defenses.Krum(num_malicious=1), global_arrays, list(range(100, 107)))
    report = strategy.aggregate_round(4, replies)
    metrics = report.metrics
    assert report.round == 4
    assert len(report.accepted) == 1 and 6 in report.rejected
    assert sorted(report.accepted + report.rejected) == list(range(7))
    assert set(report.scores) == set(range(7))
    assert max(report.scores, key=report.scores.get) == 6
    assert report.invalid == {} and not report.kept_previous
    # Only real metrics are aggregated (the accepted client's), never the client key.
    assert dict(metrics) == {"train_loss": 0.5 + report.accepted[0]}


def test_flowers_hook_returns_the_model_and_the_verdicts_in_the_train_metrics():
    # Flower's own loop (Strategy.start) sees only aggregate_train's return value.
    global_arrays = model_arrays(99)
    replies = [
        reply(
            100 + i,
            model_arrays(50, shift=0.01 * i),
            {"num-examples": 10, "partition-id": i, "train_loss": 1.0},
        )
        for i in range(6)
    ]
    replies.append(
        reply(
            106,
            model_arrays(51, shift=30.0),
            {"num-examples": 10, "partition-id": 6, "train_loss": 1.0},
        )
    )
    replies.append(error_reply(107))
    strategy = started(defenses.Krum(num_malicious=1), global_arrays, list(range(100, 108)))
    report = strategy.aggregate_round(2, replies)
    strategy = started(defenses.Krum(num_malicious=1), global_arrays, list(range(100, 108)))
    arrays, metrics = strategy.aggregate_train(2, replies)
    np.testing.assert_array_equal(arrays["fc.weight"].numpy(), report.arrays["fc.weight"].numpy())
    assert metrics["train_loss"] == 1.0
    assert list(metrics["defense-accepted"]) == report.accepted and len(report.accepted) == 1
    assert list(metrics["defense-rejected"]) == report.rejected and 6 in report.rejected
    assert list(metrics["defense-refused"]) == [107]
    assert list(metrics["defense-scored"]) == list(range(7))
    assert list(metrics["defense-scores"]) == pytest.approx([report.scores[k] for k in range(7)])
    # Krum keeps one of 7 equal clients: 7 times FedAvg's weight, the others 0
    assert list(metrics["defense-weighted"]) == list(range(7))
    assert list(metrics["defense-weight-ratios"]) == pytest.approx(
        [7.0 if k in report.accepted else 0.0 for k in range(7)]
    )
    # a round that keeps the previous model: no model, the verdicts still returned
    strategy = started(defenses.Bulyan(num_malicious=1), model_arrays(99), [100, 101])
    arrays, metrics = strategy.aggregate_train(1, good_replies(2))
    assert arrays is None and list(metrics["defense-accepted"]) == []


def test_without_partition_id_the_node_id_is_the_client_key():
    replies = [reply(100 + i, model_arrays(i), {"num-examples": 1}) for i in range(3)]
    strategy = started(defenses.Median(), model_arrays(99), [100, 101, 102])
    assert strategy.aggregate_round(1, replies).accepted == [100, 101, 102]


def test_a_defense_that_keeps_the_model_returns_none_and_says_why():
    strategy = started(defenses.Bulyan(num_malicious=1), model_arrays(99), [100, 101])
    report = strategy.aggregate_round(1, good_replies(2))
    assert report.arrays is None and report.kept_previous
    assert "at least 7" in report.note


def test_fltrust_uses_the_root_update_from_its_callable():
    global_arrays = model_arrays(99)
    towards = model_arrays(99)
    towards["fc.weight"] = Array(global_arrays["fc.weight"].numpy() + np.float32(1.0))
    away = model_arrays(99)
    away["fc.weight"] = Array(global_arrays["fc.weight"].numpy() - np.float32(1.0))
    calls = []

    def root_update_fn(server_round, arrays):
        calls.append(server_round)
        return towards

    strategy = started(defenses.FLTrust(root_update_fn=root_update_fn), global_arrays, [1, 2])
    report = strategy.aggregate_round(
        1,
        [
            reply(1, towards, {"num-examples": 1}),
            reply(2, away, {"num-examples": 1}),
        ],
    )
    assert calls == [1]
    assert report.accepted == [1] and report.rejected == [2]
    np.testing.assert_allclose(report.arrays["fc.weight"].numpy(), towards["fc.weight"].numpy())


def test_fltrust_without_root_update_fn_refuses_to_start_a_round():
    with pytest.raises(RuntimeError, match="root_update_fn"):
        started(defenses.FLTrust(), model_arrays(99), [1, 2])


def test_stateful_strategy_checkpoints_its_rule():
    strategy = started(defenses.FoolsGold(), model_arrays(99), [100, 101, 102])
    strategy.aggregate_train(1, good_replies(3))
    state = strategy.state_dict()
    assert sorted(state["history"]) == [0, 1, 2]
    fresh = defenses.FoolsGold()
    fresh.load_state_dict(state)
    assert sorted(fresh.state_dict()["history"]) == [0, 1, 2]


def test_aggregate_before_configure_is_a_programming_error():
    with pytest.raises(RuntimeError, match="configure_train"):
        defenses.FedAvg().aggregate_train(1, good_replies(2))


def test_device_is_checked_when_the_strategy_is_built():
    with pytest.raises(ConfigError, match="device"):
        defenses.FedAvg(device="tpu-of-dreams")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            defenses.FedAvg(device="cuda")


def test_the_round_report_gives_each_clients_weight_against_fedavgs():
    """Known answers: FedAvg weighs every client as FedAvg (ratio 1, whatever their
    example counts); Multi-Krum keeping m of n equal clients makes each kept one n/m
    as heavy and the others 0; Krum makes its one pick n times as heavy."""
    global_arrays = model_arrays(99)
    nodes = list(range(100, 107))
    fedavg = started(defenses.FedAvg(), global_arrays, nodes[:4])
    assert fedavg.aggregate_round(1, good_replies()).weight_ratios == {
        0: 1.0,
        1: 1.0,
        2: 1.0,
        3: 1.0,
    }
    replies = [
        reply(100 + i, model_arrays(50, shift=0.01 * i), {"num-examples": 10, "partition-id": i})
        for i in range(6)
    ]
    replies.append(
        reply(106, model_arrays(51, shift=30.0), {"num-examples": 10, "partition-id": 6})
    )
    multi_krum = started(defenses.MultiKrum(num_malicious=2), global_arrays, nodes)
    report = multi_krum.aggregate_round(1, replies)
    assert len(report.accepted) == 5 and 6 in report.rejected
    assert report.weight_ratios[6] == 0.0
    for client in report.accepted:
        assert report.weight_ratios[client] == pytest.approx(7 / 5, rel=1e-12)
    krum = started(defenses.Krum(num_malicious=1), global_arrays, nodes)
    report = krum.aggregate_round(1, replies)
    assert report.weight_ratios[report.accepted[0]] == pytest.approx(7.0, rel=1e-12)
    assert sum(report.weight_ratios.values()) == pytest.approx(7.0, rel=1e-12)


def test_a_coordinate_wise_rule_logs_no_weights():
    global_arrays = model_arrays(99)
    strategy = started(defenses.Median(), global_arrays, [100, 101, 102, 103])
    assert strategy.aggregate_round(1, good_replies()).weight_ratios == {}
