"""The API server's serving cert and admin kubeconfig: the loopback control plane and the real
node's (bridge address) share one code path; only the extra IP SAN and the kubelet client
cert differ. PKI only: nothing is started."""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography import x509
from kubeforge_cluster.cluster import LocalCluster
from kubeforge_cluster.clusterpki import APISERVER_DNS_NAMES
from kubeforge_cluster.realnode.controlplane import NodeControlPlane


def _sans(crt: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


def _kubeconfig_server(c: LocalCluster) -> str:
    return str(yaml.safe_load(c.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


def _made(c: LocalCluster) -> LocalCluster:
    c.pki_dir.mkdir(parents=True)
    c.ports["apiserver"] = 6443
    c._make_pki()
    return c


def test_loopback_control_plane_cert_and_kubeconfig(tmp_path: Path) -> None:
    c = _made(LocalCluster(tmp_path / "run", verbose=False))
    dns, ips = _sans(c.pki_dir / "apiserver.crt")
    assert dns == set(APISERVER_DNS_NAMES)
    assert ips == {"127.0.0.1", "10.96.0.1"}
    assert _kubeconfig_server(c) == "https://127.0.0.1:6443"
    assert not (c.pki_dir / "kubelet-client.crt").exists()


def test_real_node_control_plane_adds_its_bind_address_and_kubelet_client(tmp_path: Path) -> None:
    c = _made(NodeControlPlane(tmp_path / "run", bind_address="10.88.0.1", verbose=False))
    dns, ips = _sans(c.pki_dir / "apiserver.crt")
    assert dns == set(APISERVER_DNS_NAMES)
    assert ips == {"127.0.0.1", "10.96.0.1", "10.88.0.1"}
    assert _kubeconfig_server(c) == "https://10.88.0.1:6443"
    kubelet_client = x509.load_pem_x509_certificate((c.pki_dir / "kubelet-client.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((c.pki_dir / "ca.crt").read_bytes())
    assert kubelet_client.issuer == ca.subject
    orgs = kubelet_client.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:masters"]
    # the flags the API server gets name the files that exist
    for flag in ("--kubelet-client-certificate=", "--kubelet-client-key="):
        path = next(a for a in c.extra_apiserver_args if a.startswith(flag)).split("=", 1)[1]
        assert Path(path).is_file()
