"""One registry pattern for every kind of plug-in: name -> entry.

Models, data sets, attacks, defenses, engines and unlearning methods are each a
:class:`Registry`: the one place that lists the valid names. Config validation, error
messages, ``--help`` choices and the docs read the names from it, so a new entry is
valid everywhere once it is registered.

An entry may be given as ``"package.module:attribute"``; it is imported on first use,
so listing names imports nothing (the defenses' strategies need Flower, the engines
Ray; ``fedsec run --check`` needs neither).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from fedsec_core.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry for one kind of plug-in, in registration order.

    Parameters
    ----------
    key : str
        What a name is called in messages, e.g. ``"model.name"``.
    entries : mapping or iterable of (name, entry)
        The entries; an entry that is a ``"module:attribute"`` string is imported when
        first looked up.
    sort_names : bool (default: True)
        Whether :meth:`names` lists the names sorted, or in registration order (e.g.
        engines, from the simplest to the most distributed).
    """

    def __init__(
        self,
        key: str,
        entries: Mapping[str, T | str] | Iterable[tuple[str, T | str]] = (),
        *,
        sort_names: bool = True,
    ):
        self.key = key
        self.sort_names = sort_names
        self._entries: dict[str, T | str] = {}
        for name, entry in dict(entries).items():
            self.register(name, entry)

    def register(self, name: str, entry: T | str) -> T | str:
        """Add ``entry`` under ``name``; a name can be registered once."""
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{self.key}: a registry name must be a non-empty string, got {name!r}"
            )
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The valid names (sorted, or in registration order: ``sort_names``)."""
        return sorted(self._entries) if self.sort_names else list(self._entries)

    def resolve(self, name: object) -> T:
        """The entry for ``name``; a one-line ConfigError naming the valid ones otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"unknown {self.key} {name!r}; valid: {', '.join(self.names())}")
        return self[name]

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:  # Mapping's would import a lazy entry
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, names={self.names()})"
