"""The real KEDA (operator + metrics API server) for the local control plane: built once from its
Go module into a cache outside the repo, and run on the host.

    python -m kubeforge_cluster.keda build     # cold: ~710 CPU-s (~6 min on 2 idle cores); warm: nothing
    python -m kubeforge_cluster.keda status

Version: v2.21.0. v2.21.1's go.mod needs go >= 1.27.4 and the one approved newer toolchain is
go1.27.3, so v2.21.1 cannot be built here; v2.21.0 needs go 1.26.0 (the machine's Go).
KEDA's go.mod carries a replace, so `go install ...@version` refuses it: the wrapper module
`cluster/go-keda` repeats the replace and names both main packages as tools.

Running it (``Keda(cluster).start()``): the metrics API server is an aggregated API (APIService
`v1beta1.external.metrics.k8s.io`). The API server reaches it through a Service's endpoint
(`--enable-aggregator-routing=true`, set by every LocalCluster with the front-proxy flags), and
Endpoints/EndpointSlices refuse loopback addresses (127.0.0.0/8). So the metrics server listens
on an address of its own added to the `lo` device (``LocalAddress``: a /32 in 10.89.0.0/16),
whose route is the `local` table's (delivered through `lo`, nothing leaves the machine; checked by reading
`ip route get`, never by sending a packet). The Service has no selector; its Endpoints and
EndpointSlice name that address. Everything else binds 127.0.0.1, except the metrics server's
own Prometheus listener (`--port`: KEDA has no flag for its address; a free port, nothing
connects to it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import binaries

if TYPE_CHECKING:
    from .cluster import LocalCluster
    from .procs import Proc

KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
GO_MODULE_DIR = Path(__file__).resolve().parent.parent / "go-keda"
BINARIES = {"keda-operator": "operator", "keda-adapter": "adapter"}
"""Our name → KEDA's main package under cmd/ (and what `go build -o DIR/` names it)."""
NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"


def bin_dir() -> Path:
    """``${KUBEFORGE_KEDA_BIN_DIR:-<the control plane's cache>/../keda-<version>}``."""
    env = os.environ.get("KUBEFORGE_KEDA_BIN_DIR")
    if env:
        return Path(env).expanduser()
    return binaries.default_bin_dir().parent / f"keda-{KEDA_VERSION}"


def find(name: str, d: Path | None = None) -> Path | None:
    return binaries.find_binary(name, d or bin_dir())


CRDS = ("keda.sh_scaledobjects.yaml", "eventing.keda.sh_cloudeventsources.yaml")
"""Two of the CRDs copied (config/crd/bases: the operator also watches the eventing ones)."""


def _built(d: Path) -> bool:
    m = binaries._read_manifest(d)
    return m.get("keda") == KEDA_VERSION and all(binaries._is_exe(d / n) for n in BINARIES)


def _crds_ok(d: Path) -> bool:
    return all((d / "crds" / f).is_file() for f in CRDS)


def _copy_crds(d: Path) -> None:
    src = binaries._mod_dir(f"{KEDA_MODULE}@{KEDA_VERSION}") / "config" / "crd" / "bases"
    binaries._copy_tree_files(src, d / "crds", "*.yaml")


def status(d: Path | None = None) -> dict[str, str]:
    d = d or bin_dir()
    out = {}
    for n in BINARIES:
        p = find(n, d)
        out[n] = "missing" if p is None else ("ok" if p.parent != d or _built(d) else "stale")
    out["crds"] = "ok" if _crds_ok(d) else "missing"
    return out


def build(force: bool = False, d: Path | None = None) -> Path:
    """Build keda-operator and keda-adapter into the cache (nothing when already there)."""
    d = d or bin_dir()
    t0 = time.monotonic()
    if _built(d) and _crds_ok(d) and not force:
        binaries._log(f"keda {KEDA_VERSION}: present in {d}, nothing to do")
        return d
    users = [binaries.find_binary(n, d) for n in BINARIES]
    if not force and all(p is not None and p.parent != d for p in users):
        binaries._log(f"keda: using {', '.join(map(str, users))} (user-provided; not built)")
        if not _crds_ok(d):
            d.mkdir(parents=True, exist_ok=True)
            _copy_crds(d)
        return d
    with binaries._locked(d):
        if _built(d) and not force:  # built (by another run meanwhile): only the CRDs
            if not _crds_ok(d):
                _copy_crds(d)
            return d
        go = binaries._go()
        binaries._log(
            f"building KEDA {KEDA_VERSION} (operator + metrics API server) into {d}: ONCE per "
            "version (cold ~710 CPU-s: ~6 min on 2 idle cores, 21 min measured on a busy machine); "
            "later runs reuse it"
        )
        out = d / ".build"
        out.mkdir(parents=True, exist_ok=True)
        ldflags = (
            f"-s -w -X={KEDA_MODULE}/version.Version={KEDA_VERSION} "
            f"-X={KEDA_MODULE}/version.GitCommit={KEDA_VERSION}"
        )
        binaries._run_with_progress(
            [
                "nice", "-n", "19", go, "build", "-v", "-ldflags", ldflags, "-o", str(out) + "/",
                *(f"{KEDA_MODULE}/cmd/{pkg}" for pkg in BINARIES.values()),
            ],
            GO_MODULE_DIR,
            binaries._go_env(),
            "go build (keda)",
        )
        for name, pkg in BINARIES.items():
            (out / pkg).replace(d / name)
        _copy_crds(d)
        binaries._write_manifest(d, {"keda": KEDA_VERSION})
        binaries._log(f"keda: done in {binaries._fmt(time.monotonic() - t0)}")
    return d


