"""Robust aggregation defenses for Flower, and their registry.

Each defense is a Flower strategy (a ``FedAvg`` subclass) usable in any ServerApp::

    import defenses
    strategy = defenses.MultiMetrics(keep_fraction=0.3, variant="paper")
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

Config files name them (``DEFENSES``) and :func:`build_defense` builds one from a name
and a parameter table, raising ``ConfigError`` for anything invalid. The math of each
defense lives in :mod:`defenses.rules`, free of Flower.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from fedsec_core.errors import ConfigError
from fedsec_core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import DefenseStrategy
    from .rules import AggregationRule

#: Config name, module in ``strategies/``, strategy class. The strategies need Flower and
#: are imported on first use, so that ``import defenses.rules`` (the math) loads neither
#: Flower nor scikit-learn, and listing the names imports no strategy.
_STRATEGIES = (
    ("fedavg", "fedavg", "FedAvg"),
    ("krum", "krum", "Krum"),
    ("multi-krum", "multi_krum", "MultiKrum"),
    ("median", "median", "Median"),
    ("trimmed-mean", "trimmed_mean", "TrimmedMean"),
    ("bulyan", "bulyan", "Bulyan"),
    ("norm-clipping", "norm_clipping", "NormClipping"),
    ("centered-clipping", "centered_clipping", "CenteredClipping"),
    ("weak-dp", "weak_dp", "WeakDP"),
    ("rfa", "rfa", "RFA"),
    ("foolsgold", "foolsgold", "FoolsGold"),
    ("flame", "flame", "FLAME"),
    ("fltrust", "fltrust", "FLTrust"),
    ("rlr", "rlr", "RLR"),
    ("multi-metrics", "multi_metrics", "MultiMetrics"),
    ("dnc", "dnc", "DnC"),
    ("signguard", "signguard", "SignGuard"),
    ("fldetector", "fldetector", "FLDetector"),
    ("deepsight", "deepsight", "DeepSight"),
    ("crfl", "crfl", "CRFL"),
)
#: ``defense.name`` -> strategy class (imported on first lookup).
DEFENSES: Registry[type[DefenseStrategy]] = Registry(
    "defense.name",
    {name: f"{__name__}.strategies.{module}:{cls}" for name, module, cls in _STRATEGIES},
)
_STRATEGY_MODULES = {cls: module for _, module, cls in _STRATEGIES}
_ADAPTER_NAMES = ("DefenseStrategy", "RoundReport")


def __getattr__(name: str) -> Any:
    """The strategy classes and the adapter, imported when first asked for."""
    if name in _STRATEGY_MODULES:
        module = importlib.import_module(f".strategies.{_STRATEGY_MODULES[name]}", __name__)
        return getattr(module, name)
    if name in _ADAPTER_NAMES:
        return getattr(importlib.import_module(".adapter", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SEED_PARAMETER = "seed"


def defense_names() -> list[str]:
    """The config names of all defenses, sorted."""
    return DEFENSES.names()


def defense_parameters(name: str) -> dict[str, Any]:
    """The parameters a config may set for defense ``name``, with their defaults."""
    return _parameters(_rule_class(name))


def _parameters(rule_class: type) -> dict[str, Any]:
    return {
        spec.name: spec.default
        for spec in fields(rule_class)
        if spec.init and spec.name != SEED_PARAMETER
    }


#: Keys that every ``[defense]`` table held before they became one rule's parameter,
#: with the value fedsec wrote for them: a config.toml of that time (every run directory
#: holds one, and a Flower App's run config) still reads as the same experiment.
#: ``root_size`` was the core's size of FLTrust's root set; it is FLTrust's parameter now.
FORMER_KEYS: dict[str, Any] = {"root_size": 100}


def current_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Defense ``name``'s ``params`` as a config file gives them, read by this version: a
    key of :data:`FORMER_KEYS` at its former value is the default of the rule that
    takes it, and no key at all for the others, so it is left out; at another value it
    is kept for the rules that take it, and is a ConfigError (saying what to write
    instead) for the others. An unknown defense's parameters are left as they are (its
    name is judged with the config)."""
    rules = _rules()
    if name not in rules or not any(key in params for key in FORMER_KEYS):
        return params
    takes = _parameters(rules[name])
    out = {}
    for key, value in params.items():
        if (
            key in FORMER_KEYS
            and value == FORMER_KEYS[key]
            and type(value) is type(FORMER_KEYS[key])
        ):
            continue
        if key in FORMER_KEYS and key not in takes:
            users = [n for n in rules.names() if key in _parameters(rules[n])]
            raise ConfigError(
                f"defense.{key} = {value!r} is a parameter of {', '.join(users)} only, "
                f"and defense {name!r} has no use for it: remove the key, or set it with "
                f"defense.name = {users[0]!r}"
            )
        out[key] = value
    return out


