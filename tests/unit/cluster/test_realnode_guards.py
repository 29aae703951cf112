"""The real node's read-only guard checks on canned inputs (no root, no network): the Corefile
has no upstream, the CNI config gives pods no gateway, teardown comparison ignores counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubeforge_cluster.realnode import net
from kubeforge_cluster.realnode.components import EVICTION_DISK_FLOOR, kubelet_config
from kubeforge_cluster.realnode.host import (
    host_unsupported_reason,
    low_disk_reason,
    low_disk_reasons,
)

GOOD_COREFILE = """# cluster names only
cluster.local:53 96.10.in-addr.arpa:53 88.10.in-addr.arpa:53 {
    bind 10.88.0.1
    errors
    kubernetes cluster.local 96.10.in-addr.arpa 88.10.in-addr.arpa {
        pods insecure
    }
}
"""


def test_corefile_without_upstream_passes(tmp_path: Path) -> None:
    f = tmp_path / "Corefile"
    f.write_text(GOOD_COREFILE)
    assert net.check_corefile(f) == []


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (".:53 {\n    bind 10.88.0.1\n}\n", "root"),
        ("example.org:53 {\n    forward . 1.1.1.1\n}\n", "forward"),
        ("x.local:53 {\n    grpc . 10.0.0.1\n}\n", "grpc"),
    ],
)
def test_corefile_with_upstream_or_root_block_fails(
    tmp_path: Path, extra: str, problem: str
) -> None:
    f = tmp_path / "Corefile"
    f.write_text(GOOD_COREFILE + extra)
    assert any(problem in p for p in net.check_corefile(f))


def test_corefile_must_bind_the_bridge_address(tmp_path: Path) -> None:
    f = tmp_path / "Corefile"
    f.write_text(GOOD_COREFILE.replace("bind 10.88.0.1", "bind 0.0.0.0"))
    assert any("does not bind" in p for p in net.check_corefile(f))


def test_cni_conflist_gives_no_gateway_and_only_the_service_route(tmp_path: Path) -> None:
    f = tmp_path / "10-rpnet.conflist"
    conf = net.cni_conflist(tmp_path / "ipam")
    f.write_text(json.dumps(conf))
    assert net.check_cni(f) == []
    bridge = conf["plugins"][0]  # type: ignore[index]
    bridge["isGateway"] = True
    bridge["ipam"]["routes"].append({"dst": "0.0.0.0/0"})
    f.write_text(json.dumps(conf))
    problems = net.check_cni(f)
    assert any("isGateway" in p for p in problems)
    assert any("routes" in p for p in problems)


def test_rule_comparison_ignores_counters_and_accept_policies() -> None:
    a = "*filter\n:INPUT ACCEPT [10:200]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    b = "*filter\n:INPUT ACCEPT [99:999]\n:FORWARD ACCEPT [5:5]\nCOMMIT\n"
    assert net._norm_rules(a) == net._norm_rules(b) == set()
    left = "*filter\n:FORWARD DROP [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -j KUBE-FORWARD\n"
    assert net._norm_rules(left) == {
        "policy FORWARD DROP",
        "chain KUBE-FORWARD",
        "-A FORWARD -j KUBE-FORWARD",
    }


def test_realpods_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFORGE_REALPODS", "0")
    reason = host_unsupported_reason()
    assert reason is not None and "KUBEFORGE_REALPODS=0" in reason


def test_kubelet_evicts_only_below_absolute_disk_floors(tmp_path: Path) -> None:
    # 2% of CI's 252 GiB disk was 5.4 GB and evicted every pod with 5.1 GB free.
    cfg = kubelet_config(tmp_path, tmp_path / "containerd.sock", tmp_path / "ca.crt")
    hard = cfg["evictionHard"]
    assert hard["nodefs.available"] == hard["imagefs.available"] == EVICTION_DISK_FLOOR
    assert not any(v.endswith("%") for v in hard.values())
    assert cfg["imageGCHighThresholdPercent"] == 100  # preloaded images are never collected


def test_a_full_disk_is_named_at_start_not_discovered_as_evictions(tmp_path: Path) -> None:
    assert low_disk_reason(tmp_path, need=1) is None
    reason = low_disk_reason(tmp_path, need=1 << 60)
    assert reason is not None and "GiB free" in reason and str(tmp_path) in reason


def test_a_full_disk_is_named_once_per_filesystem(tmp_path: Path) -> None:
    runs, images = tmp_path / "runs", tmp_path / "images"
    runs.mkdir()
    images.mkdir()
    assert low_disk_reasons([runs, images], need=1) == []
    reasons = low_disk_reasons([runs, images], need=1 << 60)  # one filesystem: one reason
    assert len(reasons) == 1 and str(runs) in reasons[0]
