"""The node's identities: its components' certs and kubeconfigs (from the control plane's CA) and RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..client import ApiError, KubeClient
from . import net


def load_ca(d: Path) -> Any:
    """The control plane's CA (written by LocalCluster) as a :class:`pki.CA` to issue from."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .. import pki

    key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    return pki.CA(key=key, cert=cert, cert_path=d / "ca.crt")  # type: ignore[arg-type]


def write_identities(run_dir: Path, cluster_pki_dir: Path, server: str, node_name: str) -> None:
    """Client certs for the kubelet, kube-proxy and CoreDNS and the kubelet's serving cert, issued
    by the control plane's CA, and a kubeconfig each (``<run dir>/<who>.kubeconfig``)."""
    from .. import pki

    ca = load_ca(cluster_pki_dir)
    d = run_dir / "pki"
    kd = run_dir / "kubelet" / "pki"
    ca.issue(
        kd / "client",
        f"system:node:{node_name}",
        organizations=("system:nodes",),
        client=True,
    )
    ca.issue(
        kd / "kubelet",
        f"system:node:{node_name}",
        organizations=("system:nodes",),
        dns=(node_name,),
        ips=(net.NODE_IP,),
        server=True,
    )
    ca.issue(d / "kube-proxy", "system:kube-proxy", client=True)
    ca.issue(d / "coredns", "coredns", client=True)
    for who, crt in (
        ("kubelet", kd / "client"),
        ("kube-proxy", d / "kube-proxy"),
        ("coredns", d / "coredns"),
    ):
        pki.write_kubeconfig(
            run_dir / f"{who}.kubeconfig",
            server,
            ca.pem,
            crt.with_suffix(".crt"),
            crt.with_suffix(".key"),
            user=who,
        )


_RBAC = "/apis/rbac.authorization.k8s.io/v1"
NODE_RBAC: list[tuple[str, dict[str, Any]]] = [
    (
        f"{_RBAC}/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeforge:realnode:system-node"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "system:nodes",
                }
            ],
        },
    ),
    (
        f"{_RBAC}/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "kubeforge:realnode:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
    ),
    (
        f"{_RBAC}/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeforge:realnode:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kubeforge:realnode:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "coredns"}
            ],
        },
    ),
]
"""What the node's identities may do: the kubelets (group system:nodes) the built-in
``system:node`` role, CoreDNS (user coredns) list/watch what it serves."""


def grant_rbac(client: KubeClient) -> None:
    """Create :data:`NODE_RBAC` (those already there are left as they are)."""
    for path, obj in NODE_RBAC:
        try:
            client.post(path, obj)
        except ApiError as e:
            if e.status != 409:
                raise
