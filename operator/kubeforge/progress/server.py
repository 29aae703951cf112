"""The progress endpoint: `POST /v1/namespaces/{namespace}/trainingjobs/{name}/progress` over TLS.

Served with aiohttp's server (kopf already depends on aiohttp) on the operator's event loop. In
order, a request is refused with
- 413 when its body exceeds `Settings.progress_max_body` (before anything else is done);
- 401 without a bearer token;
- 429 when its token (one per pod) sent more than `progress_burst` reports in a row faster than
  `progress_rate` a second (before the TokenReview, so a flood costs the API server nothing);
- 401 / 403 per `kubeforge.progress.auth` (TokenReview, then the pod's place in the job);
- 400 when the body is not a JSON object.
Otherwise the report is recorded (`ProgressReports`) and the answer is
`{"accepted": true, "stop": null | REASON}`: REASON (e.g. `pruned`) asks the trainer to stop.
Every refusal is counted in `kubeforge_progress_refusals_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubeforge.apply import ApiError
from kubeforge.metrics import LoopCounter
from kubeforge.progress import auth
from kubeforge.progress.reports import ProgressReports
from kubeforge.settings import Settings

JSON = dict[str, Any]

log = logging.getLogger("kubeforge.progress")

PATH = "/v1/namespaces/{namespace}/trainingjobs/{name}/progress"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
TOO_LARGE = "too-large"
RATE_LIMITED = "rate-limited"
BAD_BODY = "bad-body"
REVIEW_FAILED = "review-failed"
NOT_LEADER = "not-leader"

REPORTS = LoopCounter(
    "kubeforge_progress_reports", "Progress reports accepted by the endpoint.", []
)
REFUSALS = LoopCounter(
    "kubeforge_progress_refusals",
    "Progress requests refused, by reason (expired-token, wrong-audience, other-trainingjob, "
    "pod-gone, too-large, rate-limited, ...).",
    ["reason"],
)

Lookup = Callable[[str, str], tuple[JSON | None, JSON | None]]
"""(namespace, name) → (the TrainingJob, its Job) as the operator's indexes hold them."""


