"""The control plane's certificates and admin kubeconfig, and the API server flags that name them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pki import CA

APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
"""DNS SANs of the API server's serving cert (every name the ``kubernetes`` Service has)."""

FRONT_PROXY_CLIENT = "front-proxy-client"
"""CN of the API server's front-proxy client cert (--requestheader-allowed-names)."""


def write_control_plane_pki(
    pki_dir: Path, kubeconfig: Path, server: str, apiserver_ips: tuple[str, ...]
) -> CA:
    """CA, API server serving cert, admin client cert, SA key pair and front-proxy CA + client
    cert in ``pki_dir``; the admin kubeconfig for ``server``. Returns the CA (to issue more)."""
    from . import pki  # needs `cryptography` (dev extra); imported only when starting

    d = pki_dir
    ca = pki.make_ca(d)
    ca.issue(
        d / "apiserver",
        "kube-apiserver",
        dns=APISERVER_DNS_NAMES,
        ips=apiserver_ips,
        server=True,
    )
    ca.issue(d / "admin", "kubeforge-admin", organizations=("system:masters",), client=True)
    pki.make_sa_keypair(d)
    # front proxy (aggregation layer): its own CA, as kubeadm does; harmless where no
    # APIService is registered, needed by KEDA's metrics API server (kubeforge_cluster.keda)
    fp = d / "front-proxy"
    fp.mkdir(exist_ok=True)
    pki.make_ca(fp, name="kubeforge-front-proxy-ca").issue(
        fp / "client", FRONT_PROXY_CLIENT, client=True
    )
    pki.write_kubeconfig(kubeconfig, server, ca.pem, d / "admin.crt", d / "admin.key")
    return ca


def front_proxy_args(pki_dir: Path) -> list[str]:
    """The aggregation layer's flags (an APIService's server trusts the requests the API
    server proxies with the front-proxy client cert). With aggregator routing the API
    server dials an APIService's endpoint IP, never its ClusterIP (the network rule)."""
    fp = pki_dir / "front-proxy"
    return [
        f"--requestheader-client-ca-file={fp / 'ca.crt'}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--proxy-client-cert-file={fp / 'client.crt'}",
        f"--proxy-client-key-file={fp / 'client.key'}",
        "--enable-aggregator-routing=true",
    ]
