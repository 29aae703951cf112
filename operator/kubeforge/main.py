"""`kubeforge-operator [--namespace NS]... [--metrics-port 8000]`: the operator's entry point.

Kubeconfig from KUBECONFIG (or ~/.kube/config), else the in-cluster service account; all
namespaces when none is named. kopf is the engine: its watch streams feed every kind's
`@kopf.index` handlers (the indexes a reconcile reads) and `@kopf.on.event` handlers (which queue
the owning object's reconcile on its kind's `kubeforge.controller.Controller`); kopf also runs
login (re-login on 401), start-up/cleanup, signals and the health endpoint. Its bookkeeping is under
the `kubeforge.io` prefix and its own info Events are off.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import kopf

from kubeforge import health, metrics
from kubeforge.apply import ApiError, Kube, make_kube
from kubeforge.context import OperatorContext
from kubeforge.health import Readiness, Resource, describe, list_path
from kubeforge.leader import LeaderElection
from kubeforge.progress import service as progress_service
from kubeforge.settings import Settings

log = logging.getLogger("kubeforge")

KINDS = (
    "kubeforge.trainingjob.handlers",
    "kubeforge.tuningstudy.handlers",
    "kubeforge.modeldeployment.handlers",
)
"""Modules with a `register(ctx)` function, one per kind (missing ones are skipped)."""


class NoDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """No diff-base at all. kopf builds (deep-copies) each object's "essence" on every event to
    find changes for `on.create`/`on.update`/`on.field` handlers; kubeforge registers none (its
    kinds use only `@kopf.index` and `@kopf.on.event`, and reconcile level-based), so nothing
    ever reads it — and it was the largest part of kopf's CPU per event."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings: bookkeeping under our prefix, no info Events of kopf's own, our worker
    count, API retries that honour `Retry-After` (API Priority and Fairness answers 429), and a
    watch stream counted dead after a minute and a half without an event or bookmark."""
    ks = kopf.OperatorSettings()
    prefix = settings.prefix
    ks.persistence.finalizer = f"{prefix}/finalizer"
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    ks.persistence.diffbase_storage = NoDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    ks.posting.enabled = False
    ks.execution.max_workers = settings.concurrency
    ks.networking.request_timeout = 60
    ks.networking.error_backoffs = (0.5, 1, 2, 4, 8, 15, 30)
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.watching.connect_timeout = 10
    if hasattr(ks.watching, "inactivity_timeout"):  # kopf >= 1.45
        ks.watching.inactivity_timeout = 90
    return ks


def kueue_available(kube: Kube) -> bool:
    """Whether the API server serves Kueue's Workloads (kueue.x-k8s.io/v1beta2)."""
    try:
        kube.request("GET", "/apis/kueue.x-k8s.io/v1beta2")
    except (ApiError, OSError):
        return False
    return True


def register_kinds(ctx: OperatorContext, kinds: Sequence[str] = KINDS) -> None:
    """Import each kind's handlers module and call its `register(ctx)`."""
    for module_name in kinds:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(ctx)