# --- an on-machine, non-loopback address for the aggregated API --------------------------------


class LocalAddress:
    """A /32 of this session's own on the loopback interface (root), labelled `lo:kfk<pid>`: an
    address of this machine that Endpoints accept (they refuse 127.0.0.0/8, not the device).
    Unique per process (address from the pid); removed by `remove`. This kernel has no dummy
    interfaces (no modules), and the pod network's bridge exists only while a real node runs.
    """

    PREFIX = "10.89"
    DEVICE = "lo"

    def __init__(self) -> None:
        pid = os.getpid()
        self.label = f"lo:kfk{pid % 1_000_000}"
        self.ip = f"{self.PREFIX}.{(pid >> 8) & 0xFF}.{max(pid & 0xFF, 1)}"

    @staticmethod
    def unsupported_reason() -> str | None:
        if os.geteuid() != 0:
            return "needs root (an address on lo for the metrics API server's endpoint)"
        if shutil.which("ip") is None:
            return "needs the `ip` command (iproute2)"
        return None

    def create(self) -> LocalAddress:
        reason = self.unsupported_reason()
        if reason:
            raise PermissionError(f"KEDA's metrics API server {reason}")
        self.remove()  # our own leftover (same pid, an earlier crashed run)
        taken = _ip("-o", "-4", "addr", "show", "to", f"{self.ip}/32")
        if taken.strip():
            raise RuntimeError(f"{self.ip} is already an address of this machine: {taken}")
        _ip("addr", "add", f"{self.ip}/32", "dev", self.DEVICE, "label", self.label)
        self.check_local()
        return self

    def check_local(self) -> None:
        """The route to the address is the local table's, through lo (read, nothing sent)."""
        route = _ip("route", "get", self.ip)
        if not (route.startswith("local ") and " dev lo " in route):
            self.remove()
            raise RuntimeError(f"{self.ip} does not route locally: {route!r}")

    def remove(self) -> None:
        mine = _ip("-o", "-4", "addr", "show", "dev", self.DEVICE, "label", self.label)
        if mine.strip():
            _ip("addr", "del", f"{self.ip}/32", "dev", self.DEVICE, "label", self.label)


def _ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, ["ip", *args], r.stdout, r.stderr)
    return r.stdout.strip()


# --- running it ---------------------------------------------------------------------------------


