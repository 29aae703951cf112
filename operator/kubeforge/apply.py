"""The operator's API client: server-side apply, create, merge patches, get and delete — one
field manager, every write counted in `kubeforge_api_writes_total`.

Built on the official `kubernetes` client: its configuration (kubeconfig with exec plugins,
`proxy-url`, `tls-server-name`; in-cluster service account with token rotation), its
authentication and its urllib3 connection pool. Objects are plain dicts both ways (no model
classes). `AsyncKube` runs the same calls in a thread pool for the reconcilers on the event loop,
so sync and async share one configuration path.

Retries (why each is safe):
- connection refused / not established: any method (nothing was sent) — urllib3's retries;
- 429 Too Many Requests (API Priority and Fairness) and 401 once (credentials re-read): any
  method, POST included (the API server turned the request away before handling it);
- a broken connection or a 5xx after sending: only idempotent requests (GET, apply, merge
  patch, DELETE). A POST is never retried blindly: the reconcile runs again and its create
  meets a 409 on the deterministic name, which counts as done.
Waits follow `Retry-After` when given, else an exponential backoff, both with jitter.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import urllib3

from kubeforge.metrics import API_RETRIES, API_WRITES

JSON = dict[str, Any]

log = logging.getLogger("kubeforge.apply")

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the API server accepts it as such
MERGE = "application/merge-patch+json"

IDEMPOTENT = frozenset({"GET", "HEAD", "PATCH", "PUT", "DELETE"})
"""Methods whose repetition leaves the same state (our PATCHes are applies and merge patches)."""
MAX_ATTEMPTS = 8
MAX_WAIT = 10.0

_CORE = {"Pod", "Service", "ServiceAccount", "Event", "ConfigMap", "Secret", "Namespace"}
_PLURAL_EXCEPTIONS = {
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


class ApiError(Exception):
    """A non-2xx answer from the API server: `.status`, `.reason`, the server's message, and
    the client's exception it wraps (`__cause__`) when there is one."""

    def __init__(
        self,
        status: int,
        reason: str,
        body: JSON | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = (body or {}).get("message") or reason
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = (body or {}).get("reason") or reason
        self.message = message
        self.body = body or {}
        self.headers = headers or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def throttled(self) -> bool:
        return self.status == 429


class ApiConnectionError(ConnectionError):
    """The API server could not be reached, or the connection broke mid-request."""


def plural(kind: str) -> str:
    """Lower-case plural resource name of a kind (enough for the kinds kubeforge writes)."""
    if kind in _PLURAL_EXCEPTIONS:
        return _PLURAL_EXCEPTIONS[kind]
    low = kind.lower()
    if low.endswith("s"):
        return low + "es"
    if low.endswith("y"):
        return low[:-1] + "ies"
    return low + "s"


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = ""
) -> str:
    """`/api/v1/namespaces/NS/pods/NAME[/sub]` or `/apis/GROUP/VERSION/...`."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base
    if namespace:
        path += f"/namespaces/{namespace}"
    path += "/" + plural(kind)
    if name:
        path += "/" + name
    if sub:
        path += "/" + sub
    return path


def manifest_hash(obj: Any) -> str:
    """A short, stable hash of a desired manifest (stored as an annotation on the child)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def merge_patch(old: JSON, new: JSON) -> JSON | None:
    """The RFC 7396 merge patch turning `old` into `new` (None: nothing to change).

    Keys gone from `new` become null; lists and scalars are replaced whole.
    """
    patch: JSON = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before == value:
            continue
        if isinstance(before, dict) and isinstance(value, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


_MISSING = object()


def retry_delay(attempt: int, retry_after: str | None = None) -> float:
    """Seconds before attempt `attempt + 1`: the server's `Retry-After` (seconds) when given,
    else 0.25 s doubling; plus up to 50% jitter so that many clients do not come back together."""
    base = 0.25 * 2.0**attempt
    if retry_after and retry_after.strip().isdigit():
        base = max(float(retry_after), 0.1)
    base = min(base, MAX_WAIT)
    return base + random.uniform(0.0, base / 2)


class Kube:
    """The blocking client (start-up checks, tools, and `AsyncKube`'s worker threads)."""

    def __init__(
        self,
        api_client: Any,
        field_manager: str = "kubeforge",
        timeout: float = 30.0,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self.api_client = api_client
        self.config = api_client.configuration
        self.field_manager = field_manager
        self.timeout = timeout
        self.reload = reload
        """Re-reads the credentials into `config` (after a 401); None: nothing to re-read."""
        api_client.user_agent = f"{field_manager}-operator"
        self._writes: dict[tuple[str, str], Any] = {}  # API_WRITES children, by (verb, resource)
        self._lock = threading.Lock()
        self.write_count = 0
        """Writes made so far (a reconcile that made none found its object settled)."""

    # --- raw -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        resource: str = "",
        parse: bool = True,
    ) -> JSON:
        """One API request, retried where safe (see the module's doc); the answer as a dict
        (`parse=False`: {} unless it is an error). Raises ApiError on a non-2xx answer,
        ApiConnectionError when the server cannot be reached."""
        relogged = False
        for attempt in range(MAX_ATTEMPTS):
            last = attempt == MAX_ATTEMPTS - 1
            try:
                status, headers, raw = self._send_once(method, path, body, content_type, query)
            except urllib3.exceptions.HTTPError as exc:
                # urllib3 already retried what never reached the server
                if method in IDEMPOTENT and not last:
                    API_RETRIES.labels("connection").inc()
                    time.sleep(retry_delay(attempt))
                    continue
                raise ApiConnectionError(f"{method} {path}: {exc}") from exc
            if status < 300:
                return self._done(method, resource, raw, parse)
            retry_after = headers.get("Retry-After")
            if status == 429 and not last:
                API_RETRIES.labels("throttled").inc()
                time.sleep(retry_delay(attempt, retry_after))
                continue
            if status == 401 and not relogged and self.reload is not None:
                relogged = True
                API_RETRIES.labels("unauthorized").inc()
                self.reload()
                continue
            if status >= 500 and method in IDEMPOTENT and not last:
                API_RETRIES.labels("server").inc()
                time.sleep(retry_delay(attempt, retry_after))
                continue
            raise self._error(status, headers, raw)
        raise AssertionError("unreachable")

    def _send_once(
        self, method: str, path: str, body: Any, content_type: str, query: dict[str, str] | None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        req = self.api_client.param_serialize(
            method,
            path,
            query_params=list(query.items()) if query else None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api_client.call_api(*req, _request_timeout=self.timeout)
        raw = resp.read()
        return resp.status, dict(resp.getheaders() or {}), raw or b""

    @staticmethod
    def _error(status: int, headers: dict[str, str], raw: bytes) -> ApiError:
        from kubernetes.client.exceptions import ApiException

        parsed: Any = None
        try:
            parsed = orjson.loads(raw) if raw else None
        except ValueError:
            parsed = {"message": raw[:200].decode(errors="replace")}
        reason = (parsed or {}).get("reason", "") if isinstance(parsed, dict) else ""
        cause = ApiException(status=status, reason=reason)
        cause.body = raw.decode(errors="replace")
        err = ApiError(status, reason or str(status), parsed if isinstance(parsed, dict) else None, headers)
        err.__cause__ = cause
        return err

    def _done(self, method: str, resource: str, raw: bytes, parse: bool) -> JSON:
        parsed: JSON = orjson.loads(raw) if raw and parse else {}
        if method != "GET":
            with self._lock:
                self.write_count += 1
            counter = self._writes.get((method, resource))
            if counter is None:
                counter = self._writes[(method, resource)] = API_WRITES.labels(method, resource)
            counter.inc()
        return parsed

    # --- reads ---------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    # --- writes --------------------------------------------------------------------------

    def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        """Server-side apply `obj` under our field manager (force: we own these fields)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = {"fieldManager": self.field_manager}
        if force:
            query["force"] = "true"
        return self.request(
            "PATCH", path, body=obj, content_type=APPLY, query=query, resource=plural(obj["kind"]), parse=parse
        )

    def create(self, obj: JSON, *, parse: bool = True) -> JSON:
        """POST `obj` (fields recorded under our manager with operation Update). A 409 comes
        back as ApiError(conflict): with deterministic names, the object is already there.

        Used for fields that another controller takes over after creation (Kueue's
        `spec.suspend`): a later apply that omits such a field does not reset it.
        """
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self.request(
            "POST",
            path,
            body=obj,
            query={"fieldManager": self.field_manager},
            resource=plural(obj["kind"]),
            parse=parse,
        )

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str = "",
        parse: bool = True,
    ) -> JSON:
        """A JSON merge patch (of the object or a subresource such as `status`)."""
        return self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name, sub),
            body=patch,
            content_type=MERGE,
            query={"fieldManager": self.field_manager},
            resource=plural(kind) + (f"/{sub}" if sub else ""),
            parse=parse,
        )

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, patch: JSON
    ) -> JSON:
        """One merge patch of the `/status` subresource (the object it returns is not read)."""
        return self.patch(
            api_version, kind, namespace, name, {"status": patch}, sub="status", parse=False
        )

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete the object (background propagation); False when it was already gone."""
        try:
            self.request(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
                resource=plural(kind),
                parse=False,
            )
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True


class AsyncKube:
    """`Kube`'s calls, awaited: each runs in a worker thread of this client's pool (the
    official client is blocking), so the event loop never waits on the network."""

    def __init__(self, kube: Kube, threads: int = 16) -> None:
        self.kube = kube
        self.field_manager = kube.field_manager
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kubeforge-api")

    @property
    def write_count(self) -> int:
        return self.kube.write_count

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        """See `Kube.request`."""
        result: JSON = await self._run(self.kube.request, method, path, **kwargs)
        return result

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JSON | None:
        """The object, or None when it does not exist."""
        result: JSON | None = await self._run(self.kube.get, api_version, kind, namespace, name)
        return result

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        """Server-side apply `obj` under our field manager (force: we own these fields);
        `parse=False`: the caller does not read the answer ({} comes back)."""
        result: JSON = await self._run(self.kube.apply, obj, force=force, parse=parse)
        return result

    async def create(self, obj: JSON, *, parse: bool = True) -> JSON:
        """POST `obj` (see `Kube.create`)."""
        result: JSON = await self._run(self.kube.create, obj, parse=parse)
        return result

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str = "",
        parse: bool = True,
    ) -> JSON:
        """A JSON merge patch (of the object or a subresource such as `status`)."""
        result: JSON = await self._run(
            self.kube.patch, api_version, kind, namespace, name, patch, sub=sub, parse=parse
        )
        return result

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, patch: JSON
    ) -> None:
        """One merge patch of the `/status` subresource (the object it returns is not read)."""
        await self._run(self.kube.patch_status, api_version, kind, namespace, name, patch)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        result: bool = await self._run(self.kube.delete, api_version, kind, namespace, name)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def async_kube(kube: Kube, max_idle: int = 16) -> AsyncKube:
    """An AsyncKube over `kube` (its configuration, credentials and connection pool)."""
    return AsyncKube(kube, threads=max_idle)


def load_config(cfg: Any) -> None:
    """Credentials and endpoint into `cfg`: KUBECONFIG (or ~/.kube/config) when there is one,
    else the in-cluster service account (its token re-read as it rotates)."""
    from kubernetes import config

    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            return
        # KUBECONFIG read now (the client reads it once, at import)
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg
        )
    except config.ConfigException:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]


def make_kube(field_manager: str = "kubeforge", pool_size: int = 16) -> Kube:
    """A Kube configured by `load_config` (re-read after a 401)."""
    from kubernetes import client

    cfg = client.Configuration()
    load_config(cfg)
    cfg.connection_pool_maxsize = max(pool_size, 4)
    # urllib3 retries what never reached the server (connect errors) and, for idempotent
    # methods only, broken reads; statuses (429, 5xx) are Kube.request's to handle
    cfg.retries = urllib3.Retry(
        total=3,
        connect=3,
        read=2,
        status=0,
        other=0,
        redirect=0,
        allowed_methods=IDEMPOTENT,
        backoff_factor=0.2,
        backoff_jitter=0.2,
        raise_on_status=False,
    )
    return Kube(client.ApiClient(cfg), field_manager, reload=lambda: load_config(cfg))
