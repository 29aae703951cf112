"""What a training pod needs to report progress (pure): the projected token, the URL, the CA.

- a projected ServiceAccount token for kubeforge's audience only (the API server refuses it; the
  endpoint refuses every other token), bound to the pod and short-lived (the kubelet renews it),
  at `TOKEN_DIR/token`;
- `KUBEFORGE_PROGRESS_URL`: this TrainingJob's report URL; `KUBEFORGE_PROGRESS_TOKEN_FILE`;
  `KUBEFORGE_PROGRESS_CA`: the PEM of the CA that signed the endpoint's certificate.
The pod's own ServiceAccount token is not mounted (`automountServiceAccountToken: false`): the
trainer talks to nobody but the endpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeforge.settings import Settings

JSON = dict[str, Any]

TOKEN_VOLUME = "kubeforge-progress-token"
TOKEN_DIR = "/var/run/secrets/kubeforge.io/progress"
TOKEN_PATH = "token"


def ca_pem(path: str) -> str:
    """The CA file's content (empty when unset or unreadable); read again when the file changes
    (cert-manager or a Helm upgrade renews it in place)."""
    if not path:
        return ""
    try:
        return _read_pem(path, Path(path).stat().st_mtime_ns)
    except OSError:
        return ""


@functools.lru_cache(maxsize=4)
def _read_pem(path: str, mtime_ns: int) -> str:
    return Path(path).read_text(encoding="ascii").strip() + "\n"


def report_url(settings: Settings, namespace: str, name: str) -> str:
    base = settings.progress_url.rstrip("/")
    return f"{base}/v1/namespaces/{namespace}/trainingjobs/{name}/progress"


@dataclass
class ProgressPodParts:
    env: list[JSON] = field(default_factory=list)
    volumes: list[JSON] = field(default_factory=list)
    volume_mounts: list[JSON] = field(default_factory=list)


def progress_pod_parts(settings: Settings, namespace: str, name: str) -> ProgressPodParts:
    """The env, volume and mount of the progress channel (nothing when no URL is configured)."""
    if not settings.progress_url:
        return ProgressPodParts()
    env: list[JSON] = [
        {"name": "KUBEFORGE_PROGRESS_URL", "value": report_url(settings, namespace, name)},
        {"name": "KUBEFORGE_PROGRESS_TOKEN_FILE", "value": f"{TOKEN_DIR}/{TOKEN_PATH}"},
    ]
    ca = ca_pem(settings.progress_ca_file)
    if ca:
        env.append({"name": "KUBEFORGE_PROGRESS_CA", "value": ca})
    volume = {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": settings.progress_audience,
                        "expirationSeconds": settings.progress_token_seconds,
                        "path": TOKEN_PATH,
                    }
                }
            ]
        },
    }
    mount = {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}
    return ProgressPodParts(env=env, volumes=[volume], volume_mounts=[mount])
