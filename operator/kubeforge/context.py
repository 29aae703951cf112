"""What every kind's handlers share: settings, the API clients, kopf's registry, kopf's indexes
and the controllers (started together in `main`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf

from kubeforge import indexes as _indexes
from kubeforge.apply import Kube, async_kube
from kubeforge.controller import Controller
from kubeforge.indexes import IndexMap, IndexView
from kubeforge.progress import ProgressAccess
from kubeforge.settings import Settings


@dataclass
class OperatorContext:
    settings: Settings
    kube: Kube
    """The blocking client (start-up checks; its configuration and credentials are shared)."""
    api: Any = None
    """The client every reconcile uses, on the event loop (`AsyncKube`); made from `kube` when
    not given (tests give an in-memory one)."""
    registry: kopf.OperatorRegistry = field(default_factory=kopf.OperatorRegistry)
    indexes: dict[str, IndexMap] = field(default_factory=dict)
    """kopf's indexes by handler id (bound at start-up; tests put dicts of lists here)."""
    progress: ProgressAccess | None = None
    controllers: list[Controller[Any]] = field(default_factory=list)
    watched: set[tuple[str, str, str]] = field(default_factory=set)
    """(group, version, plural) of every resource a kind's handlers watch (readiness checks
    that each can be listed)."""
    kueue: bool = False
    """Whether Kueue's Workload API is served (then its reason shows in a queued job's status)."""

    def __post_init__(self) -> None:
        if self.api is None and isinstance(self.kube, Kube):
            self.api = async_kube(self.kube, max_idle=self.settings.concurrency)
        if self.progress is None:
            self.progress = ProgressAccess(self.api, self.settings)

    def bind_indexes(self, kwargs: dict[str, Any]) -> None:
        """Keep kopf's indexes from a handler's keyword arguments."""
        _indexes.bind(self.indexes, kwargs)

    def index(self, name: str) -> IndexView:
        """The index `name` (read it on the event loop only)."""
        return IndexView(self.indexes, name)

    def one(self, name: str, key: Any) -> Any:
        """The single value an index holds for `key`, or None."""
        return IndexView(self.indexes, name).one(key)

    def all(self, name: str, key: Any) -> list[Any]:
        """Every value an index holds for `key`."""
        return IndexView(self.indexes, name).all(key)
