"""Command lines (and the scheduler's config) of etcd and the kube-* components: computed only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .clusterpki import front_proxy_args


def etcd_args(exe: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    e, peer = client_port, peer_port
    return [
        str(exe),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls=http://127.0.0.1:{e}",
        f"--advertise-client-urls=http://127.0.0.1:{e}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=default=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
        "--quota-backend-bytes=8589934592",
    ]


def apiserver_args(
    exe: Path, pki_dir: Path, etcd_port: int, secure_port: int, extra: Sequence[str]
) -> list[str]:
    """On loopback; ``extra`` (last, so it wins) moves it elsewhere (the real node's)."""
    d = pki_dir
    return [
        str(exe),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
        f"--secure-port={secure_port}",
        f"--tls-cert-file={d / 'apiserver.crt'}",
        f"--tls-private-key-file={d / 'apiserver.key'}",
        f"--client-ca-file={d / 'ca.crt'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={d / 'sa.pub'}",
        f"--service-account-signing-key-file={d / 'sa.key'}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        *front_proxy_args(d),
        *extra,
    ]


def component_kubeconfig_flags(kubeconfig: Path) -> list[str]:
    k = str(kubeconfig)
    return [
        f"--kubeconfig={k}",
        f"--authentication-kubeconfig={k}",
        f"--authorization-kubeconfig={k}",
    ]


def kcm_args(
    exe: Path,
    kubeconfig: Path,
    pki_dir: Path,
    secure_port: int,
    controllers: str,
    qps: int,
    burst: int,
) -> list[str]:
    d = pki_dir
    return [
        str(exe),
        *component_kubeconfig_flags(kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        "--leader-elect=false",
        f"--service-account-private-key-file={d / 'sa.key'}",
        f"--root-ca-file={d / 'ca.crt'}",
        f"--controllers={controllers}",
        f"--kube-api-qps={qps}",
        f"--kube-api-burst={burst}",
        "--profiling=false",
    ]


def scheduler_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {
            "kubeconfig": str(kubeconfig),
            "qps": 500,
            "burst": 1000,
        },
        "leaderElection": {"leaderElect": False},
    }


def scheduler_args(exe: Path, config: Path, kubeconfig: Path, secure_port: int) -> list[str]:
    k = str(kubeconfig)
    return [
        str(exe),
        f"--config={config}",
        f"--authentication-kubeconfig={k}",
        f"--authorization-kubeconfig={k}",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
    ]
