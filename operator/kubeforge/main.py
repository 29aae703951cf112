"""`kubeforge-operator [--namespace NS]... [--metrics-port 8000]`: the operator's entry point.

Kubeconfig from KUBECONFIG (or ~/.kube/config), else the in-cluster service account; all
namespaces when none is named. kopf runs the operator's lifecycle (login, startup/cleanup, signals,
liveness; standalone: no peering objects), with its bookkeeping under the `kubeforge.io` prefix and
its info Events off. The `@kopf.index`/`@kopf.on.event` handlers of every kind are fed by
kubeforge's own watch layer (`kubeforge.watching`: kopf's per-event machinery was most of the
operator's CPU), and kubeforge's controllers do the reconciling (see `kubeforge.controller`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from kubeforge import metrics
from kubeforge.apply import ApiError, Kube, make_kube
from kubeforge.context import OperatorContext
from kubeforge.progress import service as progress_service
from kubeforge.settings import Settings
from kubeforge.watching import Watcher, lifecycle_registry

log = logging.getLogger("kubeforge")

KINDS = (
    "kubeforge.trainingjob.handlers",
    "kubeforge.tuningstudy.handlers",
    "kubeforge.modeldeployment.handlers",
)
"""Modules with a `register(ctx)` function, one per kind (missing ones are skipped)."""


class NoDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf builds (deep-copies) and diffs every object's "essence" on every event, for
    change-detecting handlers. With only watching and indexing handlers nothing reads it: skip
    that work (it was most of kopf's CPU per event)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None


def kopf_settings(
    settings: Settings, registry: kopf.OperatorRegistry | None = None
) -> kopf.OperatorSettings:
    """kopf's settings: bookkeeping under our prefix, no info Events, our worker count; no
    diff-base work when no handler of `registry` detects changes."""
    ks = kopf.OperatorSettings()
    prefix = settings.prefix
    ks.persistence.finalizer = f"{prefix}/finalizer"
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    lean = (
        registry is not None
        and not any(True for _ in registry._changing.get_all_handlers())
        and not any(True for _ in registry._spawning.get_all_handlers())
    )
    storage_cls = NoDiffBaseStorage if lean else kopf.AnnotationsDiffBaseStorage
    ks.persistence.diffbase_storage = storage_cls(prefix=prefix, key="last-handled-configuration")
    ks.posting.enabled = False
    ks.execution.max_workers = settings.concurrency
    ks.networking.request_timeout = 60
    ks.watching.server_timeout = 600
    ks.watching.client_timeout = 660
    if (
        registry is not None
        and lean
        and not any(True for _ in registry._indexing.get_all_handlers())
        and not any(True for _ in registry._watching.get_all_handlers())
    ):
        ks.scanning.disabled = True  # no resource handlers: no CRD/namespace discovery either
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
    """Register every kind, kopf's login and the start/stop of the controllers on ctx.registry."""
    reg = ctx.registry
    register_kinds(ctx, kinds)
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=reg)
    async def start_controllers(**_: Any) -> None:
        watcher = Watcher(reg, ctx.indexes, ctx.api, ctx.settings.namespaces)
        period = ctx.settings.resync_seconds
        for ctl in ctx.controllers:
            ctl.start()
            keys = getattr(ctl, "all_keys", None)
            if keys is not None and period > 0:
                tasks.append(asyncio.create_task(ctl.resync(keys, period)))
        tasks.append(asyncio.create_task(progress_service.run(ctx), name="kubeforge-progress"))
        tasks.append(asyncio.create_task(watcher.run(), name="kubeforge-watch"))

    @kopf.on.cleanup(registry=reg)
    async def stop_controllers(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        for ctl in ctx.controllers:
            await ctl.stop()


def configure_logging(settings: Settings) -> None:
    fmt = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=fmt, log_refkey="object")
    logging.getLogger().setLevel(settings.log_level.upper())
    # kopf's per-object chatter costs CPU at scale; keep its warnings and errors
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities").setLevel(logging.WARNING)


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
    """Fewer cyclic garbage collections: the operator holds many small long-lived dicts (index
    values) and makes many short-lived ones (parsed watch events) that form no cycles, so the
    default thresholds run full collections over the whole heap again and again as it grows.
    What exists at start-up is frozen out of collections altogether."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env(
        namespaces=tuple(args.namespace) or None,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
    )
    configure_logging(settings)
    kube = make_kube(settings.field_manager, settings.concurrency)
    ctx = OperatorContext(settings=settings, kube=kube)
    ctx.kueue = settings.kueue_workloads and kueue_available(kube)
    build_operator(ctx)
    metrics.serve(settings.metrics_port, settings.metrics_address)
    liveness = (
        f"http://{settings.metrics_address}:{settings.liveness_port}/healthz"
        if settings.liveness_port
        else None
    )
    log.info(
        "starting",
        extra={
            "namespaces": list(settings.namespaces) or "all",
            "kueue": ctx.kueue,
            "concurrency": settings.concurrency,
        },
    )
    lifecycle = lifecycle_registry(ctx.registry)
    tune_gc()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    kopf.run(
        loop=loop,
        registry=lifecycle,
        settings=kopf_settings(settings, lifecycle),
        standalone=True,
        clusterwide=True,  # kopf watches nothing itself (see kubeforge.watching)
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