def build_defense(
    name: str,
    params: dict[str, Any],
    *,
    seed: int = 0,
    root_update_fn: Callable | None = None,
    model_probe: Any = None,
    **strategy_kwargs: Any,
) -> DefenseStrategy:
    """Build defense ``name`` with ``params`` as a Flower strategy, every setting given here.

    The rule is :func:`build_rule`'s (the same checks, the same parameters); the
    strategy is defense ``name``'s Flower class. ``seed`` seeds defenses that draw
    random numbers (weak-dp, flame, crfl). ``root_update_fn(server_round,
    global_arrays) -> ArrayRecord`` is the server's training on a clean root set; it
    goes to the strategies whose rule uses one (``needs_root_update``: FLTrust) and no
    other; ``model_probe`` (:class:`defenses.rules.ModelProbe`: runs flat models, finds
    their output layer) likewise to the rules with ``needs_model_probe`` (DeepSight).
    Further keyword arguments go to the strategy (``device``, Flower ``FedAvg``
    parameters). Raises ``ConfigError`` for an unknown name or parameter, a wrong type
    or a value out of range.
    """
    cls = _strategy_class(name)
    rule = build_rule(name, params, seed=seed, model_probe=model_probe)
    if rule.needs_root_update:
        strategy_kwargs["root_update_fn"] = root_update_fn
    return cls.from_rule(rule, **strategy_kwargs)


def build_rule(
    name: str, params: dict[str, Any], *, seed: int = 0, model_probe: Any = None
) -> AggregationRule:
    """The aggregation rule of defense ``name`` with ``params``, checked: the one builder
    of a rule (config validation, the server, the attacks that run the server's rule,
    :func:`build_defense`), and it imports no Flower.

    ``model_probe`` (a :class:`defenses.rules.ModelProbe`) goes to a rule that declares
    ``needs_model_probe`` (its class says so before it is built:
    ``defenses.rules.RULES[name].needs_model_probe``). Raises ``ConfigError`` for an
    unknown name or parameter, a wrong type or a value out of range."""
    rule_class = _rule_class(name)
    rule = rule_class(**_rule_kwargs(name, params, seed, rule_class))
    rule.validate()
    if rule.needs_model_probe and model_probe is not None:
        rule.probe = model_probe
    return rule


def _rule_kwargs(name: str, params: Any, seed: int, rule_class: type) -> dict[str, Any]:
    """``params`` checked (a table of the rule's parameters, no ``seed``) plus the seed
    for a rule that takes one."""
    if not isinstance(params, dict):
        raise ConfigError(f"defense {name!r}: parameters must be a table, got {params!r}")
    valid = _parameters(rule_class)
    if SEED_PARAMETER in params:
        raise ConfigError(
            f"defense {name!r}: 'seed' is not a defense parameter; the experiment's seed "
            "seeds the defense"
        )
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"defense {name!r}: unknown parameter {unknown[0]!r}; valid: "
            f"{', '.join(valid) or '(none)'}"
        )
    kwargs = dict(params)
    if SEED_PARAMETER in {spec.name for spec in fields(rule_class)}:
        kwargs[SEED_PARAMETER] = seed
    return kwargs


def _strategy_class(name: str) -> type[DefenseStrategy]:
    return DEFENSES.resolve(name)


def _rules():
    from .rules import RULES

    return RULES


def _rule_class(name: str) -> type[AggregationRule]:
    """The rule class of defense ``name``; the one-line error naming the valid defenses
    for a name without a strategy or a rule."""
    rules = _rules()
    if not isinstance(name, str) or name not in DEFENSES or name not in rules:
        DEFENSES.resolve(name)  # the one-line error naming the valid defenses
        rules.resolve(name)
    return rules[name]


__all__ = [
    "CRFL",
    "DEFENSES",
    "FLAME",
    "FLDetector",
    "RFA",
    "RLR",
    "Bulyan",
    "CenteredClipping",
    "DeepSight",
    "DnC",
    "DefenseStrategy",
    "FLTrust",
    "FedAvg",
    "FoolsGold",
    "Krum",
    "Median",
    "MultiKrum",
    "MultiMetrics",
    "NormClipping",
    "RoundReport",
    "SignGuard",
    "TrimmedMean",
    "WeakDP",
    "FORMER_KEYS",
    "build_defense",
    "build_rule",
    "current_params",
    "defense_names",
    "defense_parameters",
]
