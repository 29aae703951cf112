"""The progress endpoint from outside a pod: local TLS for an operator process, a real bound token
for a pod (TokenRequest), and one report POSTed (docs/progress-protocol.md).

Used by the pod player (it runs kwok pods' trainers as local processes, which report to the
operator's endpoint on loopback exactly as a pod would) and by the tests.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import KubeClient
from .cluster import free_port
from .pki import make_ca

JSON = dict[str, Any]
AUDIENCE = "kubeforge.io/progress"


@dataclass(frozen=True)
class LocalProgressTLS:
    """A CA and a server certificate for an operator process's endpoint on 127.0.0.1."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    port: int
    address: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"https://{self.address}:{self.port}"

    def env(self) -> dict[str, str]:
        """The operator's settings for it (its URL for pods stays whatever the caller set)."""
        return {
            "KUBEFORGE_PROGRESS_PORT": str(self.port),
            "KUBEFORGE_PROGRESS_ADDRESS": self.address,
            "KUBEFORGE_PROGRESS_CERT_FILE": str(self.cert_file),
            "KUBEFORGE_PROGRESS_KEY_FILE": str(self.key_file),
            "KUBEFORGE_PROGRESS_CA_FILE": str(self.ca_file),
        }


def local_progress_tls(
    directory: Path, address: str = "127.0.0.1", service_dns: tuple[str, ...] = ()
) -> LocalProgressTLS:
    """Write a CA and a certificate for `address` (and 127.0.0.1, `service_dns`) under
    `directory`; the endpoint will listen on `address` (the real node: its bridge IP, which
    pods reach)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, name="kubeforge-progress-test-ca")
    ips = tuple(dict.fromkeys(("127.0.0.1", address)))
    crt, key = ca.issue(
        directory / "progress", "kubeforge-progress", dns=service_dns, ips=ips, server=True
    )
    return LocalProgressTLS(crt, key, ca.cert_path, free_port(), address)


def projected_token_source(pod: JSON) -> JSON | None:
    """The pod's projected serviceAccountToken source (audience, expirationSeconds), if any."""
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in src:
                return dict(src["serviceAccountToken"])
    return None


def mint_pod_token(
    client: KubeClient,
    pod: JSON,
    *,
    audience: str | None = None,
    seconds: int | None = None,
    service_account: str | None = None,
) -> str:
    """A token bound to `pod` (TokenRequest with boundObjectRef), as the kubelet mints for the
    pod's projected volume: its audience and lifetime unless overridden."""
    meta = pod["metadata"]
    src = projected_token_source(pod) or {}
    sa = service_account or (pod.get("spec") or {}).get("serviceAccountName") or "default"
    answer = client.post(
        f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience or src.get("audience") or AUDIENCE],
                "expirationSeconds": seconds or int(src.get("expirationSeconds") or 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        },
    )
    return str(answer["status"]["token"])


def loopback_url(pod_url: str, endpoint: str) -> str:
    """The pod's report URL (`https://SERVICE:PORT/v1/...`) with scheme, host and port replaced by
    `endpoint` (the operator process on 127.0.0.1: no ClusterIP is reachable from the host)."""
    path = pod_url.split("://", 1)[-1]
    path = path[path.index("/") :] if "/" in path else "/"
    return endpoint.rstrip("/") + path


def report_path(namespace: str, name: str) -> str:
    return f"/v1/namespaces/{namespace}/trainingjobs/{name}/progress"


def post_report(
    url: str, token: str | None, body: bytes | JSON, ca_file: str | Path, timeout: float = 10
) -> tuple[int, JSON]:
    """POST one report; (HTTP status, answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = {"message": raw[:200].decode(errors="replace")}
        return int(exc.code), answer if isinstance(answer, dict) else {}


def report_for_pod(client: KubeClient, operator: Any, pod: JSON, report: JSON) -> JSON:
    """Report `report` for `pod`'s TrainingJob as its trainer would (a token bound to the pod,
    POSTed to `operator`'s endpoint: an OperatorProcess with `progress_endpoint` and
    `progress_tls`); the answer. Raises AssertionError when refused."""
    meta = pod["metadata"]
    trainingjob = (meta.get("labels") or {})["kubeforge.io/trainingjob"]
    url = operator.progress_endpoint + report_path(meta["namespace"], trainingjob)
    code, answer = post_report(
        url, mint_pod_token(client, pod), report, operator.progress_tls.ca_file
    )
    if code != 200:
        raise AssertionError(f"progress report for {meta['name']} refused ({code}): {answer}")
    return answer
