"""fedsec_core.schema's constraint objects and the declarations made with them: each value's
valid range, its words and its one-line error, judged once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from fedsec import config
from fedsec.config import ExperimentConfig, TrainConfig, load_config
from fedsec_core.errors import ConfigError
from fedsec_core.params import check_parameters, param, parameter_fields, positive
from fedsec_core.schema import FINITE, InstanceOf, Interval, Options


@pytest.mark.parametrize(
    "constraint, words, valid, invalid",
    [
        (Interval(float, 0, 1, closed="left"), "in [0, 1)", [0, 0.0, 0.5], [1.0, -0.1, 2]),
        (Interval(float, 0, 1, closed="right"), "in (0, 1]", [1, 1.0, 1e-9], [0, 0.0, 1.5]),
        (Interval(float, 0, 1, closed="both"), "in [0, 1]", [0, 1.0], [-1e-9, 1.0000001]),
        (Interval(float, 0, 1), "in (0, 1)", [0.5], [0.0, 1.0]),
        (Interval(int, 1, None, closed="left"), ">= 1", [1, 10**12], [0, -1, 1.0, True]),
        (Interval(float, 0, None), "> 0", [1e-300, 5], [0.0, -1.0, math.inf]),
        (Interval(float, None, 10, closed="right"), "<= 10", [10.0, -5], [10.0000001]),
        (Interval(int, None, 0), "< 0", [-1], [0]),
        (FINITE, "a finite number", [0, -1e300, 1e300], [math.inf, -math.inf, math.nan]),
        (Options(("a", "b")), "one of 'a', 'b'", ["a", "b"], ["c", "A", None]),
        (Options(lambda: (1, 2)), "one of 1, 2", [1, 2], [3, True, 1.0]),
        (InstanceOf(int), "an integer", [0, -3], [1.5, True, "1"]),
        (InstanceOf(float), "a number", [0, 1.5], [True, "1.5"]),
        (InstanceOf(bool), "true or false", [True, False], [0, 1, "true"]),
        (
            Interval(float, 0, None) & Interval(float, None, 10, closed="right"),
            "> 0 and <= 10",
            [10, 0.5],
            [0, 11.0],
        ),
        (Interval(float, 0, None) | Options((-1,)), "> 0 or one of -1", [0.5, -1], [-2, 0]),
        (Interval(int, 1, None, closed="left").or_none(), ">= 1", [None, 1], [0]),
        (Interval(int, 1, None, closed="left").explained("pixels"), ">= 1 (pixels)", [1], [0]),
    ],
)
def test_constraints_judge_and_word_known_values(constraint, words, valid, invalid):
    assert constraint.describe() == words
    assert all(constraint(v) for v in valid), [v for v in valid if not constraint(v)]
    assert not any(constraint(v) for v in invalid), [v for v in invalid if constraint(v)]
    for v in valid:
        assert constraint.check("key", v) is v


@pytest.mark.parametrize(
    "constraint, value, message",
    [
        (Interval(float, 0, 1, closed="left"), 1.0, "k must be in [0, 1), got 1.0"),
        (Interval(float, 0, 1, closed="left"), math.inf, "k must be a finite number, got inf"),
        (Interval(float, 0, None), math.nan, "k must be a finite number, got nan"),
        (Interval(int, 1, None, closed="left"), 0, "k must be >= 1, got 0"),
        (Interval(int, 1, None, closed="left"), 2.5, "k must be an integer >= 1, got a number 2.5"),
        (
            Interval(int, 1, None, closed="left"),
            True,
            "k must be an integer >= 1, got a boolean True",
        ),
        (Interval(float, 0, None), "x", "k must be a number > 0, got a string 'x'"),
        (FINITE, "x", "k must be a finite number, got a string 'x'"),
        (Options(("cpu", "cuda")), "tpu", "unknown k 'tpu'; valid: cpu, cuda"),
        (InstanceOf(int), "ten", "k must be an integer, got a string 'ten'"),
        (
            (
                Interval(int, 1, None, closed="left") & Interval(int, None, 1024, closed="right")
            ).explained("threads"),
            2000,
            "k must be >= 1 and <= 1024 (threads), got 2000",
        ),
    ],
)
def test_a_constraint_writes_its_own_one_line_error(constraint, value, message):
    assert constraint.message("k", value) == message
    with pytest.raises(ConfigError) as info:
        constraint.check("k", value)
    assert str(info.value) == message


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="closed"):
        Interval(float, 0, 1, closed="open")
    with pytest.raises(ValueError, match="above"):
        Interval(float, 2, 1)
    with pytest.raises(TypeError, match="int or float"):
        Interval(str, 0, 1)
    with pytest.raises(TypeError, match="words"):
        param(1.0, lambda v: v > 0)  # a bare predicate says nothing about a valid value


def test_param_takes_a_constraint_or_a_predicate_with_words():
    @dataclass(kw_only=True)
    class Thing:
        scale: float = param(1.0, Interval(float, 0, None))
        mode: str = param("a", Options(("a", "b")))
        legacy: float = param(1.0, positive, "> 0 (the old way)")

    check_parameters(Thing(), "thing.{}".format)
    cases = [
        ({"scale": 0}, "thing.scale must be > 0, got 0"),
        ({"mode": "c"}, "unknown thing.mode 'c'; valid: a, b"),
        ({"legacy": -1.0}, "thing.legacy must be > 0 (the old way), got -1.0"),
        ({"legacy": "x"}, "thing.legacy must be > 0 (the old way), got 'x'"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError) as info:
            check_parameters(Thing(**values), "thing.{}".format)
        assert str(info.value) == message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.momentum=1"], "train.momentum must be in [0, 1), got 1.0"),
        (["train.lr=0"], "train.lr must be > 0 and <= 10, got 0.0"),
        (["seed=-1"], "seed must be >= 0, got -1"),
        (["data.partition_seed=-2"], "data.partition_seed must be >= -1, got -2"),
        (["engine.device=tpu"], "unknown engine.device 'tpu'; valid: cpu, cuda, auto"),
        (["engine.batch_clients=maybe"], "unknown engine.batch_clients 'maybe'; valid: auto, "),
        (["log.wandb=on"], "unknown log.wandb 'on'; valid: off, offline, online"),
        (["data.partition=shards"], "unknown data.partition 'shards'; valid: iid, dirichlet, "),
        (["attack.name=gaussian", "attack.fraction=1.5"], "attack.fraction must be in [0, 1], "),
        (["attack.name=gaussian", "attack.every=0"], "attack.every must be >= 1, got 0"),
        (["attack.name=gaussian", "attack.schedule=often"], "unknown attack.schedule 'often'"),
        (["attack.name=gaussian", "attack.fraction=inf"], "attack.fraction must be a finite "),
        (["attack.fraction=nan"], "attack.fraction must be a finite number, got nan"),
        (["defense.name=signguard", "defense.upper=inf"], "defense.upper must be a finite "),
    ],
)
def test_config_keys_are_judged_by_their_declarations(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.name=digits", "model.name=mlp", *overrides])
    assert str(info.value).startswith(message), str(info.value)


def test_schedule_keys_mean_nothing_without_an_attack():
    """As before the schema: without an attack, its schedule keys are not judged (their
    floats must still be finite)."""
    cfg = load_config(None, ["data.name=digits", "attack.fraction=1.5", "attack.every=0"])
    assert cfg.attack.fraction == 1.5 and cfg.attack.every == 0


def test_training_checks_with_the_objects_train_declares():
    """One rule per value: [train]'s keys are declared with config.SGD's objects, which
    fedsec_core.training.train checks its arguments with (lr also capped for experiments)."""
    checks = {f.name: f.metadata["check"] for f in parameter_fields(TrainConfig)}
    assert checks["local_epochs"] is config.SGD["epochs"]
    assert checks["batch_size"] is config.SGD["batch_size"]
    assert checks["momentum"] is config.SGD["momentum"]
    assert checks["weight_decay"] is config.SGD["weight_decay"]
    assert checks["lr"].parts[0] is config.SGD["lr"]
    assert checks["lr"].describe() == f"> 0 and <= {config.MAX_LR:g}"
    assert parameter_fields(ExperimentConfig)[0].name == "seed"