def build_operator(ctx: OperatorContext, kinds: Sequence[str] = KINDS) -> None:
    """Register every kind, kopf's login, the start/stop of the controllers (behind the leader
    election when it is on) and the liveness probes on ctx.registry."""
    reg = ctx.registry
    register_kinds(ctx, kinds)
    tasks: list[asyncio.Task[None]] = []
    election: list[LeaderElection] = []
    runners: list[Any] = []

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    def lead() -> None:
        for ctl in ctx.controllers:
            keys = getattr(ctl, "all_keys", None)
            ctl.resume(keys() if keys is not None else ())

    def follow() -> None:
        for ctl in ctx.controllers:
            ctl.pause()

    @kopf.on.startup(registry=reg)
    async def start_controllers(**kwargs: Any) -> None:
        # kopf hands its (still empty) indexes to start-up handlers too: keep them for the
        # reconcilers' snapshots
        ctx.bind_indexes(kwargs)
        s = ctx.settings
        for ctl in ctx.controllers:
            ctl.start(paused=s.leader_election)
            keys = getattr(ctl, "all_keys", None)
            if keys is not None and s.resync_seconds > 0:
                tasks.append(asyncio.create_task(ctl.resync(keys, s.resync_seconds)))
        tasks.append(asyncio.create_task(progress_service.run(ctx), name="kubeforge-progress"))
        if s.readiness_port:
            readiness = Readiness(
                ctx.api,
                sorted(ctx.watched),
                s.namespaces,
                left_out=ctx.unlistable,
                restart=ctx.restart,
            )
            tasks.append(asyncio.create_task(readiness.run(), name="kubeforge-readiness"))
            runners.append(await health.serve(readiness, s.metrics_address, s.readiness_port))
            readiness.started = True
        if s.leader_election:
            le = LeaderElection(
                ctx.api,
                s.lease_namespace,
                s.lease_name,
                lease_seconds=s.lease_seconds,
                renew_seconds=s.renew_seconds,
                on_start=lead,
                on_stop=follow,
            )
            election.append(le)
            tasks.append(asyncio.create_task(le.run(), name="kubeforge-leader-election"))

    @kopf.on.cleanup(registry=reg)
    async def stop_controllers(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the Lease is given up here
        for runner in runners:
            await runner.cleanup()
        for ctl in ctx.controllers:
            await ctl.stop()

    @kopf.on.probe(id="background", registry=reg)
    def background_tasks_alive(**_: Any) -> dict[str, Any]:
        """Liveness: kopf's /healthz fails (500) when this raises: a background task of ours
        (resync, lease, a controller's workers) ended, which nothing would restart."""
        dead = [t.get_name() for t in tasks if t.done()]
        dead += [ctl.kind for ctl in ctx.controllers if not ctl.alive]
        if dead:
            raise RuntimeError(f"background tasks ended: {', '.join(dead)}")
        return {"tasks": len(tasks), "leading": election[0].leading if election else True}


def configure_logging(settings: Settings) -> None:
    fmt = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=fmt, log_refkey="object")
    logging.getLogger().setLevel(settings.log_level.upper())
    # kopf's per-object chatter costs CPU at scale; keep its warnings and errors
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every probe


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kubeforge-operator", description="kubeforge: train, tune and serve models."
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port")
    p.add_argument(
        "--liveness-port", type=int, default=None, help="liveness /healthz port (0: off)"
    )
    p.add_argument(
        "--readiness-port", type=int, default=None, help="readiness /readyz port (0: off)"
    )
    return p.parse_args(argv)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (less CPU per watch event, write and thread handoff
    than asyncio's own loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tune_gc() -> None:
    """What exists at start-up (imports, kopf's registry) is frozen out of cyclic garbage
    collections. The thresholds stay Python's: kopf's per-event objects (tasks, loggers, body
    views) form cycles; with the first-generation threshold at 20,000 (tuned for the old
    watch layer) the idle operator spent 27.5 ms of CPU a second at 1,000 TrainingJobs, with
    Python's default 4.2 (benchmarks/bench_operator.py, one run each)."""
    gc.collect()
    gc.freeze()


def unlistable_resources(
    kube: Kube, resources: Iterable[Resource], namespaces: Sequence[str]
) -> frozenset[Resource]:
    """The resources the operator may not list now (403: RBAC; 404: the API is gone)."""
    out: set[Resource] = set()
    for resource in resources:
        for ns in namespaces or (None,):
            try:
                kube.request(
                    "GET", list_path(resource, ns), query={"limit": "1", "resourceVersion": "0"}
                )
            except ApiError as exc:
                if exc.status in (403, 404):
                    out.add(resource)
                    break
            except ConnectionError:
                pass  # the API server is down: kopf's streams wait for it
    return frozenset(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env(
        namespaces=tuple(args.namespace) or None,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        readiness_port=args.readiness_port,
    )
    configure_logging(settings)
    kube = make_kube(settings.field_manager, settings.concurrency)
    kueue = settings.kueue_workloads and kueue_available(kube)
    metrics.serve(settings.metrics_port, settings.metrics_address)
    log.info(
        "starting",
        extra={
            "namespaces": list(settings.namespaces) or "all",
            "kueue": kueue,
            "concurrency": settings.concurrency,
        },
    )
    tune_gc()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    unlistable: frozenset[Resource] = frozenset()
    while True:
        ctx = OperatorContext(settings=settings, kube=kube, kueue=kueue, unlistable=unlistable)
        build_operator(ctx)
        unlistable = unlistable_resources(kube, ctx.watched, settings.namespaces)
        if unlistable != ctx.unlistable:  # leave out what cannot be listed (see health.py)
            ctx.api.close()
            ctx = OperatorContext(settings=settings, kube=kube, kueue=kueue, unlistable=unlistable)
            build_operator(ctx)
        if unlistable:
            log.warning("cannot list %s: their handlers are left out", ", ".join(map(describe, sorted(unlistable))))
        restart = asyncio.Event()
        ctx.restart = restart.set
        try:
            run_kopf(ctx, loop, restart)
        except Exception:
            # a stream whose list became forbidden escalates out of kopf: run again without it
            now = unlistable_resources(kube, ctx.watched, settings.namespaces)
            if now == unlistable:
                raise
            log.exception("kopf stopped; running again with the resources listable now")
            unlistable = now
            continue
        finally:
            ctx.api.close()
        if not restart.is_set():
            return 0  # a signal: the operator stops
        unlistable = frozenset()  # looked at again on the next turn
        log.info("restarting kopf: the resources that can be listed changed")


def run_kopf(ctx: OperatorContext, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """One kopf run of the operator's registry, until a signal or `stop`."""
    settings = ctx.settings
    liveness = (
        f"http://{settings.metrics_address}:{settings.liveness_port}/healthz"
        if settings.liveness_port
        else None
    )
    kopf.run(
        loop=loop,
        registry=ctx.registry,
        settings=kopf_settings(settings),
        standalone=True,
        namespaces=list(settings.namespaces),
        clusterwide=not settings.namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop,
    )


if __name__ == "__main__":
    sys.exit(main())
