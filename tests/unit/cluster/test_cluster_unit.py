"""kubeforge_cluster pieces that need no binaries: PKI, kubeconfig, binary lookup, CLI state."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from kubeforge_cluster import binaries, pki
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.cluster import LocalCluster


def test_pki_certs_and_kubeconfig(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path)
    crt, key = ca.issue(
        tmp_path / "apiserver",
        "kube-apiserver",
        dns=("kubernetes.default.svc",),
        ips=("127.0.0.1", "10.96.0.1"),
        server=True,
    )
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.cert.subject
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    acrt, akey = ca.issue(
        tmp_path / "admin", "admin", organizations=("system:masters",), client=True
    )
    kc = pki.write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", ca.pem, acrt, akey)
    cfg = yaml.safe_load(kc.read_text())
    assert cfg["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    client = KubeClient(kc)  # loads the inline CA and client cert
    assert client.server == "https://127.0.0.1:6443"


def test_bin_dir_is_keyed_by_versions_and_overridable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBEFORGE_BIN_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = binaries.default_bin_dir()
    assert d.parent == tmp_path / "kubeforge" / "bin"
    assert binaries.K8S_VERSION in d.name and binaries.KWOK_VERSION in d.name
    monkeypatch.setenv("KUBEFORGE_BIN_DIR", str(tmp_path / "x"))
    assert binaries.default_bin_dir() == tmp_path / "x"


def test_user_binaries_win_over_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache, mine = tmp_path / "cache", tmp_path / "mine"
    for d in (cache, mine):
        d.mkdir()
    for d, names in ((cache, binaries.CORE_BINARIES), (mine, ("kube-apiserver", "etcd"))):
        for n in names:
            (d / n).write_text("#!/bin/sh\n")
            os.chmod(d / n, 0o755)
    (cache / "kwok-stages").mkdir()
    (cache / "kwok-stages" / "pod-ready.yaml").write_text("")
    monkeypatch.setenv("KUBEFORGE_BIN_DIR", str(cache))
    monkeypatch.delenv("KUBEFORGE_USE_BINARIES", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(mine))
    found = binaries.require_binaries()
    assert found["etcd"] == mine / "etcd" and found["kwok"] == cache / "kwok"
    (cache / "kwok").unlink()
    with pytest.raises(binaries.MissingBinaries, match="kwok"):
        binaries.require_binaries()


def test_state_file_round_trip_and_dead_pids(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "run", verbose=False)
    (tmp_path / "run").mkdir()
    c.ports = {"apiserver": 1234}
    c._write_state()
    other = LocalCluster.attach(tmp_path / "run")
    assert other.procs == [] and not other.running()
    other.stop()
    assert not (tmp_path / "run").exists()
