"""Writes to the API server: server-side apply, create, status merge patches — one field manager.

A thin layer over the official `kubernetes` client's connection pool, configuration and
authentication: bodies are sent as JSON bytes and answers parsed as plain dicts (no model
objects; orjson both ways), which keeps the operator's CPU per object low. Every write is counted
in `kubeforge_api_writes_total`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.parse
from typing import Any

import orjson

from kubeforge._http import AsyncHttp
from kubeforge.metrics import API_WRITES

JSON = dict[str, Any]

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the API server accepts it as such
MERGE = "application/merge-patch+json"

_CORE = {"Pod", "Service", "ServiceAccount", "Event", "ConfigMap", "Secret", "Namespace"}
_PLURAL_EXCEPTIONS = {
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, body: JSON | None = None) -> None:
        message = (body or {}).get("message") or reason
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = (body or {}).get("reason") or reason
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


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


class _Api:
    """What both clients share: configuration, authentication headers, the write counters and
    how each kind of write is spelled (path, query, content type)."""

    def __init__(self, api_client: Any, field_manager: str = "kubeforge", timeout: float = 30.0):
        self.api_client = api_client
        self.config = api_client.configuration
        self.field_manager = field_manager
        self.timeout = timeout
        self.user_agent = f"{field_manager}-operator"
        self._writes: dict[tuple[str, str], Any] = {}  # API_WRITES children, by (verb, resource)
        self._auth: dict[str, str] | None = None
        self.write_count = 0
        """Writes made so far (a reconcile that made none found its object settled)."""

    def _headers(self, path: str, method: str) -> dict[str, str]:
        """Request headers with authentication; computed once unless the client refreshes its
        token (in-cluster service account tokens, exec/OIDC plugins)."""
        if self._auth is not None:
            return dict(self._auth)
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], path, method, None)
        if getattr(self.config, "refresh_api_key_hook", None) is None:
            self._auth = dict(headers)
        return headers

    def _prepare(
        self, method: str, path: str, body: Any, content_type: str, query: dict[str, str] | None
    ) -> tuple[str, dict[str, str], bytes | None]:
        """(path?query, headers, body bytes or None) of one request."""
        headers = self._headers(path, method)
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        if body is None:
            return target, headers, None
        headers["Content-Type"] = content_type
        return target, headers, body if isinstance(body, bytes) else orjson.dumps(body)

    def _answer(
        self, method: str, resource: str, status: int, reason: str, raw: bytes, parse: bool = True
    ) -> JSON:
        """The parsed answer (`parse=False`: {} unless it is an error, for callers that do not
        read it: parsing the object a write returns was a tenth of the operator's CPU); ApiError
        on a non-2xx status; writes counted."""
        parsed: JSON = {}
        if raw and (parse or status >= 300):
            try:
                parsed = orjson.loads(raw)
            except ValueError:
                parsed = {"message": raw[:200].decode(errors="replace")}
        if status >= 300:
            raise ApiError(status, reason, parsed if isinstance(parsed, dict) else None)
        if method != "GET":
            self.write_count += 1
            counter = self._writes.get((method, resource))
            if counter is None:
                counter = self._writes[(method, resource)] = API_WRITES.labels(method, resource)
            counter.inc()
        return parsed

    def _apply_args(self, obj: JSON, force: bool) -> tuple[str, str, JSON, str, dict[str, str], str]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = {"fieldManager": self.field_manager}
        if force:
            query["force"] = "true"
        return "PATCH", path, obj, APPLY, query, plural(obj["kind"])

    def _create_args(self, obj: JSON) -> tuple[str, str, JSON, str, dict[str, str], str]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        query = {"fieldManager": self.field_manager}
        return "POST", path, obj, "application/json", query, plural(obj["kind"])

    def _patch_args(
        self, api_version: str, kind: str, namespace: str | None, name: str, patch: Any, sub: str
    ) -> tuple[str, str, Any, str, dict[str, str], str]:
        path = resource_path(api_version, kind, namespace, name, sub)
        resource = plural(kind) + (f"/{sub}" if sub else "")
        return "PATCH", path, patch, MERGE, {"fieldManager": self.field_manager}, resource


class Kube(_Api):
    """The blocking API client (worker threads, tools, tests): the official client's urllib3
    pool, its configuration and authentication."""

    def __init__(self, api_client: Any, field_manager: str = "kubeforge", timeout: float = 30.0):
        super().__init__(api_client, field_manager, timeout)
        self.pool = api_client.rest_client.pool_manager
        self.http = self.pool.connection_from_url(self.config.host)
        """The API server's connection pool (one host)."""

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
    ) -> JSON:
        """One HTTP request; the answer as a dict. Raises ApiError on a non-2xx answer."""
        url, headers, data = self._prepare(method, path, body, content_type, query)
        # straight to the host's connection pool (PoolManager's per-request URL parsing, pool
        # lookup and header merging were a fifth of a write's client CPU)
        resp = self.http.urlopen(
            method,
            url,
            body=data,
            headers=headers,
            timeout=self.timeout,
            preload_content=True,
            redirect=False,
        )
        return self._answer(method, resource, resp.status, resp.reason or "", resp.data)

    def _send(self, args: tuple[str, str, Any, str, dict[str, str], str]) -> JSON:
        method, path, body, content_type, query, resource = args
        return self.request(
            method, path, body=body, content_type=content_type, query=query, resource=resource
        )

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    # --- writes --------------------------------------------------------------------------

    def apply(self, obj: JSON, *, force: bool = True) -> JSON:
        """Server-side apply `obj` under our field manager (force: we own these fields)."""
        return self._send(self._apply_args(obj, force))

    def create(self, obj: JSON) -> JSON:
        """POST `obj` (fields recorded under our manager with operation Update).

        Used for fields that another controller takes over after creation (Kueue's
        `spec.suspend`): a later apply that omits such a field does not reset it.
        """
        return self._send(self._create_args(obj))

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str = "",
    ) -> JSON:
        """A JSON merge patch (of the object or a subresource such as `status`)."""
        return self._send(self._patch_args(api_version, kind, namespace, name, patch, sub))

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, patch: JSON
    ) -> JSON:
        """One merge patch of the `/status` subresource."""
        return self.patch(api_version, kind, namespace, name, {"status": patch}, sub="status")


