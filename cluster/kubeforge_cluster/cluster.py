"""LocalCluster: etcd + kube-apiserver + controller-manager + scheduler + kwok on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import binaries
from .client import ApiError, KubeClient
from .clusterpki import write_control_plane_pki
from .components import apiserver_args, etcd_args, kcm_args, scheduler_args, scheduler_config
from .kubectlops import install_prometheus_crds, kubectl, wait_crds_established
from .kwoknodes import fake_node, kwok_args, write_kwok_stages
from .procs import (
    Proc,
    WaitPolicy,
    dump_log_dirs,
    proc_records,
    procs_from_records,
    spawn_logged,
    terminate,
    wait_while_running,
    write_state_file,
)

STATE_FILE = "state.json"

KCM_CONTROLLERS = (
    "job-controller,ttl-after-finished-controller,deployment-controller,replicaset-controller,"
    "horizontal-pod-autoscaler-controller,garbage-collector-controller,namespace-controller,"
    "serviceaccount-token-controller,serviceaccount-controller,"
    "root-ca-certificate-publisher-controller,pod-garbage-collector-controller,"
    "disruption-controller,endpointslice-controller,node-lifecycle-controller,"
    "statefulset-controller,daemonset-controller,cronjob-controller,resourcequota-controller"
)


# How many times start() picks fresh ports after losing a port to another process.
PORT_RACE_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_run_root() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")


def run_dir_for(name: str) -> Path:
    return default_run_root() / f"kubeforge-cluster-{name}"


class StartupError(RuntimeError):
    pass


# a component answering "not yet" (connection refused, a 5xx, half a JSON body) is no failure
_STARTUP_WAIT = WaitPolicy(
    StartupError, tail_lines=30, interval=0.05, transient=(OSError, ApiError, ValueError)
)


class LocalCluster:
    """A throwaway control plane. ``with LocalCluster() as c: ...`` or ``start()``/``stop()``.

    Pods on the fake (kwok) nodes become Running and Ready. Job-owned pods complete on their own
    only with ``auto_complete_jobs=True`` or when labelled ``kubeforge.io/kwok-auto-complete:
    "true"``; otherwise a test ends them with :class:`kubeforge_cluster.testing.PodDriver`.
    """

    local = True  # vs testing.ExternalCluster
    kcm_controllers = KCM_CONTROLLERS
    """The controller-manager's ``--controllers`` (a subclass adds what its nodes need)."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        name: str | None = None,
        bin_dir: Path | None = None,
        auto_complete_jobs: bool = False,
        cpu_nodes: int = 2,
        gpu_nodes: int = 1,
        gpus_per_node: int = 8,
        kwok_taint: bool = False,
        daemon: bool = False,
        kcm_qps: int = 500,
        kcm_burst: int = 1000,
        extra_apiserver_args: Sequence[str] = (),
        verbose: bool = True,
    ) -> None:
        self.name = name or f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.run_dir = Path(run_dir) if run_dir else run_dir_for(self.name)
        self.bin_dir = bin_dir
        self.auto_complete_jobs = auto_complete_jobs
        self.cpu_nodes = cpu_nodes
        self.gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self.kwok_taint = kwok_taint
        self.daemon = daemon
        self.kcm_qps = kcm_qps
        self.kcm_burst = kcm_burst
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.verbose = verbose
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.bins: dict[str, Path] = {}
        self._client: KubeClient | None = None
        self.startup_seconds: float | None = None
        self.node_names: list[str] = []
        self.gpu_node_names: list[str] = []

    # ---------------------------------------------------------------------------------------
    # paths

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            self._client = KubeClient(self.kubeconfig)
        return self._client

    def _say(self, msg: str) -> None:
        if self.verbose:
            print(f"[kubeforge-cluster] {msg}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------------------
    # lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        self.bins = binaries.require_binaries(binaries.CORE_BINARIES, self.bin_dir)
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            if self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.logs_dir.mkdir(parents=True)
            self.pki_dir.mkdir()
            try:
                self._start(t0)
                break
            except StartupError as exc:
                # free_port() finds a free port, the component binds it a moment later: another
                # process on the machine (a second cluster starting) may take it in between
                retry = "address already in use" in str(exc) and attempt < PORT_RACE_ATTEMPTS
                if not retry:
                    self._say("startup failed; component logs:\n" + self.dump_logs())
                    self.stop(remove=False)
                    raise
                self._say(f"a port was taken while starting ({exc}); retrying on fresh ports")
                self.stop()
            except BaseException:
                self._say("startup failed; component logs:\n" + self.dump_logs())
                self.stop(remove=False)
                raise
        self.startup_seconds = time.monotonic() - t0
        self._say(f"cluster ready in {self.startup_seconds:.1f}s (run dir {self.run_dir})")
        return self

    def _start(self, t0: float) -> None:
        for p in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok"):
            self.ports[p] = free_port()
        self._make_pki()
        self._write_state()
        self._start_etcd()
        # kube-apiserver retries etcd while it comes up: start both at once (saves ~0.6 s)
        self._start_apiserver()
        self._wait_etcd(timeout=30)
        t_etcd = time.monotonic() - t0
        self._wait_apiserver(timeout=60)
        self._say(
            f"etcd ready {t_etcd:.1f}s, kube-apiserver ready at {self.server} "
            f"{time.monotonic() - t0:.1f}s"
        )
        self._start_kcm()
        self._start_scheduler()
        self._start_kwok()
        self._create_nodes()
        insecure = ssl._create_unverified_context()
        for comp, port in (("kube-controller-manager", "kcm"), ("kube-scheduler", "scheduler")):
            self._wait(
                f"{comp} /healthz",
                lambda p=port: (
                    _http_get(f"https://127.0.0.1:{self.ports[p]}/healthz", insecure) == b"ok"
                ),
                comp,
            )
        self._wait("fake nodes Ready and schedulable", self._nodes_ready, "kwok", timeout=60)
        self._wait(
            "ServiceAccount default/default",
            lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
            "kube-controller-manager",
        )
        self._write_state()

    def stop(self, remove: bool = True) -> None:
        """Stop every component (newest first); remove the run dir unless ``remove=False``."""
        procs = self.procs or self._procs_from_state()
        for p in reversed(procs):
            terminate(p)
        self.procs = []
        if self._client is not None:
            self._client = None
        if remove and self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif (self.run_dir / STATE_FILE).exists():
            (self.run_dir / STATE_FILE).unlink()

    # --- outages (robustness tests) ------------------------------------------------------------

    def kill_component(self, name: str) -> None:
        """SIGKILL one component (`etcd`, `kube-apiserver`, ...): an outage, no clean shutdown."""
        for p in [p for p in self.procs if p.name == name]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            if p.popen is not None:
                p.popen.wait()
            self.procs.remove(p)
        self._write_state()

    def start_component(self, name: str, timeout: float = 60) -> None:
        """Start `etcd` or `kube-apiserver` again after `kill_component` (same ports, data and
        certificates) and wait until it serves."""
        if name == "etcd":
            self._start_etcd()
            self._wait_etcd(timeout=timeout)
        elif name == "kube-apiserver":
            self._start_apiserver()
            self._wait_apiserver(timeout=timeout)
        else:
            raise ValueError(f"cannot restart {name!r} (only etcd and kube-apiserver)")

    def _wait_etcd(self, timeout: float) -> None:
        self._wait(
            "etcd /health",
            lambda: (
                b'"health":"true"' in _http_get(f"http://127.0.0.1:{self.ports['etcd']}/health")
            ),
            "etcd",
            timeout=timeout,
        )

    def _wait_apiserver(self, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        self._wait(
            "kube-apiserver /readyz",
            lambda: _http_get(f"{self.server}/readyz", ctx) == b"ok",
            "kube-apiserver",
            timeout=timeout,
        )

    def running(self) -> bool:
        procs = self.procs or self._procs_from_state()
        return bool(procs) and all(p.alive() for p in procs)

    # ---------------------------------------------------------------------------------------
    # state file (lets `python -m kubeforge_cluster down` stop a cluster started elsewhere)

    def _write_state(self) -> None:
        st = {
            "name": self.name,
            "server": self.server if "apiserver" in self.ports else None,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "startup_seconds": self.startup_seconds,
            "procs": proc_records(self.procs),
        }
        write_state_file(self.run_dir / STATE_FILE, st)

    def _procs_from_state(self) -> list[Proc]:
        try:
            st = json.loads((self.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return []
        self.ports = st.get("ports", {})
        return procs_from_records(st.get("procs", []))

    @classmethod
    def attach(cls, run_dir: str | Path) -> LocalCluster:
        """A handle on a cluster started by another process (from its state file)."""
        c = cls(run_dir, verbose=False)
        c.procs = c._procs_from_state()
        return c

    # ---------------------------------------------------------------------------------------
    # components

    def _spawn(self, name: str, args: list[str]) -> Proc:
        p = spawn_logged(
            name, args, logs_dir=self.logs_dir, cwd=self.run_dir, die_with_parent=not self.daemon
        )
        self.procs.append(p)
        self._write_state()
        return p

    def _make_pki(self) -> None:
        self._ca = write_control_plane_pki(
            self.pki_dir, self.kubeconfig, self.server, self._apiserver_ips()
        )

    def _apiserver_ips(self) -> tuple[str, ...]:
        """The IP SANs of the API server's serving cert: where clients dial it (loopback) and
        the ``kubernetes`` Service's ClusterIP (in-cluster clients verify that name)."""
        return ("127.0.0.1", "10.96.0.1")

    def _start_etcd(self) -> None:
        self._spawn(
            "etcd",
            etcd_args(
                self.bins["etcd"],
                self.run_dir / "etcd",
                self.ports["etcd"],
                self.ports["etcd_peer"],
            ),
        )

    def _start_apiserver(self) -> None:
        self._spawn(
            "kube-apiserver",
            apiserver_args(
                self.bins["kube-apiserver"],
                self.pki_dir,
                self.ports["etcd"],
                self.ports["apiserver"],
                self.extra_apiserver_args,
            ),
        )

    def _start_kcm(self) -> None:
        self._spawn(
            "kube-controller-manager",
            kcm_args(
                self.bins["kube-controller-manager"],
                self.kubeconfig,
                self.pki_dir,
                self.ports["kcm"],
                self.kcm_controllers,
                self.kcm_qps,
                self.kcm_burst,
            ),
        )

    def _start_scheduler(self) -> None:
        cfg = self.run_dir / "scheduler-config.yaml"
        cfg.write_text(yaml.safe_dump(scheduler_config(self.kubeconfig)))
        self._spawn(
            "kube-scheduler",
            scheduler_args(
                self.bins["kube-scheduler"], cfg, self.kubeconfig, self.ports["scheduler"]
            ),
        )

    def _start_kwok(self) -> None:
        stages = write_kwok_stages(
            binaries.data_dir(self.bin_dir) / "kwok-stages",
            self.run_dir / "kwok-stages.yaml",
            self.auto_complete_jobs,
        )
        self._spawn(
            "kwok",
            kwok_args(self.bins["kwok"], self.kubeconfig, stages, self.ports["kwok"]),
        )

    def _create_nodes(self) -> None:
        self.node_names = [f"kwok-cpu-{i}" for i in range(self.cpu_nodes)]
        self.gpu_node_names = [f"kwok-gpu-{i}" for i in range(self.gpu_nodes)]
        for n in self.node_names:
            self.client.post("/api/v1/nodes", fake_node(n, 0, self.kwok_taint))
        for n in self.gpu_node_names:
            self.client.post("/api/v1/nodes", fake_node(n, self.gpus_per_node, self.kwok_taint))
        self.node_names += self.gpu_node_names

    def _nodes_ready(self) -> bool:
        items = self.client.get("/api/v1/nodes")["items"]
        ready = 0
        for n in items:
            conds = {
                c["type"]: c["status"] for c in (n.get("status") or {}).get("conditions") or []
            }
            taints = {t["key"] for t in n.get("spec", {}).get("taints") or []}
            if conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
                ready += 1
        return ready >= len(self.node_names)

    def _exists(self, path: str) -> bool:
        try:
            self.client.get(path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def _wait(self, what: str, fn: Any, component: str, timeout: float = 30) -> None:
        """Wait for ``fn()`` while every component runs (kwok, KEDA and Kueue wait here too)."""
        wait_while_running(
            what, fn, self.procs, self.logs_dir / f"{component}.log", timeout, _STARTUP_WAIT
        )

    # ---------------------------------------------------------------------------------------
    # using it

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return kubectl(
            *args,
            kubeconfig=self.kubeconfig,
            input=input,
            check=check,
            timeout=timeout,
            bin_dir=self.bin_dir,
        )

    def dump_logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every component's log, newest component last."""
        return dump_log_dirs([self.logs_dir], lines)

    def apply_files(self, files: Iterable[Path]) -> None:
        """Create (or replace) the objects in ``files`` via server-side apply."""
        args = ["apply", "--server-side", "--force-conflicts"]
        for f in files:
            args += ["-f", str(f)]
        self.kubectl(*args, timeout=120)

    def wait_crds_established(self, names: Iterable[str], timeout: float = 30) -> None:
        wait_crds_established(self.client, names, timeout)

    def install_prometheus_crds(self) -> list[str]:
        """Install the Prometheus Operator CRDs (ServiceMonitor, PrometheusRule, ...)."""
        return install_prometheus_crds(self.kubeconfig, bin_dir=self.bin_dir)

    def start_kueue(self, **kw: Any) -> Any:
        """Run the real Kueue controller against this cluster; see :mod:`kubeforge_cluster.kueue`."""
        from .kueue import Kueue

        k = Kueue(self, **kw)
        k.start()
        return k


def _http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2) -> bytes:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())
