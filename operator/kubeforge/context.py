"""What every kind's handlers share: settings, the API clients, kopf's registry, the indexes and
the controllers (started together in `main`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf

from kubeforge.apply import Kube, async_kube
from kubeforge.controller import Controller
from kubeforge.indexes import Index, Indexes
from kubeforge.progress import ProgressReports
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
    indexes: Indexes = field(default_factory=Indexes)
    """The indexes the watch layer fills (`kubeforge.indexes`), by handler id."""
    progress: ProgressReports | None = None
    """Reports of the progress endpoint, waiting for their TrainingJob's reconcile."""
    controllers: list[Controller[Any]] = field(default_factory=list)
    kueue: bool = False
    """Whether Kueue's Workload API is served (then its reason shows in a queued job's status)."""

    def __post_init__(self) -> None:
        if self.api is None and isinstance(self.kube, Kube):
            self.api = async_kube(self.kube, max_idle=self.settings.concurrency)
        if self.progress is None:
            self.progress = ProgressReports()

    def index(self, name: str) -> Index:
        """The index `name` (read it on the event loop only)."""
        return self.indexes.ensure(name)

    def one(self, name: str, key: Any) -> Any:
        """The single value an index holds for `key`, or None."""
        return self.indexes.ensure(name).one(key)

    def all(self, name: str, key: Any) -> list[Any]:
        """Every value an index holds for `key`."""
        return self.indexes.ensure(name).all(key)
