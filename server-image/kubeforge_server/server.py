"""Lifecycle: listen at once (liveness), load and warm the model (readiness), drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import time
from pathlib import Path
from typing import Any

from .codec import DecodeLimits
from .config import ServerConfig
from .dataplane import DataPlane
from .http_app import HttpApp, HttpLimits
from .memory import tune_malloc
from .metrics import Metrics
from .model import OnnxModel, load_model
from .shadow import Shadow, ShadowConfig
from .storage import ModelLoadError

log = logging.getLogger("kubeforge_server")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def write_termination_message(path: str, message: str) -> None:
    """Leave the reason where Kubernetes shows it (the pod's termination message)."""
    if not path:
        return
    p = Path(path)
    if not p.parent.is_dir():
        return
    with contextlib.suppress(OSError):
        p.write_text(message[:4000])


def raise_fd_limit(connections: int) -> None:
    """Room for ``--max-connections`` sockets plus gRPC, model and log files: the soft
    RLIMIT_NOFILE (often 1024) is raised towards the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("file descriptor limit %d is below --max-connections + 256", new)


class Server:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.dataplane = DataPlane(self.metrics)
        self.http = HttpApp(
            self.dataplane,
            self.metrics,
            HttpLimits(
                max_request_bytes=cfg.max_request_bytes,
                max_json_bytes=cfg.max_json_bytes,
                max_connections=cfg.max_connections,
                max_buffered_bytes=cfg.max_buffered_bytes,
                max_header_bytes=cfg.max_header_bytes,
                header_timeout=cfg.header_timeout,
                body_timeout=cfg.body_timeout,
                keepalive_timeout=cfg.keepalive_timeout,
            ),
        )
        self.http_port = 0
        self.grpc_port = 0
        self._stop: asyncio.Event | None = None
        self._grpc: Any = None
        self._grpc_servicer: Any = None

    def request_stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info(
                "SIGTERM: draining (not ready, no new connections, finishing in-flight requests)"
            )
            self.dataplane.start_draining()
            self._stop.set()

    def _load(self) -> OnnxModel:
        model = load_model(self.cfg)
        seconds = model.warmup(self.cfg.max_batch_size)
        log.info("warmed up %s in %.3fs", model.name, seconds)
        return model

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        tune_malloc()
        raise_fd_limit(cfg.max_connections)
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        http_server = await loop.create_server(
            self.http.protocol_factory, cfg.host, cfg.http_port, backlog=4096, reuse_address=True
        )
        self.http_port = http_server.sockets[0].getsockname()[1]
        self.http.start_timer(loop)
        if cfg.grpc_port:
            from .grpc_service import start_grpc

            self._grpc, self._grpc_servicer, self.grpc_port = await start_grpc(
                self.dataplane,
                self.metrics,
                cfg.host,
                cfg.grpc_port,
                cfg.max_request_bytes,
                max_concurrent_rpcs=cfg.max_queue + cfg.max_connections,
                reserve=self.http.reserve,
                release=self.http.release,
            )
        log.info(
            "listening: http %s:%d grpc %s",
            cfg.host,
            self.http_port,
            f"{cfg.host}:{self.grpc_port}" if self.grpc_port else "off",
        )

        load = loop.run_in_executor(None, self._load)
        stop_wait = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([load, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        if load.done():
            try:
                model = load.result()
            except ModelLoadError as exc:
                log.error("model load failed: %s", exc)
                write_termination_message(cfg.termination_log, f"model load failed: {exc}")
                code = EXIT_CONFIG if exc.unsupported else EXIT_ERROR
                self._stop.set()
            except Exception as exc:
                log.exception("model load failed")
                write_termination_message(
                    cfg.termination_log, f"model load failed: {type(exc).__name__}: {exc}"
                )
                code = EXIT_ERROR
                self._stop.set()
            else:
                if not self._stop.is_set():
                    entry = self.dataplane.add_model(
                        model,
                        max_batch_size=cfg.max_batch_size,
                        max_delay_ms=cfg.max_delay_ms,
                        loop=loop,
                        limits=DecodeLimits(
                            max_elements=cfg.max_request_bytes,
                            max_rows=cfg.max_request_rows,
                            max_json_bytes=cfg.max_json_bytes,
                        ),
                        max_queue=cfg.max_queue,
                    )
                    if cfg.shadow_url:
                        entry.shadow = Shadow(
                            ShadowConfig(
                                url=cfg.shadow_url,
                                percent=cfg.shadow_percent,
                                tolerance=cfg.shadow_tolerance,
                                queue=cfg.shadow_queue,
                                concurrency=cfg.shadow_concurrency,
                                timeout=cfg.shadow_timeout,
                                budget=cfg.shadow_budget,
                            ),
                            model.name,
                            entry.metrics.shadow_counts(),
                        )
                        entry.shadow.start()
                    self.http.model_added(entry)
                    # Everything loaded so far lives as long as the process: keep it out of the
                    # cyclic collector, whose full passes over it would stall the loop for tens
                    # of milliseconds under connection churn.
                    gc.collect()
                    gc.freeze()
                    log.info(
                        "ready: model %s (sha256 %s), dynamic batching %s",
                        model.name,
                        model.sha256,
                        f"max {cfg.max_batch_size} rows / {cfg.max_delay_ms} ms"
                        if entry.batcher.enabled
                        else "off",
                    )
        await stop_wait
        await self._drain(http_server)
        if not load.done():
            load.cancel()
        return code

    async def _drain(self, http_server: asyncio.AbstractServer) -> None:
        cfg = self.cfg
        self.dataplane.start_draining()
        self.http.start_draining()
        http_server.close()  # stop accepting; existing connections keep being served
        grpc_stop = None
        if self._grpc is not None:
            # New RPCs are refused at once; running ones get the grace period.
            grpc_stop = asyncio.ensure_future(self._grpc.stop(grace=max(0.1, cfg.drain_seconds)))
        deadline = time.monotonic() + cfg.drain_seconds
        # Idle keep-alive connections close after a short quiet period; busy ones close right
        # after their last response (which carries "connection: close").
        idle_grace = min(0.5, cfg.drain_seconds / 4)
        while time.monotonic() < deadline:
            self.http.close_idle(idle_grace)
            busy = sum(e.metrics.inflight for e in self.dataplane.entries.values())
            if not self.http.connections and busy == 0:
                break
            await asyncio.sleep(0.02)
        left = len(self.http.connections)
        for conn in list(self.http.connections):
            conn.close()
        if grpc_stop is not None:
            await grpc_stop
        self.http.stop()
        for entry in self.dataplane.entries.values():
            if entry.shadow is not None:
                await entry.shadow.close()
        self.dataplane.close()
        if self._grpc_servicer is not None:
            self._grpc_servicer.close()
        grpc_served = self._grpc_servicer.served if self._grpc_servicer is not None else 0
        log.info(
            "drained: http inference requests accepted=%d answered=%d; grpc answered=%d; "
            "%d connections cut at the deadline",
            self.http.accepted,
            self.http.served,
            grpc_served,
            left,
        )


def run_server(cfg: ServerConfig) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    server = Server(cfg)
    if uvloop is not None:
        return int(uvloop.run(server.run()))
    return asyncio.run(server.run())
