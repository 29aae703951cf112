"""A tiny Kubernetes REST client (stdlib + PyYAML) for the test plumbing.

Not a replacement for the `kubernetes` package: it exists so the control plane and the test
fixtures need no client library. Reads a kubeconfig (inline or file certs, bearer token).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            msg = json.loads(body).get("message", body)
        except ValueError:
            self.reason, msg = "", body
        super().__init__(f"{method} {path}: HTTP {status}: {msg}")


def _materialize(data_b64: str | None, file: str | None, tmp: Path, name: str) -> str | None:
    if data_b64:
        p = tmp / name
        p.write_bytes(base64.b64decode(data_b64))
        p.chmod(0o600)
        return str(p)
    return file


class KubeClient:
    def __init__(self, kubeconfig: str | Path, context: str | None = None) -> None:
        self.kubeconfig = str(kubeconfig)
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx_name = context or cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user: dict[str, Any] = next(
            (u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {}
        )
        self.server = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="kubeforge-client-")
        tmp = Path(self._tmp.name)
        if cluster.get("insecure-skip-tls-verify"):
            self._ssl = ssl._create_unverified_context()
        else:
            ca = _materialize(
                cluster.get("certificate-authority-data"),
                cluster.get("certificate-authority"),
                tmp,
                "ca.crt",
            )
            self._ssl = ssl.create_default_context(cafile=ca)
        cert = _materialize(
            user.get("client-certificate-data"), user.get("client-certificate"), tmp, "client.crt"
        )
        key = _materialize(user.get("client-key-data"), user.get("client-key"), tmp, "client.key")
        if cert and key:
            self._ssl.load_cert_chain(cert, key)
        self._token = user.get("token")
        if not self._token and user.get("tokenFile"):
            self._token = Path(user["tokenFile"]).read_text().strip()
        self.namespace = ctx.get("namespace", "default")

    # -- raw ----------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Any:
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace"), method, path) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_if_exists(self, path: str, **kw: Any) -> Any:
        """``get``, or None where the API server answers 404 (any other error is raised)."""
        try:
            return self.get(path, **kw)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def patch(self, path: str, body: Any, *, kind: str = "merge", **kw: Any) -> Any:
        ct = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", path, body, content_type=ct, **kw)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def path(
        resource: str,
        name: str = "",
        namespace: str | None = None,
        group_version: str = "v1",
        subresource: str = "",
    ) -> str:
        """``path("pods", "p", "ns")`` -> ``/api/v1/namespaces/ns/pods/p``."""
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        p = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    def create(self, obj: JSON, namespace: str | None = None) -> JSON:
        """Create ``obj`` (any kind whose plural is its lowercased kind + 's')."""
        gv = obj["apiVersion"]
        plural = _plural(obj["kind"])
        ns = namespace or obj.get("metadata", {}).get("namespace")
        if obj["kind"] in (
            "Namespace",
            "Node",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "PriorityClass",
        ):
            ns = None
        result: JSON = self.post(self.path(plural, namespace=ns, group_version=gv), obj)
        return result

    def wait_for(
        self,
        what: str,
        fn: Callable[[], Any],
        timeout: float = 30,
        interval: float = 0.1,
    ) -> Any:
        """Poll ``fn`` until it returns something truthy; raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                v = fn()
                if v:
                    return v
            except ApiError as e:
                last_exc = e
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {what}"
            + (f" (last error: {last_exc})" if last_exc else "")
        )


def _plural(kind: str) -> str:
    k = kind.lower()
    if k.endswith("s"):
        return k + "es"
    if k.endswith("y"):
        return k[:-1] + "ies"
    return k + "s"
