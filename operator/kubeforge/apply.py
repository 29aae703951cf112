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

import logging

from kubeforge._kube_async import AsyncKube, async_kube
from kubeforge._kube_client import (
    APPLY,
    IDEMPOTENT,
    MAX_ATTEMPTS,
    MAX_WAIT,
    MERGE,
    Kube,
    retry_delay,
)
from kubeforge._kube_config import load_config, make_kube
from kubeforge._kube_errors import ApiConnectionError, ApiError
from kubeforge._kube_paths import manifest_hash, merge_patch, plural, resource_path

# The one import point of the API client: its parts live in the private _kube_* modules
# (_kube_client: Kube and its retries; _kube_async: AsyncKube; _kube_config: make_kube;
# _kube_errors; _kube_paths: paths, hashes, merge patches).
__all__ = [
    "APPLY",
    "IDEMPOTENT",
    "MAX_ATTEMPTS",
    "MAX_WAIT",
    "MERGE",
    "ApiConnectionError",
    "ApiError",
    "AsyncKube",
    "Kube",
    "async_kube",
    "load_config",
    "make_kube",
    "manifest_hash",
    "merge_patch",
    "plural",
    "resource_path",
    "retry_delay",
]

log = logging.getLogger("kubeforge.apply")
