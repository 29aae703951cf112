"""In-memory indexes of watched objects, filled by the `@kopf.index` handlers of each kind.

The same model as kopf's indexes (a handler returns `{index_key: value}` for an object; an index
maps each key to the values of every object that gave it), in plain dicts: a reconcile's snapshot
is a few dict lookups. A value equal to the one already held is not replaced, so an event that
changes nothing a reconcile reads keeps every value's identity (reconcilers compare identities
to skip a view they already found settled).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any

ObjKey = tuple[str | None, str | None, str | None]
"""(namespace, name, uid) of a watched object."""

_MISSING: Any = object()


class Index(Mapping[Any, list[Any]]):
    """index key → the values of the objects that gave that key (read-only to handlers)."""

    __slots__ = ("_items", "_reverse")

    def __init__(self) -> None:
        self._items: dict[Hashable, dict[ObjKey, Any]] = {}
        self._reverse: dict[ObjKey, tuple[Hashable, ...]] = {}

    def __getitem__(self, key: Hashable) -> list[Any]:
        return list(self._items[key].values())

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def one(self, key: Hashable) -> Any:
        """The single (first) value held for `key`, or None."""
        store = self._items.get(key)
        if not store:
            return None
        for value in store.values():
            return value
        return None

    def all(self, key: Hashable) -> list[Any]:
        """Every value held for `key`."""
        store = self._items.get(key)
        return list(store.values()) if store else []

    # --- the watch layer's side ----------------------------------------------------------------

    def replace(self, obj: ObjKey, result: Mapping[Hashable, Any]) -> None:
        """What the handler returned for `obj` now (keys it no longer gives are dropped)."""
        old = self._reverse.get(obj)
        if old is not None:
            for key in old:
                if key not in result:
                    self._drop(key, obj)
        for key, value in result.items():
            store = self._items.get(key)
            if store is None:
                self._items[key] = {obj: value}
            else:
                current = store.get(obj, _MISSING)
                if current is _MISSING or current != value:
                    store[obj] = value
        self._reverse[obj] = tuple(result)

    def discard(self, obj: ObjKey) -> None:
        """`obj` is gone or no longer matches the handler."""
        for key in self._reverse.pop(obj, ()):
            self._drop(key, obj)

    def _drop(self, key: Hashable, obj: ObjKey) -> None:
        store = self._items.get(key)
        if store is not None:
            store.pop(obj, None)
            if not store:
                del self._items[key]


class Indexes(dict[str, Index]):
    """Every index, by the id of its handler."""

    def ensure(self, name: str) -> Index:
        index = self.get(name)
        if index is None:
            index = self[name] = Index()
        return index