class AsyncKube(_Api):
    """The operator's API client on the event loop: the same calls as `Kube`, awaited, over
    `kubeforge._http` (a fifth of urllib3's client CPU per write, and no thread hand-offs)."""

    def __init__(
        self,
        api_client: Any,
        field_manager: str = "kubeforge",
        timeout: float = 30.0,
        max_idle: int = 16,
    ):
        super().__init__(api_client, field_manager, timeout)
        self.http = AsyncHttp(self.config.host, ssl_context(self.config), max_idle=max_idle)

    def headers(self, path: str, method: str = "GET") -> dict[str, str]:
        """Headers (with authentication) for a request to `path`."""
        return self._headers(path, method)

    async def request(
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
        """One HTTP request; the answer as a dict ({} with `parse=False`). Raises ApiError on
        a non-2xx answer."""
        target, headers, data = self._prepare(method, path, body, content_type, query)
        status, reason, raw = await self.http.request(
            method, target, headers, data or b"", timeout=self.timeout
        )
        return self._answer(method, resource, status, reason, raw, parse)

    async def _send(
        self, args: tuple[str, str, Any, str, dict[str, str], str], parse: bool = True
    ) -> JSON:
        method, path, body, content_type, query, resource = args
        return await self.request(
            method,
            path,
            body=body,
            content_type=content_type,
            query=query,
            resource=resource,
            parse=parse,
        )

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        """Server-side apply `obj` under our field manager (force: we own these fields);
        `parse=False`: the caller does not read the answer ({} comes back)."""
        return await self._send(self._apply_args(obj, force), parse)

    async def create(self, obj: JSON, *, parse: bool = True) -> JSON:
        """POST `obj` (see `Kube.create`)."""
        return await self._send(self._create_args(obj), parse)

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
        args = self._patch_args(api_version, kind, namespace, name, patch, sub)
        return await self._send(args, parse)

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, patch: JSON
    ) -> None:
        """One merge patch of the `/status` subresource (the object it returns is not read)."""
        args = self._patch_args(api_version, kind, namespace, name, {"status": patch}, "status")
        await self._send(args, parse=False)


def ssl_context(cfg: Any) -> ssl.SSLContext | None:
    """The TLS context of a client configuration (None for plain http)."""
    if not cfg.host.startswith("https"):
        return None
    if not cfg.verify_ssl:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.assert_hostname is False:
            ctx.check_hostname = False
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def async_kube(kube: Kube, max_idle: int = 16) -> AsyncKube:
    """An AsyncKube with the configuration and authentication of `kube`."""
    return AsyncKube(kube.api_client, kube.field_manager, kube.timeout, max_idle=max_idle)


def make_kube(field_manager: str = "kubeforge", pool_size: int = 16) -> Kube:
    """A Kube from KUBECONFIG (or ~/.kube/config), else the in-cluster service account."""
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            # KUBECONFIG read now (the client reads it once, at import)
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg
            )
    except config.ConfigException:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = max(pool_size, 4)
    return Kube(client.ApiClient(cfg), field_manager)
