"""What every kind's handlers share: settings, the API clients, kopf's registry, kopf's indexes
and the controllers (started together in `main`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf

from kubeforge import indexes as _indexes
from kubeforge.apply import Kube, async_kube
from kubeforge.controller import Controller
from kubeforge.indexes import IndexMap, IndexView
from kubeforge.progress import ProgressReports
from kubeforge.settings import Settings

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _unregistered(fn: Handler) -> Handler:
    return fn


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
    progress: ProgressReports | None = None
    """Reports of the progress endpoint, waiting for their TrainingJob's reconcile."""
    controllers: list[Controller[Any]] = field(default_factory=list)
    watched: set[tuple[str, str, str]] = field(default_factory=set)
    """(group, version, plural) of every resource a kind's handlers watch (readiness checks
    that each can be listed)."""
    unlistable: frozenset[tuple[str, str, str]] = frozenset()
    """Resources the operator may not list now (403/404 at start): their handlers are left out
    of this run, so kopf's streams of every other resource work (`main` runs kopf again once
    they can be listed)."""
    restart: Any = None
    """Ends this kopf run so that `main` starts another with the listable resources now (set by
    `main`; None in tests)."""
    kueue: bool = False
    """Whether Kueue's Workload API is served (then its reason shows in a queued job's status)."""

    def __post_init__(self) -> None:
        if self.api is None and isinstance(self.kube, Kube):
            self.api = async_kube(self.kube, max_idle=self.settings.concurrency)
        if self.progress is None:
            self.progress = ProgressReports()

    def index_handler(
        self, group: str, version: str, plural: str, **kwargs: Any
    ) -> Callable[[Handler], Handler]:
        """`@kopf.index(...)` on this context's registry — a no-op when the resource cannot be
        listed in this run (the handler is not registered, kopf opens no stream for it)."""
        self.watched.add((group, version, plural))
        if (group, version, plural) in self.unlistable:
            return _unregistered
        decorator = kopf.index(group, version, plural, registry=self.registry, **kwargs)
        return cast(Callable[[Handler], Handler], decorator)

    def event_handler(
        self, group: str, version: str, plural: str, **kwargs: Any
    ) -> Callable[[Handler], Handler]:
        """`@kopf.on.event(...)` on this context's registry (left out like `index_handler`)."""
        self.watched.add((group, version, plural))
        if (group, version, plural) in self.unlistable:
            return _unregistered
        decorator = kopf.on.event(group, version, plural, registry=self.registry, **kwargs)
        return cast(Callable[[Handler], Handler], decorator)

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