class Keda:
    """KEDA's operator and metrics API server as host processes against a LocalCluster."""

    def __init__(self, cluster: LocalCluster, *, d: Path | None = None) -> None:
        self.cluster = cluster
        self.bin_dir = d or bin_dir()
        self.dir = cluster.run_dir / "keda"
        self.ports: dict[str, int] = {}
        self.procs: list[Proc] = []
        self.address: LocalAddress | None = None

    def start(self, timeout: float = 120) -> Keda:
        from . import pki
        from .cluster import StartupError, free_port
        from .kubectlops import crd_name

        t0 = time.monotonic()
        c = self.cluster
        exes = {n: find(n, self.bin_dir) for n in BINARIES}
        missing = [n for n, p in exes.items() if p is None]
        if missing:
            raise binaries.MissingBinaries(missing, self.bin_dir)
        for p in ("grpc", "metrics", "health", "secure", "adapter_metrics"):
            self.ports[p] = free_port()
        self.address = LocalAddress().create()
        try:
            certs = self.dir / "certs"
            certs.mkdir(parents=True, exist_ok=True)
            ca = pki.CA(key=c._ca.key, cert=c._ca.cert, cert_path=c.pki_dir / "ca.crt")
            # one cert for the gRPC metrics service (mutual TLS between the two processes, files
            # ca.crt/tls.crt/tls.key in --cert-dir) and the metrics server's HTTPS
            ca.issue(
                certs / "tls",
                "keda",
                dns=(
                    f"keda-operator.{NAMESPACE}.svc",
                    f"{METRICS_SERVICE}.{NAMESPACE}.svc",
                    "localhost",
                ),
                ips=("127.0.0.1", self.address.ip),
                server=True,
                client=True,
            )
            shutil.copyfile(c.pki_dir / "ca.crt", certs / "ca.crt")
            (self.dir / "no-custom-ca").mkdir(exist_ok=True)

            crds = sorted((self.bin_dir / "crds").glob("*.yaml"))
            c.apply_files(crds)
            c.wait_crds_established([crd_name(f) for f in crds], timeout=60)
            if not c._exists(f"/api/v1/namespaces/{NAMESPACE}"):
                c.client.post(
                    "/api/v1/namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                )
            env = {
                **os.environ,
                "KUBECONFIG": str(c.kubeconfig),
                "WATCH_NAMESPACE": "",
                "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
                "POD_NAMESPACE": NAMESPACE,
                "POD_NAME": "keda-operator-local",
            }
            self.procs.append(self._spawn("keda-operator", [
                str(exes["keda-operator"]),
                f"--metrics-bind-address=127.0.0.1:{self.ports['metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{self.ports['health']}",
                f"--metrics-service-bind-address=127.0.0.1:{self.ports['grpc']}",
                f"--cert-dir={certs}",
                f"--ca-dir={self.dir / 'no-custom-ca'}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                "--leader-elect=false",
                "--zap-log-level=info",
            ], env))
            c._wait(
                "keda-operator /readyz",
                lambda: _get(f"http://127.0.0.1:{self.ports['health']}/readyz") == b"ok",
                "keda-operator",
                timeout=timeout,
            )
            self.procs.append(self._spawn("keda-adapter", [
                str(exes["keda-adapter"]),
                f"--secure-port={self.ports['secure']}",
                f"--bind-address={self.address.ip}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--authentication-kubeconfig={c.kubeconfig}",
                f"--authorization-kubeconfig={c.kubeconfig}",
                f"--lister-kubeconfig={c.kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{self.ports['grpc']}",
                f"--port={self.ports['adapter_metrics']}",
                "--zap-log-level=info",
            ], env))
            self._register_apiservice(ca.pem)
            c._wait(
                f"APIService {APISERVICE} Available",
                self._available,
                "keda-adapter",
                timeout=timeout,
            )
        except BaseException:
            self.stop()
            raise
        if not all(p.alive() for p in self.procs):
            raise StartupError("a KEDA process exited during startup")
        c._say(f"keda ready in {time.monotonic() - t0:.1f}s (metrics API on {self.address.ip})")
        return self

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        """Like LocalCluster._spawn, with KEDA's environment (its settings are env vars)."""
        from .procs import spawn_logged

        c = self.cluster
        p = spawn_logged(name, args, logs_dir=c.logs_dir, cwd=self.dir, env=env)
        c.procs.append(p)
        return p

    def _register_apiservice(self, ca_pem: bytes) -> None:
        assert self.address is not None
        client = self.cluster.client
        ns, port = NAMESPACE, self.ports["secure"]
        objs: list[tuple[str, dict[str, Any]]] = [
            (f"/api/v1/namespaces/{ns}/services", {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": METRICS_SERVICE, "namespace": ns},
                # no selector: the endpoints below are written by hand (a host process, no pod)
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
            }),
            (f"/api/v1/namespaces/{ns}/endpoints", {
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": METRICS_SERVICE, "namespace": ns},
                "subsets": [{"addresses": [{"ip": self.address.ip}],
                             "ports": [{"name": "https", "port": port}]}],
            }),
            (f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": METRICS_SERVICE, "namespace": ns,
                             "labels": {"kubernetes.io/service-name": METRICS_SERVICE,
                                        "endpointslice.kubernetes.io/managed-by": "kubeforge"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.address.ip],
                               "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
            ("/apis/apiregistration.k8s.io/v1/apiservices", {
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": APISERVICE},
                "spec": {
                    "service": {"name": METRICS_SERVICE, "namespace": ns, "port": 443},
                    "group": "external.metrics.k8s.io", "version": "v1beta1",
                    "caBundle": base64.b64encode(ca_pem).decode(),
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                },
            }),
        ]
        for collection, obj in objs:
            path = f"{collection}/{obj['metadata']['name']}"
            with contextlib.suppress(Exception):
                client.delete(path)
            for _ in range(50):  # a delete may still be finishing
                try:
                    client.post(collection, obj)
                    break
                except Exception as e:  # 409 while the old object goes
                    if "409" not in str(e) and "AlreadyExists" not in str(e):
                        raise
                    time.sleep(0.1)

    def _available(self) -> bool:
        try:
            svc = self.cluster.client.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
        except Exception:
            return False
        for cond in (svc.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Available":
                return bool(cond.get("status") == "True")
        return False

    def stop(self) -> None:
        from .procs import terminate

        client = self.cluster.client
        with contextlib.suppress(Exception):
            client.delete(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
        for p in reversed(self.procs):
            terminate(p)
            if p in self.cluster.procs:
                self.cluster.procs.remove(p)
        self.procs = []
        if self.address is not None:
            self.address.remove()
            self.address = None


def _get(url: str) -> bytes | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubeforge_cluster.keda", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["build", "status"])
    ap.add_argument("--force", action="store_true", help="build: rebuild")
    a = ap.parse_args(argv)
    if a.command == "build":
        build(force=a.force)
    for k, v in status().items():
        print(f"  {k:16} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
