"""One registry pattern: name -> entry, the one list of valid names for each kind of
plug-in (models, data sets, attacks, defenses, engines, unlearning methods)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import defenses
from attacks import ATTACKS
from fedsec.config import load_config
from fedsec.engines import ENGINES
from fedsec.models import MODELS
from fedsec.unlearning import METHODS
from fedsec_core.data import DATASETS
from fedsec_core.errors import ConfigError
from fedsec_core.registry import Registry


def test_a_registry_resolves_names_and_names_the_valid_ones_otherwise():
    reg = Registry("thing.name", {"b": 2, "a": 1})
    assert reg.resolve("a") == 1 and reg["b"] == 2 and list(reg) == ["b", "a"]
    assert reg.names() == ["a", "b"]
    assert Registry("thing.name", {"b": 2, "a": 1}, sort_names=False).names() == ["b", "a"]
    with pytest.raises(ConfigError, match=r"^unknown thing.name 'c'; valid: a, b$"):
        reg.resolve("c")
    with pytest.raises(ConfigError, match="unknown thing.name 3"):
        reg.resolve(3)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", 5)


def test_a_lazy_entry_is_imported_on_first_lookup_only():
    code = (
        "import sys\n"
        "from fedsec_core.registry import Registry\n"
        "reg = Registry('x', {'hsv': 'colorsys:rgb_to_hsv'})\n"
        "assert reg.names() == ['hsv'] and 'hsv' in reg\n"
        "loaded = 'colorsys' in sys.modules\n"
        "import colorsys\n"
        "assert reg['hsv'] is colorsys.rgb_to_hsv\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "registry, key, name",
    [
        (MODELS, "model.name", "cnn"),
        (DATASETS, "data.name", "digits"),
        (ATTACKS, "attack.name", "dba"),
        (defenses.DEFENSES, "defense.name", "multi-krum"),
        (ENGINES, "engine.name", "inprocess"),
        (METHODS, "--method", "dmm"),
    ],
)
def test_every_kind_of_plug_in_has_one_registry(registry, key, name):
    assert isinstance(registry, Registry) and registry.key == key
    assert name in registry.names()
    with pytest.raises(ConfigError, match=f"unknown {key} 'nope'; valid: "):
        registry.resolve("nope")


def test_config_validation_accepts_exactly_the_registered_names():
    for name in MODELS.names():
        assert load_config(None, [f"model.name={name}"]).model.name == name
    for name in ENGINES.names():
        assert load_config(None, [f"engine.name={name}"]).engine.name == name
    with pytest.raises(ConfigError, match="unknown engine.name 'spark'; valid: inprocess, flower"):
        load_config(None, ["engine.name=spark"])


def test_each_defense_is_registered_under_its_rules_name():
    from defenses.rules import RULES

    assert list(RULES.names()) == list(defenses.DEFENSES.names())
    for name in defenses.DEFENSES:
        assert defenses.DEFENSES[name].rule_class.name == name
        assert RULES[name] is defenses.DEFENSES[name].rule_class
