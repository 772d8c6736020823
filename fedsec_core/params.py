"""One parameter pattern for attacks and defense rules.

As scikit-learn's ``_parameter_constraints``, but as dataclass fields: a parameter is a
field made with :func:`param`, which declares its default, a check and the words for a
valid value; its annotation is its type (an int is a valid float). The constructor only
stores values; :func:`check_parameters` is the one place that judges them, and the
same declaration gives both the check and the one-line error message.

    @dataclass(kw_only=True)
    class MyRule(AggregationRule):
        keep_fraction: float = param(0.3, in_unit_interval, "in (0, 1]")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, field, fields
from types import NoneType, UnionType
from typing import Any, get_args, get_type_hints

from fedsec_core.errors import ConfigError


def param(default: Any, check: Callable[[Any], bool], expect: str) -> Any:
    """A parameter: its default, its check and the words for a valid value."""
    return field(default=default, metadata={"check": check, "expect": expect})


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def in_unit_interval(value: float) -> bool:
    """0 < value <= 1."""
    return 0 < value <= 1


def at_least(bound: int) -> Callable[[int], bool]:
    return lambda value: value >= bound


def one_of(*options: Any) -> Callable[[Any], bool]:
    return lambda value: value in options


def parameter_fields(cls_or_obj: Any) -> list[Field]:
    """The fields made with :func:`param`, in declaration order."""
    return [f for f in fields(cls_or_obj) if f.init and "check" in f.metadata]


def parameter_defaults(cls: type) -> dict[str, Any]:
    """``{name: default}`` of ``cls``'s parameters."""
    return {f.name: f.default for f in parameter_fields(cls)}


def check_parameters(obj: Any, label: Callable[[str], str]) -> None:
    """Raise a one-line ConfigError for the first parameter of ``obj`` of the wrong type
    or failing its check: ``{label(name)} must be {expect}, got {value!r}``."""
    hints = get_type_hints(type(obj))
    for spec in parameter_fields(obj):
        value = getattr(obj, spec.name)
        if not has_type(value, hints[spec.name]) or not spec.metadata["check"](value):
            expect = spec.metadata["expect"]
            raise ConfigError(f"{label(spec.name)} must be {expect}, got {value!r}")


def has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (bool is not an int; int is a float)."""
    if isinstance(hint, UnionType):
        return any(has_type(value, option) for option in get_args(hint))
    if hint is NoneType:
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)
