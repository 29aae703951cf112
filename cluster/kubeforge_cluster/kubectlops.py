"""Running the real kubectl, and installing CRDs with it and waiting until they are Established."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from . import binaries
from .client import KubeClient


def kubectl(
    *args: str,
    kubeconfig: str | Path,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
    bin_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl; raise with its stderr on failure when ``check``."""
    exe = binaries.find_binary("kubectl", bin_dir) or shutil.which("kubectl")
    if exe is None:
        raise binaries.MissingBinaries(["kubectl"], bin_dir or binaries.default_bin_dir())
    r = subprocess.run(
        [str(exe), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise KubectlError(r.returncode, r.args, r.stdout, r.stderr)
    return r


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message carries kubectl's own words."""

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or "").strip()
        return f"{super().__str__()}: {said[-2000:]}" if said else super().__str__()


def wait_crds_established(client: KubeClient, names: Iterable[str], timeout: float = 30) -> None:
    def established(name: str) -> bool:
        crd = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (crd.get("status") or {}).get("conditions") or []
        )

    for n in names:
        client.wait_for(f"CRD {n} Established", functools.partial(established, n), timeout=timeout)


def crd_name(path: Path) -> str:
    """metadata.name of a CRD file (regex: PyYAML cannot load some CRDs, e.g. a bare `- =`)."""
    m = re.search(r"^metadata:\n(?:[ ].*\n)*?  name: ['\"]?([^'\"\s]+)", path.read_text(), re.M)
    if not m:
        raise ValueError(f"no metadata.name in {path}")
    return m.group(1)


def install_prometheus_crds(kubeconfig: str | Path, bin_dir: Path | None = None) -> list[str]:
    d = binaries.data_dir(bin_dir) / "crds" / "prometheus-operator"
    files = sorted(d.glob("monitoring.coreos.com_*.yaml"))
    if not files:
        raise binaries.MissingBinaries(
            ["crds/prometheus-operator (run make cluster-bins)"],
            bin_dir or binaries.default_bin_dir(),
        )
    args = ["apply", "--server-side", "--force-conflicts"]
    for f in files:
        args += ["-f", str(f)]
    kubectl(*args, kubeconfig=kubeconfig, timeout=120, bin_dir=bin_dir)
    names = [crd_name(f) for f in files]
    wait_crds_established(KubeClient(kubeconfig), names)
    return names
