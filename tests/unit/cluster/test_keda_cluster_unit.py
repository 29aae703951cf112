"""kubeforge_cluster pieces for KEDA that need no binaries and send nothing: the cache layout,
the front-proxy flags every local control plane gets, and the local address's naming."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509
from kubeforge_cluster import keda
from kubeforge_cluster.cluster import LocalCluster
from kubeforge_cluster.clusterpki import FRONT_PROXY_CLIENT, front_proxy_args


def test_front_proxy_pki_and_flags(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "run", verbose=False)
    c.pki_dir.mkdir(parents=True)
    c.ports["apiserver"] = 6443
    c._make_pki()
    fp = c.pki_dir / "front-proxy"
    cert = x509.load_pem_x509_certificate((fp / "client.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((fp / "ca.crt").read_bytes())
    assert cert.issuer == ca.subject
    main_ca = x509.load_pem_x509_certificate((c.pki_dir / "ca.crt").read_bytes())
    assert ca.subject != main_ca.subject  # a CA of its own, as kubeadm makes
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == FRONT_PROXY_CLIENT
    args = dict(a.removeprefix("--").split("=", 1) for a in front_proxy_args(c.pki_dir))
    assert args["requestheader-allowed-names"] == FRONT_PROXY_CLIENT
    assert args["enable-aggregator-routing"] == "true"
    for key in ("requestheader-client-ca-file", "proxy-client-cert-file", "proxy-client-key-file"):
        assert Path(args[key]).is_file(), key


def test_keda_cache_is_beside_the_control_planes_and_overridable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBEFORGE_KEDA_BIN_DIR", raising=False)
    monkeypatch.delenv("KUBEFORGE_BIN_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert keda.bin_dir() == tmp_path / "kubeforge" / "bin" / f"keda-{keda.KEDA_VERSION}"
    monkeypatch.setenv("KUBEFORGE_KEDA_BIN_DIR", str(tmp_path / "k"))
    assert keda.bin_dir() == tmp_path / "k"
    assert keda.status(tmp_path / "k")["keda-operator"] in ("missing", "ok")


def test_wrapper_module_pins_the_version_and_repeats_kedas_replace() -> None:
    gomod = (keda.GO_MODULE_DIR / "go.mod").read_text()
    assert f"require github.com/kedacore/keda/v2 {keda.KEDA_VERSION}" in gomod
    assert re.search(r"^go 1\.26\.0$", gomod, re.M)  # buildable by the machine's Go 1.26
    assert "replace github.com/nexus-rpc/nexus-proto-annotations" in gomod
    for pkg in keda.BINARIES.values():
        assert f"github.com/kedacore/keda/v2/cmd/{pkg}" in gomod


def test_local_address_is_per_process_and_outside_the_projects_ranges() -> None:
    a = keda.LocalAddress()
    assert len(a.label) <= 15 and a.label.startswith("lo:")  # IFNAMSIZ; labels name the device
    assert a.ip.startswith("10.89.") and not a.ip.endswith(".0")
    # not the pod network, the service range or loopback (Endpoints refuse loopback)
    assert not a.ip.startswith(("10.88.", "10.96.", "127."))


def test_user_provided_binaries_are_not_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine, cache = tmp_path / "mine", tmp_path / "cache"
    mine.mkdir()
    for name in keda.BINARIES:
        exe = mine / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (cache / "crds").mkdir(parents=True)
    for crd in keda.CRDS:
        (cache / "crds" / crd).write_text("{}")
    monkeypatch.setenv("KUBEFORGE_USE_BINARIES", str(mine))
    monkeypatch.setattr(keda.binaries, "_go", lambda: pytest.fail("must not build"))
    assert keda.build(d=cache) == cache
    assert keda.find("keda-operator", cache) == mine / "keda-operator"
