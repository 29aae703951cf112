"""Readiness: `/readyz` answers 200 only while every resource the operator watches can be
listed with its credentials, and kopf has started (its indexes are then filled by its own
streams); else 503 naming what is missing.

Why a check of our own: a watch whose list is refused (403: a ClusterRole lost a verb; 404: a
CRD went away) must show. kopf retries such a stream by itself; this check names it in
`/readyz`, posts a Warning Event on the operator's Pod (when POD_NAME and POD_NAMESPACE are
set, as the chart does), counts `kubeforge_watch_list_failures_total{resource}`, and looks again with
a backoff (5 s doubling to 60 s) until the list works. Resources that list fine are looked at
every `period` seconds, from the watch cache (resourceVersion=0, limit=1): a few cheap reads a
minute, no writes.

A resource that cannot be listed when the operator starts has its handlers left out of kopf's
run (`kubeforge.main`): kopf lists every indexed resource before it calls any handler, so one
refused list would stop every kind. Once it can be listed again — or when a resource of the
run stops being listable (twice in a row) — this check ends the run and `main` starts kopf
again with the handlers of what can be listed then (a relist; the reconciles are level-based).

Liveness is kopf's `/healthz` with the `@kopf.on.probe` handlers of `kubeforge.main`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubeforge import events
from kubeforge.apply import ApiError, AsyncKube
from kubeforge.metrics import WATCH_LIST_FAILURES

log = logging.getLogger("kubeforge.health")

Resource = tuple[str, str, str]
"""(group, version, plural); group "" is the core API."""


def list_path(resource: Resource, namespace: str | None) -> str:
    group, version, plural = resource
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    return f"{base}/{plural}"


def describe(resource: Resource) -> str:
    group, _, plural = resource
    return f"{plural}.{group}" if group else plural


@dataclass
class Readiness:
    api: AsyncKube
    resources: Sequence[Resource]
    namespaces: Sequence[str] = ()
    period: float = 30.0
    started: bool = False
    """Set once kopf's start-up handlers ran (kopf's streams and indexes are then running)."""
    left_out: frozenset[Resource] = frozenset()
    """Resources whose handlers this kopf run left out (they could not be listed at start)."""
    restart: Callable[[], None] | None = None
    """Ends this kopf run so that the next one registers what can be listed now."""
    failing: dict[str, str] = field(default_factory=dict)
    """Resource (as `describe` names it) → why it cannot be listed."""
    _backoff: dict[str, float] = field(default_factory=dict)
    _failures: dict[Resource, int] = field(default_factory=dict)
    _restarting: bool = False

    def _restart(self, why: str) -> None:
        if self.restart is not None and not self._restarting:
            self._restarting = True
            log.warning("restarting kopf's streams: %s", why)
            self.restart()

    def state(self) -> tuple[bool, dict[str, Any]]:
        ready = self.started and not self.failing
        return ready, {"ready": ready, "started": self.started, "notListable": dict(self.failing)}

    async def check(self, resource: Resource) -> float:
        """List `resource` once; seconds until it is looked at again."""
        name = describe(resource)
        try:
            for ns in self.namespaces or (None,):
                await self.api.request(
                    "GET", list_path(resource, ns), query={"limit": "1", "resourceVersion": "0"}
                )
        except ApiError as exc:
            if exc.status not in (401, 403, 404):
                raise
            first = name not in self.failing
            self.failing[name] = f"{exc.status} {exc.reason}: {exc.message}"
            n = self._failures[resource] = self._failures.get(resource, 0) + 1
            if resource not in self.left_out and n >= 2:
                # kopf would retry this stream, then stop every other one with it: leave it out
                self._restart(f"{name} can no longer be listed")
            WATCH_LIST_FAILURES.labels(name).inc()
            delay = min(60.0, self._backoff.get(name, 2.5) * 2)
            self._backoff[name] = delay
            if first:
                log.warning("cannot list %s: %s", name, exc)
                await self._event(name, str(exc))
            return delay
        if self.failing.pop(name, None) is not None:
            log.info("%s can be listed again", name)
        self._backoff.pop(name, None)
        self._failures.pop(resource, None)
        if resource in self.left_out:
            self._restart(f"{name} can be listed again")
        return self.period

    async def _event(self, name: str, message: str) -> None:
        pod, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not pod or not ns:
            return
        ref = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns}}
        await events.post(self.api, ref, events.WARNING, "WatchListFailed", f"{name}: {message}")

    async def run(self) -> None:
        """Check every resource, each on its own schedule, forever."""
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(self.resources, 0.0)
        while True:
            now = loop.time()
            for resource, when in list(due.items()):
                if when <= now:
                    try:
                        due[resource] = now + await self.check(resource)
                    except (ApiError, OSError, TimeoutError) as exc:
                        log.debug("readiness check of %s: %s", describe(resource), exc)
                        due[resource] = now + 5.0
            await asyncio.sleep(max(0.5, min(due.values()) - loop.time()))


async def serve(readiness: Readiness, address: str, port: int) -> web.AppRunner:
    """Serve `/readyz` on address:port (port 0: not served)."""

    async def readyz(_: web.Request) -> web.Response:
        ready, body = readiness.state()
        return web.json_response(body, status=200 if ready else 503)

    app = web.Application()
    app.add_routes([web.get("/readyz", readyz)])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
