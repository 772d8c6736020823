"""One parameter pattern: attacks, defense rules, the experiment's keys, unlearning.

As scikit-learn's ``_parameter_constraints``, but as dataclass fields: a parameter is a
field made with :func:`param`, which declares its default and its check; its annotation
is its type (an int is a valid float). The check is a constraint object of
``fedsec_core.schema`` (an interval, a set of options, ...), which puts a valid value into
words and writes its own one-line error, or a plain predicate with the words for a valid
value. The constructor only stores values; :func:`check_parameters` is the one place
that judges them.

    @dataclass(kw_only=True)
    class MyRule(AggregationRule):
        keep_fraction: float = param(0.3, Interval(float, 0, 1, closed="right"))
        mode: str = param("mean", one_of("mean", "median"), "one of 'mean', 'median'")
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import Field, field, fields
from typing import Any, get_type_hints

from fedsec_core.errors import ConfigError
from fedsec_core.schema import Constraint
from fedsec_core.schema import has_type as has_type  # re-exported: it lived here


def param(default: Any, check: Callable[[Any], bool], expect: str | None = None) -> Any:
    """A parameter: its default and its check, a ``fedsec_core.schema`` constraint (which
    writes its own words) or a predicate with ``expect``, the words for a valid value."""
    if expect is None and not isinstance(check, Constraint):
        raise TypeError("param: a predicate needs the words for a valid value (expect)")
    return field(default=default, metadata={"check": check, "expect": expect})


# The predicates the attacks and rules declare with words (``param(1.0, positive, "> 0")``);
# a new declaration can name a ``fedsec_core.schema`` constraint instead, which words itself.
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
    or failing its check: the constraint's own message for ``label(name)``, or
    ``{label(name)} must be {expect}, got {value!r}`` where the declaration gives words."""
    hints = _type_hints(type(obj))
    for spec in parameter_fields(obj):
        value = getattr(obj, spec.name)
        check, expect = spec.metadata["check"], spec.metadata["expect"]
        if has_type(value, hints[spec.name]) and check(value):
            continue
        if expect is None:
            raise ConfigError(check.message(label(spec.name), value))
        raise ConfigError(f"{label(spec.name)} must be {expect}, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``cls``'s annotations as types, evaluated once per class (the strings of
    ``from __future__ import annotations`` cost a millisecond a class to evaluate)."""
    return get_type_hints(cls)