@dataclass
class TokenBuckets:
    """A token bucket per key: `burst` requests at once, refilled at `rate` a second."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > 10_000:  # forget full buckets (pods long gone)
            self._buckets = {
                k: v
                for k, v in self._buckets.items()
                if min(self.burst, v[0] + (now - v[1]) * self.rate) < self.burst
            }
        return allowed


def _refuse(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    REFUSALS.labels(reason).inc()
    return web.json_response(
        {"accepted": False, "reason": reason, "message": message}, status=status, headers=headers
    )


def stop_reason(tj: JSON | None, annotation: str) -> str | None:
    """The stop request a TrainingJob carries (its owner wrote it), else None."""
    value = (((tj or {}).get("metadata") or {}).get("annotations") or {}).get(annotation)
    return str(value) if value else None


class ProgressEndpoint:
    """The aiohttp application and its state (runs on the operator's event loop)."""

    def __init__(
        self,
        kube: Any,
        settings: Settings,
        reports: ProgressReports,
        lookup: Lookup,
        *,
        clock: Callable[[], float] = time.monotonic,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.kube = kube
        self.leading = leading
        """Whether this replica reconciles now: a standby's reconcilers are paused, so a report
        kept here would never reach the status (the trainer sends it again, see handle)."""
        self.settings = settings
        self.reports = reports
        self.lookup = lookup
        self.clock = clock
        self.buckets = TokenBuckets(settings.progress_rate, settings.progress_burst, clock)
        self._reviewed: dict[str, tuple[float, auth.Caller]] = {}
        """sha256(token) → (when, caller): a valid token is reviewed again after 30 s."""
        self._pods: dict[str, tuple[str, str, str, int | None]] = {}
        """pod uid → (namespace, TrainingJob, TrainingJob uid, rank) once authorized."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.progress_max_body)
        app.router.add_post(PATH, self.handle)
        return app

    async def _review(self, token: str) -> auth.Caller | auth.Refusal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        held = self._reviewed.get(digest)
        if held is not None and now - held[0] < 30:
            return held[1]
        review = await self.kube.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body=auth.review_request(token, self.settings.progress_audience),
            resource="tokenreviews",
        )
        status = review.get("status") or {}
        answer = auth.caller_of(status, self.settings.progress_audience)
        if isinstance(answer, auth.Caller):
            if len(self._reviewed) > 10_000:
                self._reviewed = {k: v for k, v in self._reviewed.items() if now - v[0] < 30}
            self._reviewed[digest] = (now, answer)
        return answer

    async def _authorize(
        self, caller: auth.Caller, namespace: str, name: str
    ) -> tuple[JSON | None, int | None] | auth.Refusal:
        """(the TrainingJob, the pod's rank), or why not."""
        tj, job = self.lookup(namespace, name)
        if caller.namespace != namespace or tj is None or job is None:
            # refused without reading the pod (it may be in a namespace we may not read)
            refusal = auth.authorize(caller, namespace, name, tj, job, None)
            assert refusal is not None
            return refusal
        tj_uid = (tj.get("metadata") or {}).get("uid")
        known = self._pods.get(caller.pod_uid)
        if known is not None and known[:3] == (namespace, name, tj_uid):
            return tj, known[3]
        pod = await self.kube.get("v1", "Pod", caller.namespace, caller.pod_name)
        refusal = auth.authorize(caller, namespace, name, tj, job, pod)
        if refusal is not None:
            return refusal
        assert pod is not None
        raw = (pod["metadata"].get("labels") or {}).get(COMPLETION_INDEX)
        rank = int(raw) if raw is not None and raw.isdigit() else None
        if len(self._pods) > 10_000:
            self._pods.clear()
        self._pods[caller.pod_uid] = (namespace, name, str(tj_uid), rank)
        return tj, rank

    async def handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if not self.leading():
            # the Service spreads reports over every replica; only the leader writes statuses.
            # 503 + Retry-After: the trainer keeps the report and its next try (a new
            # connection) reaches another replica
            return _refuse(
                503, NOT_LEADER, "this operator replica is a standby; retry",
                headers={"Retry-After": "1"},
            )
        limit = self.settings.progress_max_body
        if request.content_length is not None and request.content_length > limit:
            return _refuse(413, TOO_LARGE, f"a progress report is at most {limit} bytes")
        token = auth.bearer_token(request.headers.get("Authorization"))
        if token is None:
            return _refuse(401, auth.NO_TOKEN, "no bearer token (Authorization: Bearer TOKEN)")
        if not self.buckets.allow(hashlib.sha256(token.encode()).hexdigest()):
            return _refuse(
                429,
                RATE_LIMITED,
                f"at most {self.settings.progress_rate:g} reports a second (burst "
                f"{self.settings.progress_burst:g}); send the latest one later",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, TOO_LARGE, f"a progress report is at most {limit} bytes")
        try:
            caller = await self._review(token)
            verdict = (
                caller
                if isinstance(caller, auth.Refusal)
                else await self._authorize(caller, namespace, name)
            )
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("progress request not checked: %s", exc)
            return _refuse(503, REVIEW_FAILED, "the operator could not check the token; retry")
        if isinstance(verdict, auth.Refusal):
            log.info(
                "progress report for %s/%s refused: %s", namespace, name, verdict.message
            )
            return _refuse(verdict.status, verdict.reason, verdict.message)
        tj, rank = verdict
        try:
            report = json.loads(body)
        except ValueError:
            report = None
        if not isinstance(report, dict) or not isinstance(report.get("metrics", {}), dict):
            return _refuse(
                400, BAD_BODY, 'the body must be a JSON object {"step", "epoch", "metrics": {}}'
            )
        self.reports.record((namespace, name), report, rank)
        REPORTS.labels().inc()
        stop = stop_reason(tj, self.settings.label("stop"))
        return web.json_response({"accepted": True, "stop": stop})


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.progress_cert_file, settings.progress_key_file)
    return ctx


async def _reload_on_change(ctx: ssl.SSLContext, settings: Settings, period: float = 60) -> None:
    """Load the certificate again when its files change (cert-manager renews them in place)."""

    def stamp() -> tuple[float, float]:
        return (
            os.stat(settings.progress_cert_file).st_mtime,
            os.stat(settings.progress_key_file).st_mtime,
        )

    seen = stamp()
    while True:
        await asyncio.sleep(period)
        try:
            now = stamp()
            if now != seen:
                ctx.load_cert_chain(settings.progress_cert_file, settings.progress_key_file)
                seen = now
                log.info("progress endpoint: certificate reloaded")
        except (OSError, ssl.SSLError) as exc:
            log.warning("progress endpoint: certificate not reloaded: %s", exc)


async def serve(endpoint: ProgressEndpoint) -> None:
    """Serve until cancelled."""
    s = endpoint.settings
    ctx = server_ssl_context(s)
    runner = web.AppRunner(endpoint.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, s.progress_address, s.progress_port, ssl_context=ctx)
    await site.start()
    log.info("progress endpoint on https://%s:%d", s.progress_address, s.progress_port)
    try:
        await _reload_on_change(ctx, s)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
