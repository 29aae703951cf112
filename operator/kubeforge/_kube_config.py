"""The client's configuration: credentials from a kubeconfig or the in-cluster service account,
the connection pool and urllib3's retries."""

from __future__ import annotations

import os
from typing import Any

import urllib3

from kubeforge._kube_client import IDEMPOTENT, Kube


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
