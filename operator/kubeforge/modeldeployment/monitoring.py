"""Whether the Prometheus Operator's CRDs are served (the ServiceMonitor and PrometheusRule
children are applied only then)."""

from __future__ import annotations

import asyncio
import time

from kubeforge.apply import ApiError, AsyncKube
from kubeforge.modeldeployment._alerting import MONITORING_GROUP

DISCOVERY_TTL_OK = 300.0
DISCOVERY_TTL_MISSING = 30.0


class MonitoringDiscovery:
    """Whether the Prometheus Operator's CRDs are served (discovery API, cached).

    Shared by the reconciles of every ModelDeployment, which interleave at awaits: one discovery
    request at a time (the others wait for its answer, as behind the old thread lock), and an
    `invalidate` while a request is in flight is not undone by that request's answer.
    """

    def __init__(
        self,
        kube: AsyncKube,
        group_version: str = MONITORING_GROUP,
        resources: frozenset[str] = frozenset({"servicemonitors", "prometheusrules"}),
    ) -> None:
        self.kube = kube
        self.group_version = group_version
        self.resources = resources
        """Discovery of another API the same way (a rollout's Gateway API HTTPRoutes)."""
        self._checking: asyncio.Future[bool] | None = None
        self._value: bool | None = None
        self._checked = 0.0
        self._generation = 0
        """Bumped by `invalidate` (an answer asked for before it is not kept)."""

    async def available(self) -> bool:
        value = self._value
        if value is not None:
            ttl = DISCOVERY_TTL_OK if value else DISCOVERY_TTL_MISSING
            if time.monotonic() - self._checked < ttl:
                return value
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())
        # shielded: a cancelled reconcile does not cancel the answer the others wait for
        return await asyncio.shield(self._checking)

    async def _check(self) -> bool:
        generation = self._generation
        try:
            doc = await self.kube.request("GET", "/apis/" + self.group_version)
            names = {r.get("name") for r in doc.get("resources") or []}
            value = self.resources <= names
        except (ApiError, OSError):
            value = False
        if generation == self._generation:
            self._value = value
            self._checked = time.monotonic()
        return value

    def invalidate(self) -> None:
        self._generation += 1
        self._value = None
        self._checking = None
