"""Constraint objects: what a valid value is, and the one-line error when it is not.

As scikit-learn's ``_parameter_constraints`` (``sklearn.utils._param_validation``:
``Interval(Integral, 1, None, closed="left")``, ``StrOptions({...})``), a constraint is an
object rather than a bare predicate. It says whether a value is valid
(``constraint(value)``), puts a valid value into words (``describe()``: ``"> 0"``,
``"in [0, 1)"``, ``"one of 'a', 'b'"``) and writes the one-line error for an invalid one
(``message(key, value)``; ``check(key, value)`` raises it as a ``ConfigError``), so a
declaration cannot say one thing and check another::

    Interval(float, 0, 1, closed="left").check("train.momentum", 1.0)
    # ConfigError: train.momentum must be in [0, 1), got 1.0

Values are declared with these through ``fedsec_core.params.param``: the experiment's keys
(fedsec/config.py), the unlearning settings (fedsec/unlearning/), the attacks' and the
defense rules' parameters. Where fedsec differs from scikit-learn, and why:

- a float interval holds finite numbers only (scikit-learn's unbounded ``Real`` interval
  holds inf): every float of an experiment is finite, and the error for inf or nan says
  so (``must be a finite number, got inf``) whatever the bounds;
- an int is a valid float (a TOML ``1`` where ``1.0`` is meant) and a bool is neither an
  int nor a float (``True`` is not a count);
- constraints combine with ``&`` (both: ``"> 0 and <= 10"``), ``|`` (either) and
  :meth:`Constraint.or_none` (None too: the default), and carry an optional note, written
  in parentheses after the words (``">= 1 (pixels)"``);
- :class:`Options` may read its options when a value is checked (a registry's names),
  so declaring it imports nothing.

A core module: the standard library and ``fedsec_core.errors`` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, get_args

from fedsec_core.errors import ConfigError

#: The closed ends an :class:`Interval` may have (scikit-learn's words).
CLOSED = ("left", "right", "both", "neither")

#: A value of each kind in words, as the errors say it.
KIND_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class Constraint:
    """What a valid value is. Subclasses define ``__call__`` and ``words``."""

    note: str = ""

    def __call__(self, value: Any) -> bool:
        raise NotImplementedError

    def words(self) -> str:
        """A valid value in words, without the note."""
        raise NotImplementedError

    def describe(self) -> str:
        """A valid value in words, with the note in parentheses."""
        return f"{self.words()} ({self.note})" if self.note else self.words()

    def message(self, key: str, value: Any) -> str:
        """The one-line error for ``key = value`` (an invalid value)."""
        if _non_finite(value):
            return f"{key} must be a finite number, got {value!r}"
        return f"{key} must be {self.describe()}, got {value!r}"

    def check(self, key: str, value: Any) -> Any:
        """``value`` if valid, else raise ``ConfigError(self.message(key, value))``."""
        if not self(value):
            raise ConfigError(self.message(key, value))
        return value

    def explained(self, note: str) -> Constraint:
        """This constraint with ``note`` after its words."""
        return dataclasses.replace(self, note=note)

    def or_none(self) -> Constraint:
        """This constraint, or None (which stands for a default: its words stay these)."""
        return OrNone(self)

    def __and__(self, other: Constraint) -> Constraint:
        return AllOf((self, other))

    def __or__(self, other: Constraint) -> Constraint:
        return AnyOf((self, other))


@dataclass(frozen=True)
class Interval(Constraint):
    """Numbers of ``kind`` (int or float) between ``low`` and ``high`` (None: unbounded),
    with the ends ``closed`` says (``"left"``, ``"right"``, ``"both"``, ``"neither"``).

    Two ends are written ``in [0, 1)``, one end ``>= 1`` / ``> 0`` / ``<= 10``, none
    ``a finite number`` (for float; ``an integer`` for int).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "neither"
    note: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, got {self.kind!r}")
        if self.closed not in CLOSED:
            raise ValueError(f"Interval closed must be one of {CLOSED}, got {self.closed!r}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Interval low {self.low} is above high {self.high}")

    def __call__(self, value: Any) -> bool:
        if not has_type(value, self.kind) or _non_finite(value):
            return False
        low_closed = self.closed in ("left", "both")
        high_closed = self.closed in ("right", "both")
        if self.low is not None and not (value >= self.low if low_closed else value > self.low):
            return False
        return self.high is None or (value <= self.high if high_closed else value < self.high)

    def words(self) -> str:
        low_closed = self.closed in ("left", "both")
        high_closed = self.closed in ("right", "both")
        if self.low is not None and self.high is not None:
            return (
                f"in {'[' if low_closed else '('}{_number(self.low)}, "
                f"{_number(self.high)}{']' if high_closed else ')'}"
            )
        if self.low is not None:
            return f"{'>=' if low_closed else '>'} {_number(self.low)}"
        if self.high is not None:
            return f"{'<=' if high_closed else '<'} {_number(self.high)}"
        return "a finite number" if self.kind is float else KIND_WORDS[int]

    def message(self, key: str, value: Any) -> str:
        if not has_type(value, self.kind):
            bounded = self.low is not None or self.high is not None
            wanted = f"{KIND_WORDS[self.kind]} {self.describe()}" if bounded else self.describe()
            return f"{key} must be {wanted}, got {typename(value)} {value!r}"
        return super().message(key, value)


