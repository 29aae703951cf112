"""Read access to kopf's indexes for the reconcilers.

kopf fills the indexes (every `@kopf.index` handler of every kind, on kopf's own watch streams)
and hands them to handlers as keyword arguments named by the index id; `main` keeps them at
start-up (`OperatorContext.bind_indexes`). A reconcile reads them through `IndexView`: one value
or every value that the watched objects gave for a key.

Tests give plain dicts of lists in place of kopf's indexes (the same Mapping[key, values]
shape), so a reconcile's snapshot can be built without a watch stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import kopf

IndexMap = Mapping[Any, Iterable[Any]]
"""kopf's `Index` (key → `Store` of values), or a dict of lists in tests."""


class IndexView:
    """One index, looked up by name when read (bound after the view is made)."""

    __slots__ = ("_indexes", "name")

    def __init__(self, indexes: Mapping[str, IndexMap], name: str) -> None:
        self._indexes = indexes
        self.name = name

    def _map(self) -> IndexMap:
        return self._indexes.get(self.name) or {}

    def one(self, key: Hashable) -> Any:
        """The single (first) value held for `key`, or None."""
        store = self._map().get(key)
        if store is None:
            return None
        for value in store:
            return value
        return None

    def all(self, key: Hashable) -> list[Any]:
        """Every value held for `key`."""
        store = self._map().get(key)
        return list(store) if store is not None else []

    def __contains__(self, key: object) -> bool:
        return key in self._map()

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._map()))

    def __len__(self) -> int:
        return len(self._map())


def bind(target: MutableMapping[str, IndexMap], kwargs: Mapping[str, Any]) -> None:
    """Keep every index among a kopf handler's keyword arguments (kopf passes each index,
    named by its handler's id, to every handler, start-up handlers included)."""
    for name, value in kwargs.items():
        if isinstance(value, kopf.Index):
            target[name] = value
