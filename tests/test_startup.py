"""What ``fedsec run --check`` loads: the light modules only (benchmarks/startup.py times it)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from defenses import build_defense, build_rule, defense_names
from fedsec_core.errors import ConfigError
from tests.runs import REPO

HEAVY = ("flwr", "sklearn", "scipy", "matplotlib", "ray", "pandas")

PROBE = """
import sys
from fedsec.cli import main
code = main(["run", "fedsec/default.toml", "--check"])
print("loaded:", sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
sys.exit(code)
"""


def test_check_of_the_default_config_imports_no_flower_sklearn_scipy_or_matplotlib():
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], cwd=REPO, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert "fedsec: fedsec/default.toml is valid; attack: no attack" in lines
    assert lines[-1] == "loaded: []"


def fields_of(rule) -> dict:
    return {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if f.init}


@pytest.mark.parametrize("name", defense_names())
def test_build_rule_gives_the_strategys_rule_without_flower(name):
    rule = build_rule(name, {}, seed=3)
    strategy_rule = build_defense(name, {}, seed=3).rule
    assert type(rule) is type(strategy_rule) and fields_of(rule) == fields_of(strategy_rule)


@pytest.mark.parametrize(
    "name, params",
    [
        ("krum", {"num_malicious": -1}),  # out of range
        ("krum", {"num_malicious": "two"}),  # wrong type
        ("krum", {"nope": 1}),  # unknown
        ("flame", {"seed": 1}),  # the seed is the experiment's
        ("krum", [1]),  # not a table
        ("no-such-defense", {}),
    ],
)
def test_build_rule_rejects_what_build_defense_rejects_with_the_same_words(name, params):
    with pytest.raises(ConfigError) as by_strategy:
        build_defense(name, params)
    with pytest.raises(ConfigError) as by_rule:
        build_rule(name, params)
    assert str(by_rule.value) == str(by_strategy.value)