@dataclass(frozen=True)
class Options(Constraint):
    """One of ``options``: a tuple, or a function that returns them when a value is
    checked (a registry's names, read late so that declaring imports nothing).

    Its error names the key's valid values: ``unknown data.name 'x'; valid: a, b``.
    """

    options: tuple | Callable[[], Iterable[Any]]
    note: str = field(default="", kw_only=True)

    def values(self) -> tuple:
        return tuple(self.options() if callable(self.options) else self.options)

    def __call__(self, value: Any) -> bool:
        return any(type(value) is type(o) and value == o for o in self.values())

    def words(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.values())

    def message(self, key: str, value: Any) -> str:
        return f"unknown {key} {value!r}; valid: " + ", ".join(str(o) for o in self.values())


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """A value of ``kind`` (str, int, float or bool; an int is a float, a bool only a bool).

    Its error names the value's own kind: ``train.rounds must be an integer, got a string
    'ten'``.
    """

    kind: type
    note: str = field(default="", kw_only=True)

    def __call__(self, value: Any) -> bool:
        return has_type(value, self.kind)

    def words(self) -> str:
        return KIND_WORDS[self.kind]

    def message(self, key: str, value: Any) -> str:
        return f"{key} must be {self.describe()}, got {typename(value)} {value!r}"


@dataclass(frozen=True)
class AllOf(Constraint):
    """Every one of ``parts`` (``a & b``): ``"> 0 and <= 10"``."""

    parts: tuple[Constraint, ...]
    note: str = field(default="", kw_only=True)

    def __call__(self, value: Any) -> bool:
        return all(part(value) for part in self.parts)

    def words(self) -> str:
        return " and ".join(part.describe() for part in self.parts)


@dataclass(frozen=True)
class AnyOf(Constraint):
    """At least one of ``parts`` (``a | b``): ``"> 0 or -1"``."""

    parts: tuple[Constraint, ...]
    note: str = field(default="", kw_only=True)

    def __call__(self, value: Any) -> bool:
        return any(part(value) for part in self.parts)

    def words(self) -> str:
        return " or ".join(part.describe() for part in self.parts)


@dataclass(frozen=True)
class OrNone(Constraint):
    """``inner``, or None: a value left to its default, which needs no words."""

    inner: Constraint
    note: str = field(default="", kw_only=True)

    def __call__(self, value: Any) -> bool:
        return value is None or self.inner(value)

    def words(self) -> str:
        return self.inner.describe()

    def message(self, key: str, value: Any) -> str:
        return self.inner.message(key, value) if not self.note else super().message(key, value)


#: Any finite number (the rule for every float of an experiment that declares no other).
FINITE = Interval(float)


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


def typename(value: Any) -> str:
    """The kind of ``value`` in words, as the errors say it (``a table``, ``an integer``)."""
    return {
        dict: "a table",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _number(value: float) -> str:
    """A bound as the errors write it: ``10`` for 10.0, ``0.5``, ``1e-06``."""
    return str(int(value)) if float(value).is_integer() else repr(value)
