"""The blocking API client (Kube): one request retried where safe (the policy is in
`kubeforge.apply`'s docstring), reads and writes under one field manager, writes counted."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import urllib3

from kubeforge._kube_errors import ApiConnectionError, ApiError
from kubeforge._kube_paths import plural, resource_path
from kubeforge.metrics import API_RETRIES, API_WRITES

JSON = dict[str, Any]

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the API server accepts it as such
MERGE = "application/merge-patch+json"

IDEMPOTENT = frozenset({"GET", "HEAD", "PATCH", "PUT", "DELETE"})
"""Methods whose repetition leaves the same state (our PATCHes are applies and merge patches)."""
MAX_ATTEMPTS = 8
MAX_WAIT = 10.0

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
