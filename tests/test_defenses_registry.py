"""The defense registry: names, parameters, one-line ConfigErrors."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

import defenses
from fedsec_core.errors import ConfigError

NAMES = [
    "bulyan",
    "centered-clipping",
    "crfl",
    "deepsight",
    "dnc",
    "fedavg",
    "flame",
    "fldetector",
    "fltrust",
    "foolsgold",
    "krum",
    "median",
    "multi-krum",
    "multi-metrics",
    "norm-clipping",
    "rfa",
    "rlr",
    "signguard",
    "trimmed-mean",
    "weak-dp",
]


def test_every_defense_is_registered_and_builds_with_its_defaults():
    assert defenses.defense_names() == NAMES
    for name in NAMES:
        strategy = defenses.build_defense(name, {})
        assert isinstance(strategy, FlowerFedAvg)
        assert strategy.rule.name == name


@pytest.mark.parametrize("name", defenses.defense_names())
def test_strategy_signature_matches_its_rule(name):
    """Each named strategy exposes exactly its rule's parameters with the same defaults."""
    cls = defenses.DEFENSES[name]
    own = [
        p
        for p in inspect.signature(cls).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("root_update_fn", "model_probe")
    ]
    rule_defaults = {spec.name: spec.default for spec in fields(cls.rule_class) if spec.init}
    assert {p.name: p.default for p in own} == rule_defaults


def test_parameters_and_seed_reach_the_rule():
    strategy = defenses.build_defense("weak-dp", {"noise_std": 0.0025, "norm_bound": 2}, seed=11)
    rule = strategy.rule
    assert (rule.noise_std, rule.norm_bound, rule.seed) == (0.0025, 2, 11)
    direct = defenses.MultiMetrics(keep_fraction=0.5, variant="reference", fraction_train=0.5)
    assert (direct.rule.keep_fraction, direct.rule.variant, direct.fraction_train) == (
        0.5,
        "reference",
        0.5,
    )
    assert defenses.defense_parameters("multi-metrics") == {
        "keep_fraction": 0.3,
        "variant": "paper",
    }


@pytest.mark.parametrize(
    "name, params, message",
    [
        (
            "krumm",
            {},
            "unknown defense.name 'krumm'; valid: bulyan, centered-clipping, crfl, deepsight, ",
        ),
        ("krum", {"f": 1}, "defense 'krum': unknown parameter 'f'; valid: num_malicious"),
        ("median", {"beta": 0.1}, "unknown parameter 'beta'; valid: (none)"),
        ("krum", {"num_malicious": "1"}, "'num_malicious' must be an int >= 0, got '1'"),
        ("krum", {"num_malicious": True}, "'num_malicious' must be an int >= 0, got True"),
        ("krum", {"num_malicious": -1}, "'num_malicious' must be an int >= 0, got -1"),
        ("multi-krum", {"num_selected": 0}, "'num_selected' must be an int >= 1 or None"),
        ("multi-metrics", {"keep_fraction": 0}, "'keep_fraction' must be a number in (0, 1]"),
        ("multi-metrics", {"keep_fraction": 1.5}, "'keep_fraction' must be a number in (0, 1]"),
        ("multi-metrics", {"variant": "fast"}, "'variant' must be 'paper' or 'reference'"),
        ("trimmed-mean", {"beta": 0.5}, "'beta' must be a number in [0, 0.5)"),
        ("norm-clipping", {"norm_bound": float("nan")}, "'norm_bound' must be a number > 0"),
        ("weak-dp", {"noise_std": -0.1}, "'noise_std' must be a number >= 0"),
        ("weak-dp", {"seed": 3}, "'seed' is not a defense parameter"),
        ("rfa", {"max_iter": 2.0}, "'max_iter' must be an int >= 1, got 2.0"),
        ("rlr", {"server_lr": 0}, "'server_lr' must be a number > 0"),
        ("flame", {"noise_lambda": "a lot"}, "'noise_lambda' must be a number >= 0"),
        ("foolsgold", [1], "parameters must be a table"),
    ],
)
def test_bad_configs_raise_one_line_config_errors(name, params, message):
    with pytest.raises(ConfigError) as error:
        defenses.build_defense(name, params)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="keep_fraction"):
        defenses.MultiMetrics(keep_fraction=-1)


def test_strategy_keyword_arguments_pass_through_build_defense():
    strategy = defenses.build_defense("fltrust", {}, root_update_fn=print, min_train_nodes=5)
    assert strategy.root_update_fn is print and strategy.min_train_nodes == 5
    # offered to every defense, it goes only to those that train on a root set
    assert not hasattr(defenses.build_defense("krum", {}, root_update_fn=print), "root_update_fn")


def test_the_rules_import_without_flower_or_scikit_learn():
    probe = (
        "import sys, defenses.rules; "
        "print(sorted(m for m in ('flwr', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"
    # The registry still finds every strategy when asked.
    assert all(defenses.DEFENSES[name].rule_class.name == name for name in defenses.defense_names())
