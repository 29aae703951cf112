"""Shared by the shipping e2e tests: a loopback registry the real node trusts, helm through the
node's kubeconfig, and how the registry's access log shows that containerd pulled an image."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubeforge_cluster import binaries, shipbins
from kubeforge_cluster.realnode import RealNode
from kubeforge_cluster.registry import LocalRegistry, trust_on_node
from realpods_support import skip_reason

RELEASE_NS = "kubeforge-system"
#: containerd's user agent in the registry's access log: the node resolved the image there (a
#: HEAD when its content store already holds that digest from an earlier run, else a GET)
CONTAINERD_PULL = re.compile(
    r'"(?:GET|HEAD) /v2/kubeforge/(?P<repo>[a-z-]+)/manifests/[^ ]+ HTTP[^"]*" 200 .*"containerd/'
)


def skip_module_unless_shipping_runs_here() -> None:
    """Skip the calling module, with the reason, where real pods cannot run (that reason first)
    or the shipping tools are not built: said before a real node is started for nothing."""
    if (no_real_pods := skip_reason()) is not None:
        pytest.skip(no_real_pods, allow_module_level=True)
    try:
        shipbins.require("registry", "crane", "buildkitd", "buildctl")
    except shipbins.MissingShipBinaries as e:
        pytest.skip(str(e), allow_module_level=True)


@contextmanager
def trusted_registry(
    real_node: RealNode, run_dir: Path, storage: Path | None = None
) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1 (``storage``: a folder of its own, or the kept default) whose
    host the node's containerd pulls from over plain HTTP (``hosts.toml``)."""
    reg = LocalRegistry(run_dir, storage=storage).start()
    try:
        trust_on_node(real_node.registry_hosts_dir, reg.host)
        yield reg
    finally:
        reg.stop()


def pulled_by_node(reg: LocalRegistry) -> set[str]:
    """The kubeforge/<repo> names whose manifests containerd fetched from ``reg``."""
    return {m["repo"] for m in CONTAINERD_PULL.finditer(reg.log_path.read_text())}


def helm(real_node: RealNode, *args: str, timeout: float = 300) -> str:
    exe = binaries.find_binary("helm")
    if exe is None:
        pytest.skip("helm not built (make cluster-bins)")
    r = subprocess.run(
        [str(exe), f"--kubeconfig={real_node.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"helm {' '.join(args)}: {r.stderr}{r.stdout}"
    return r.stdout + r.stderr


def helm_install_from_registry(
    real_node: RealNode, chart_url: str, version: str, registry: str, *sets: str
) -> None:
    """``helm install oci://…`` as docs/install.md says, every image from ``registry``."""
    args = [
        "install",
        "kubeforge",
        chart_url,
        "--version",
        version,
        "--plain-http",
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        f"image.registry={registry}",
        "--set",
        "replicas=1",
        "--set",
        "leaderElection.enabled=false",
    ]
    for s in sets:
        args += ["--set", s]
    helm(real_node, *args, "--wait", "--timeout", "240s")
