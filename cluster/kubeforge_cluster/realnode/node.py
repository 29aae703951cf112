"""RealNode: one real node (containerd 2 + runc + kubelet + kube-proxy + CoreDNS) beside a
LocalCluster whose API server binds 10.88.0.1, all on this machine, behind the network guards.

    from kubeforge_cluster.realnode import RealNode
    with RealNode() as node:                 # ~10 s warm; node.cluster is the LocalCluster
        node.cluster.kubectl("get", "nodes")

Start order (REALPODS.md §9.2): leftovers of a crashed run cleaned → preconditions (no rpbr0,
ip_forward 0) → iptables baseline saved → bridge + service route → containerd (+ images) →
control plane on 10.88.0.1 → identities + RBAC → kubelet → Ready → guards → kube-proxy (refuses
without guards) → pre-forward check → ip_forward=1 → CoreDNS. Stop runs the reverse and leaves
no process, mount, cgroup, bridge, route or rule; every component logs to ``<run dir>/logs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .. import binaries as cp_binaries
from ..client import ApiError
from ..cluster import LocalCluster, free_port
from ..procs import (
    Proc,
    WaitPolicy,
    dump_log_dirs,
    pid_alive,
    proc_records,
    procs_from_records,
    spawn_logged,
    tail_log,
    wait_while_running,
    write_state_file,
)
from . import bins, net, oci
from .controlplane import NodeControlPlane

NODE_NAME = "realnode-1"
OWNER_FILE = Path("/run/kubeforge/realnode.json")
STATE_FILE = "node-state.json"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
BUSYBOX_IMAGE = "local/busybox:1"
PAUSE_IMAGE = "local/pause:1"
REAL_NODE_LABEL = "kubeforge.io/real-node"
ARTIFACT_CLAIM = "kubeforge-artifacts"
"""The claim the real node's artifact store is reached by (operator ``pvc://kubeforge-artifacts/``)."""
ARTIFACT_LABEL = "kubeforge.io/artifact-store"


class NodeUnsupported(RuntimeError):
    """This machine cannot run a real node (not root, no cgroups/netns, binaries absent)."""


class NodeStartError(RuntimeError):
    pass


# what a node component says while it comes up (refused, 5xx, bad JSON, a crictl/ctr error)
_START_WAIT = WaitPolicy(
    NodeStartError,
    tail_lines=40,
    interval=0.1,
    transient=(OSError, ApiError, ValueError, RuntimeError),
)


def default_run_dir(name: str = "dev") -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"kubeforge-realnode-{name}"


def cache_root() -> Path:
    return cp_binaries.default_bin_dir().parent.parent


#: ``KUBEFORGE_REALPODS=0`` turns real nodes off on a machine that could run them.
REALPODS_ENV = "KUBEFORGE_REALPODS"


def host_unsupported_reason() -> str | None:
    """Why this host (kernel, privileges) cannot run a real node, whatever gets installed or
    built (None = it can). Reads state only."""
    if os.environ.get(REALPODS_ENV, "1") == "0":
        return f"{REALPODS_ENV}=0 (real pods turned off for this run)"
    if os.geteuid() != 0:
        return "needs root (containers, bridge, iptables)"
    if not Path("/proc/self/ns/net").exists():
        return "no network namespaces"
    cg = Path("/sys/fs/cgroup")
    if not ((cg / "memory").is_dir() or (cg / "cgroup.controllers").is_file()):
        return "no memory cgroup"
    if not Path("/proc/sys/net/bridge").exists() and not _can_bridge():
        return "no bridge netfilter support"
    return None


def unsupported_reason() -> str | None:
    """Why a real node cannot start here (None = it can). Reads state only."""
    host = host_unsupported_reason()
    if host:
        return host
    for tool in ("ip", "iptables", "ip6tables", "nsenter", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        bins.require()
        cp_binaries.require_binaries(cp_binaries.CORE_BINARIES)
    except (bins.MissingNodeBinaries, cp_binaries.MissingBinaries) as e:
        return str(e)
    return None


def _can_bridge() -> bool:
    return Path("/sys/module/bridge").exists()


class RealNode:
    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        name: str = "dev",
        bin_dir: Path | None = None,
        cp_bin_dir: Path | None = None,
        images: list[Path] | tuple[Path, ...] = (),
        kwok_nodes: int = 0,
        daemon: bool = False,
        verbose: bool = True,
    ) -> None:
        self.name = name
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(name)
        self.bin_dir = bin_dir
        self.cp_bin_dir = cp_bin_dir
        self.images = [Path(p) for p in images]
        self.kwok_nodes = kwok_nodes
        self.daemon = daemon
        self.verbose = verbose
        self.node_name = NODE_NAME
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.cluster: LocalCluster | None = None
        self.bins: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self.startup_seconds: float | None = None

    # --------------------------------------------------------------------------------------
    # paths

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def cp_dir(self) -> Path:
        return self.run_dir / "cp"

    @property
    def kubeconfig(self) -> Path:
        return self.cp_dir / "kubeconfig"

    @property
    def containerd_root(self) -> Path:
        """Image store, kept between runs (so big images are imported once)."""
        return Path(
            os.environ.get("KUBEFORGE_CONTAINERD_ROOT") or cache_root() / "node" / "containerd"
        )

    @property
    def containerd_sock(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def conflist(self) -> Path:
        return self.run_dir / "cni" / "net.d" / "10-rpnet.conflist"

    @property
    def corefile(self) -> Path:
        return self.run_dir / "coredns" / "Corefile"

    @property
    def crictl_config(self) -> Path:
        return self.run_dir / "crictl.yaml"

    @property
    def baseline_file(self) -> Path:
        return self.run_dir / "baseline.json"

    def _say(self, msg: str) -> None:
        if self.verbose:
            print(f"[kubeforge-realnode] {msg}", file=sys.stderr, flush=True)

    def _lap(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)
        self._say(f"{what}: {self.timings[what]:.1f}s")

    # --------------------------------------------------------------------------------------
    # lifecycle

    def attach(self) -> RealNode:
        """A handle on a node started by another process (its state file), for imports/checks."""
        self.bins = bins.require(self.bin_dir)
        self.procs = _procs_from_state(self.run_dir)
        if not self.procs:
            raise NodeStartError(f"no real node running in {self.run_dir}")
        if (self.cp_dir / "state.json").exists():
            self.cluster = NodeControlPlane.attach(self.cp_dir)
        return self

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RealNode:
        reason = unsupported_reason()
        if reason:
            raise NodeUnsupported(reason)
        t0 = time.monotonic()
        self.bins = bins.require(self.bin_dir)
        cleanup_leftovers(verbose=self.verbose, own_run_dir=self.run_dir)
        self._lap("leftovers-cleaned", t0)
        problems = net.check_preconditions()
        if problems:
            raise NodeStartError("preconditions failed: " + "; ".join(problems))
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        for d in (
            "logs",
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet/root",
            "kubelet/pod-logs",
            "kubelet/pki",
            "pki",
            "coredns",
        ):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        net.Baseline.capture().save(self.baseline_file)
        OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
        OWNER_FILE.write_text(json.dumps({"run_dir": str(self.run_dir), "pid": os.getpid()}))
        self._write_state()
        try:
            self._start(t0)
        except BaseException:
            self._say("start failed; component logs:\n" + self.dump_logs())
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        self._write_state()
        self._say(
            f"real node {self.node_name} Ready with services and DNS in "
            f"{self.startup_seconds:.1f}s; KUBECONFIG={self.kubeconfig}"
        )
        return self

    def _start(self, t0: float) -> None:
        net.bridge_up()
        self.conflist.write_text(
            json.dumps(net.cni_conflist(self.run_dir / "cni" / "ipam"), indent=1)
        )
        self._lap("bridge-up", t0)
        self._start_containerd()
        self._lap("containerd-up", t0)
        self.import_images([*self._base_images(), *self.images])
        self._lap("images-imported", t0)
        self.cluster = NodeControlPlane(
            self.cp_dir,
            name=f"realnode-{self.name}",
            bin_dir=self.cp_bin_dir,
            cpu_nodes=self.kwok_nodes,
            gpu_nodes=0,
            kwok_taint=True,
            daemon=self.daemon,
            verbose=self.verbose,
        )
        self.cluster.start()
        self._write_state()
        self._lap("control-plane-up", t0)
        self._identities()
        self._start_kubelet()
        self._wait("node Ready", self._node_ready, "kubelet", timeout=60)
        self._lap("node-ready", t0)
        net.guards_up()
        self._start_kube_proxy()
        self._wait(
            "kube-proxy healthz",
            lambda: self._http_ok(self.ports["kp_healthz"], "/healthz"),
            "kube-proxy",
            timeout=30,
        )
        self._wait(
            "kube-proxy synced kubernetes Service",
            lambda: net.service_rule_present("10.96.0.1"),
            "kube-proxy",
            timeout=30,
        )
        self._lap("kube-proxy-healthy", t0)
        self._write_corefile()
        problems = self.pre_forward_problems()
        if problems:
            raise net.GuardError("pre-forward check failed: " + "; ".join(problems))
        net.sysctl_set(net.SYSCTL_FORWARD, "1")
        self._lap("ip-forward-on", t0)
        self._start_coredns()
        self._wait(
            "CoreDNS ready",
            lambda: self._http_ok(self.ports["dns_ready"], "/ready"),
            "coredns",
            timeout=30,
        )
        self._lap("coredns-ready", t0)

    # --------------------------------------------------------------------------------------
    # processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        p = spawn_logged(
            name,
            args,
            logs_dir=self.logs_dir,
            cwd=self.run_dir,
            env=env,
            die_with_parent=not self.daemon,
        )
        self.procs.append(p)
        self._write_state()
        return p

    def _wait(self, what: str, fn: Any, component: str, timeout: float = 30) -> None:
        wait_while_running(
            what, fn, self.procs, self.logs_dir / f"{component}.log", timeout, _START_WAIT
        )

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _write_state(self) -> None:
        st = {
            "name": self.name,
            "node": self.node_name,
            "kubeconfig": str(self.kubeconfig),
            "containerd_sock": str(self.containerd_sock),
            "containerd_root": str(self.containerd_root),
            "ports": self.ports,
            "timings": self.timings,
            "startup_seconds": self.startup_seconds,
            "procs": proc_records(self.procs),
        }
        write_state_file(self.run_dir / STATE_FILE, st)

    # --------------------------------------------------------------------------------------
    # containerd and images

    @property
    def registry_hosts_dir(self) -> Path:
        """containerd's ``config_path``: ``<host:port>/hosts.toml`` per registry (read at pull)."""
        return self.run_dir / "containerd" / "certs.d"

    def _start_containerd(self) -> None:
        rd = self.run_dir
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        cfg = f"""version = 3
root = '{self.containerd_root}'
state = '{rd}/containerd/state'
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt']
[grpc]
  address = '{self.containerd_sock}'
[ttrpc]
  address = '{self.containerd_sock}.ttrpc'
[debug]
  address = ''
[metrics]
  address = ''
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  pinned_images = {{sandbox = '{oci.image_ref(PAUSE_IMAGE)}'}}
  [plugins.'io.containerd.cri.v1.images'.registry]
    # per-registry hosts.toml (kubeforge_cluster.registry.trust_on_node: loopback registries)
    config_path = '{self.registry_hosts_dir}'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{self.bins["runc"]}'
        Root = '{rd}/containerd/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{bins.CNI_BIN_DIR}']
    conf_dir = '{rd}/cni/net.d'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
"""
        (rd / "containerd" / "config.toml").write_text(cfg)
        self.crictl_config.write_text(
            f"runtime-endpoint: unix://{self.containerd_sock}\n"
            f"image-endpoint: unix://{self.containerd_sock}\ntimeout: 10\n"
        )
        env = dict(os.environ)
        env["PATH"] = f"{self.bins['containerd'].parent}:{env.get('PATH', '')}"
        self._spawn(
            "containerd",
            [str(self.bins["containerd"]), "--config", str(rd / "containerd" / "config.toml")],
            env=env,
        )
        self._wait("containerd socket", self.containerd_sock.exists, "containerd", timeout=30)

    def ctr(self, *args: str, input_file: Path | None = None, timeout: float = 600) -> str:
        cmd = [str(self.bins["ctr"]), "--address", str(self.containerd_sock), "-n", "k8s.io", *args]
        with open(input_file, "rb") if input_file else contextlib.nullcontext() as f:
            r = subprocess.run(cmd, stdin=f, capture_output=True, text=False, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode(errors="replace")

    def _base_images(self) -> list[Path]:
        return build_base_images(self.bins["pause"])

    def image_digests(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = f[2]
        return out

    def import_images(self, archives: list[Path]) -> list[str]:
        """Import OCI archives whose image (name + manifest digest) is not there yet."""
        have = self.image_digests()
        done = []
        for a in archives:
            name, digest = archive_ref(a)
            if have.get(name) == digest:
                continue
            t = time.monotonic()
            self.ctr("images", "import", "-", input_file=a)
            self._say(
                f"imported {name} ({a.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t:.1f}s"
            )
            done.append(name)
        return done

    # --------------------------------------------------------------------------------------
    # identities, kubelet, kube-proxy, CoreDNS

    def _identities(self) -> None:
        from .. import pki

        assert self.cluster is not None
        cpki = self.cluster.pki_dir
        ca = _load_ca(cpki)
        d = self.run_dir / "pki"
        kd = self.run_dir / "kubelet" / "pki"
        server = self.cluster.server
        ca.issue(
            kd / "client",
            f"system:node:{self.node_name}",
            organizations=("system:nodes",),
            client=True,
        )
        ca.issue(
            kd / "kubelet",
            f"system:node:{self.node_name}",
            organizations=("system:nodes",),
            dns=(self.node_name,),
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
                self.run_dir / f"{who}.kubeconfig",
                server,
                ca.pem,
                crt.with_suffix(".crt"),
                crt.with_suffix(".key"),
                user=who,
            )
        c = self.cluster.client
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        objs: list[tuple[str, dict[str, Any]]] = [
            (
                f"{rbac}/clusterrolebindings",
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
                f"{rbac}/clusterroles",
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
                f"{rbac}/clusterrolebindings",
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
        for path, obj in objs:
            try:
                c.post(path, obj)
            except ApiError as e:
                if e.status != 409:
                    raise

    def _start_kubelet(self) -> None:
        assert self.cluster is not None
        rd = self.run_dir
        kd = rd / "kubelet"
        (kd / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "address": net.NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(kd / "pki" / "kubelet.crt"),
            "tlsPrivateKeyFile": str(kd / "pki" / "kubelet.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki_dir / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [net.NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(kd / "resolv.conf"),
            "podLogsDir": str(kd / "pod-logs"),
            "rotateCertificates": False,
            "serializeImagePulls": False,
            "maxPods": 50,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "makeIPTablesUtilChains": False,
            "shutdownGracePeriod": "0s",
        }
        (kd / "config.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ)
        env["PATH"] = f"{self.bins['runc'].parent}:{env.get('PATH', '')}"
        self._spawn(
            "kubelet",
            [
                str(self.bins["kubelet"]),
                f"--config={kd / 'config.yaml'}",
                f"--kubeconfig={rd / 'kubelet.kubeconfig'}",
                f"--root-dir={kd / 'root'}",
                f"--cert-dir={kd / 'pki'}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={net.NODE_IP}",
                f"--node-labels={REAL_NODE_LABEL}=true",
                "--v=1",
            ],
            env=env,
        )

    def _node_ready(self) -> bool:
        assert self.cluster is not None
        try:
            n = self.cluster.client.get(f"/api/v1/nodes/{self.node_name}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
        taints = {t["key"] for t in n.get("spec", {}).get("taints") or []}
        return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

    def guard_problems(self) -> list[str]:
        """Items 5-7 of the checklist: kube-proxy starts only when this is empty."""
        return net.check_filter_forward() + net.check_mangle()

    def pre_forward_problems(self) -> list[str]:
        """Items 3-12 (+ ip_forward still 0): ip_forward=1 only when this is empty."""
        p = (
            net.check_bridge()
            + net.check_service_route()
            + self.guard_problems()
            + net.check_guard_counters()
            + net.check_cni(self.conflist)
            + net.check_corefile(self.corefile)
            + net.check_sysctls()
        )
        if net.sysctl_get(net.SYSCTL_FORWARD) != "0":
            p.append("ip_forward is already 1 before the pre-forward check")
        return p

    def _start_kube_proxy(self) -> None:
        problems = self.guard_problems()
        if problems:
            raise net.GuardError("refusing to start kube-proxy: " + "; ".join(problems))
        self.ports["kp_healthz"] = free_port()
        self.ports["kp_metrics"] = free_port()
        self._spawn(
            "kube-proxy",
            [
                str(self.bins["kube-proxy"]),
                "--proxy-mode=iptables",
                f"--kubeconfig={self.run_dir / 'kube-proxy.kubeconfig'}",
                f"--hostname-override={self.node_name}",
                f"--cluster-cidr={net.POD_CIDR}",
                "--bind-address=127.0.0.1",
                f"--healthz-bind-address=127.0.0.1:{self.ports['kp_healthz']}",
                f"--metrics-bind-address=127.0.0.1:{self.ports['kp_metrics']}",
                f"--nodeport-addresses={net.NODE_IP}/32",
                "--iptables-localhost-nodeports=false",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--v=2",
            ],
        )

    def _write_corefile(self) -> None:
        self.ports["dns_ready"] = free_port()
        kc = self.run_dir / "coredns.kubeconfig"
        self.corefile.write_text(
            "# cluster.local and the reverse zones only: no root block, no upstream\n"
            "cluster.local:53 96.10.in-addr.arpa:53 88.10.in-addr.arpa:53 {\n"
            f"    bind {net.NODE_IP}\n"
            "    errors\n"
            "    log\n"
            f"    ready 127.0.0.1:{self.ports['dns_ready']}\n"
            "    kubernetes cluster.local 96.10.in-addr.arpa 88.10.in-addr.arpa {\n"
            f"        kubeconfig {kc} kubeforge-local\n"
            "        pods insecure\n"
            "        ttl 5\n"
            "    }\n"
            "}\n"
        )

    def _start_coredns(self) -> None:
        self._spawn("coredns", [str(self.bins["coredns"]), "-conf", str(self.corefile)])

    # --------------------------------------------------------------------------------------
    # using it

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, **kw)

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "artifacts"

    def artifact_store(
        self, namespace: str, claim: str = ARTIFACT_CLAIM, fs_group: int = 1000
    ) -> str:
        """A shared artifact store for the pods of ``namespace``; returns its URI for the
        operator's ``artifactStore`` (``pvc://CLAIM/``).

        A ReadWriteMany hostPath PersistentVolume (``<run dir>/artifacts/<namespace>``, one
        directory per namespace so namespaces do not see each other's models) pre-bound to the
        claim ``CLAIM`` in ``namespace`` (PV ``claimRef`` + PVC ``volumeName``, empty storage
        class: no provisioner involved; the binder controller completes the binding). The
        kubelet does not apply ``fsGroup`` to hostPath volumes, so the directory is made the way
        fsGroup would: group ``fs_group`` (the pods' default fsGroup/runAsGroup), setgid,
        group-writable (2775), so the restricted-PSS trainer (uid 1000, gid 1000) writes there and
        new folders keep the group. Idempotent; a volume left ``Released`` by a deleted namespace
        is replaced (the files stay)."""
        host = self.artifacts_dir / namespace
        host.mkdir(parents=True, exist_ok=True)
        for d in (self.artifacts_dir, host):
            os.chown(d, 0, fs_group)
            d.chmod(0o2775)
        pv_name = f"{claim}-{namespace}"
        r = self.kubectl("get", "pv", pv_name, "-o", "json", check=False)
        if r.returncode == 0 and json.loads(r.stdout).get("status", {}).get("phase") in (
            "Released",
            "Failed",
        ):
            self.kubectl("delete", "pv", pv_name, "--wait=true", "--timeout=60s")
        size = "10Gi"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {ARTIFACT_LABEL: namespace}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(host), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [self.node_name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": size}},
            },
        }
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": [pv, pvc]}),
        )
        deadline = time.monotonic() + 60
        while True:
            r = self.kubectl(
                "-n", namespace, "get", "pvc", claim, "-o", "jsonpath={.status.phase}", check=False
            )
            if r.stdout.strip() == "Bound":
                return f"pvc://{claim}/"
            if time.monotonic() > deadline:
                raise NodeStartError(
                    f"claim {namespace}/{claim} not Bound after 60s ({r.stdout}{r.stderr}); "
                    + tail_log(self.cp_dir / "logs" / "kube-controller-manager.log", 20)
                )
            time.sleep(0.3)

    def crictl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            [str(self.bins["crictl"]), "--config", str(self.crictl_config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def pod_sandbox_pid(self, namespace: str, pod: str) -> int:
        ids = self.crictl(
            "pods", "-q", "--namespace", namespace, "--name", f"^{pod}$", "--state", "ready"
        ).split()
        if not ids:
            raise RuntimeError(f"no ready sandbox for {namespace}/{pod}")
        info = json.loads(self.crictl("inspectp", ids[0]))
        return int(info["info"]["pid"])

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def dump_logs(self, lines: int = 30) -> str:
        return dump_log_dirs([self.logs_dir, self.cp_dir / "logs"], lines)

    # --------------------------------------------------------------------------------------
    # stop

    def stop(self) -> dict[str, float]:
        """Tear everything down (REALPODS rp-down/kp-down order); return per-step timings."""
        return teardown(self.run_dir, self.cluster, verbose=self.verbose, procs=self.procs)


# ------------------------------------------------------------------------------------------
# teardown / crash recovery (module level: works from a state file alone)


def _procs_from_state(run_dir: Path) -> list[Proc]:
    try:
        st = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return procs_from_records(st.get("procs", []))


def _kill(p: Proc, sigterms: int = 1, grace: float = 10.0) -> None:
    if not p.alive():
        if p.popen is not None:
            p.popen.wait()
        return
    for i in range(sigterms):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + (grace if i == sigterms - 1 else 2.0)
        while time.monotonic() < end and p.alive():
            time.sleep(0.05)
        if not p.alive():
            break
    if p.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and p.alive():
            time.sleep(0.05)
    if p.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=5)


def _rig_pids(run_dir: Path, exes: set[str]) -> list[tuple[int, str]]:
    """PIDs whose command line names this run dir (shims, strays) and whose exe is ours."""
    out = []
    key = str(run_dir).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if key in cmd:
            exe = Path(cmd.split(b"\0")[0].decode(errors="replace")).name
            if exe in exes:
                out.append((int(d.name), exe))
    return out


def _umount_under(prefixes: list[Path]) -> int:
    n = 0
    for _ in range(5):
        mounts = []
        for line in Path("/proc/mounts").read_text().splitlines():
            mp = line.split()[1].replace("\\040", " ")
            if any(mp == str(p) or mp.startswith(str(p) + "/") for p in prefixes):
                mounts.append(mp)
        if not mounts:
            break
        for mp in sorted(mounts, key=len, reverse=True):
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
            n += 1
    return n


def _kill_kubepods_processes() -> int:
    """SIGKILL what still runs in the kubepods cgroups (containers orphaned by a crashed run:
    their shims were killed, so nobody else will stop them)."""
    pids: set[int] = set()
    root = Path("/sys/fs/cgroup")
    for h in [root, *root.iterdir()] if root.exists() else []:
        kp = h / "kubepods"
        if kp.is_dir():
            for f in kp.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in f.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 5
    while pids and time.monotonic() < end:
        pids = {p for p in pids if pid_alive(p)}
        time.sleep(0.05)
    return len(pids)


def _remove_kubepods_cgroups() -> None:
    _kill_kubepods_processes()
    root = Path("/sys/fs/cgroup")
    for h in [root, *root.iterdir()] if root.exists() else []:
        kp = h / "kubepods"
        if not kp.is_dir():
            continue
        for d in sorted(
            (p for p in kp.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            kp.rmdir()


def _remove_hardcoded_paths() -> None:
    """Paths the runtime writes outside the run dir (go-cni cache, device plugins, shims)."""
    res = Path("/var/lib/cni/results")
    if res.is_dir():
        for f in res.glob(f"{net.CNI_NETWORK}-*"):
            with contextlib.suppress(OSError):
                f.unlink()
    for d in (
        res,
        Path("/var/lib/cni"),
        Path("/run/containerd/s"),
        Path("/run/containerd/fifo"),
        Path("/run/containerd/runc/k8s.io"),
        Path("/run/containerd/runc"),
        Path("/run/containerd"),
    ):
        with contextlib.suppress(OSError):
            d.rmdir()
    dp = Path("/var/lib/kubelet/device-plugins")
    for f in (dp / "kubelet.sock", dp / "DEPRECATION"):
        with contextlib.suppress(OSError):
            f.unlink()
    for d in (
        dp,
        Path("/var/lib/kubelet/plugins_registry"),
        Path("/var/lib/kubelet/plugins"),
        Path("/var/lib/kubelet/pod-resources"),
        Path("/var/lib/kubelet"),
    ):
        with contextlib.suppress(OSError):
            if d.is_dir():
                for f in d.glob("*.sock"):
                    f.unlink()
                d.rmdir()


def teardown(
    run_dir: Path,
    cluster: LocalCluster | None = None,
    *,
    verbose: bool = True,
    procs: list[Proc] | None = None,
) -> dict[str, float]:
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(what: str) -> None:
        timings[what] = round(time.monotonic() - t0, 2)
        if verbose:
            print(f"[kubeforge-realnode] stop: {what} {timings[what]:.1f}s", file=sys.stderr)

    procs = list(procs or []) or _procs_from_state(run_dir)
    by_name = {p.name: p for p in procs}
    cp_dir = run_dir / "cp"
    if cluster is None and (cp_dir / "state.json").exists():
        cluster = LocalCluster.attach(cp_dir)
    kubelet = by_name.get("kubelet")
    kubeconfig = cp_dir / "kubeconfig"
    # 1. pods away while the kubelet still runs (it unmounts volumes, CNI DEL frees IPs)
    if kubelet is not None and kubelet.alive() and cluster is not None and cluster.running():
        kubectl = cp_binaries.find_binary("kubectl")
        if kubectl:
            subprocess.run(
                [
                    str(kubectl),
                    f"--kubeconfig={kubeconfig}",
                    "delete",
                    "deploy,rs,sts,ds,job,cronjob",
                    "--all",
                    "-A",
                    "--cascade=orphan",
                    "--wait=false",
                ],
                capture_output=True,
                timeout=60,
            )
            subprocess.run(
                [
                    str(kubectl),
                    f"--kubeconfig={kubeconfig}",
                    "delete",
                    "pod",
                    "--all",
                    "-A",
                    "--grace-period=1",
                    "--wait=true",
                    "--timeout=40s",
                ],
                capture_output=True,
                timeout=60,
            )
        lap("pods-deleted")
    # 2. CoreDNS and kube-proxy, forwarding off, kube-proxy's rules
    for n in ("coredns", "kube-proxy"):
        if n in by_name:
            _kill(by_name[n])
    with contextlib.suppress(OSError):
        net.sysctl_set(net.SYSCTL_FORWARD, "0")
    kp_bin = by_name["kube-proxy"].exe if "kube-proxy" in by_name else None
    if kp_bin and Path(kp_bin).exists():
        subprocess.run(
            [kp_bin, "--cleanup", "--proxy-mode=iptables"], capture_output=True, timeout=60
        )
    lap("proxy-dns-stopped")
    # 3. kubelet (may need a 2nd SIGTERM), sandboxes, containerd, shims
    if kubelet is not None:
        _kill(kubelet, sigterms=2)
    lap("kubelet-stopped")
    ctd = by_name.get("containerd")
    crictl_cfg = run_dir / "crictl.yaml"
    if ctd is not None and ctd.alive() and crictl_cfg.exists():
        crictl = bins.default_bin_dir() / "crictl"
        if crictl.exists():
            subprocess.run(
                [str(crictl), "--config", str(crictl_cfg), "rmp", "-a", "-f"],
                capture_output=True,
                timeout=120,
            )
    if ctd is not None:
        _kill(ctd)
    for pid, _exe in _rig_pids(
        run_dir,
        {"containerd-shim-runc-v2", "containerd", "kubelet", "kube-proxy", "coredns", "pause"},
    ):
        _kill(Proc("stray", pid, _exe, ""), grace=3)
    lap("containerd-stopped")
    # 4. mounts, cgroups
    st = {}
    with contextlib.suppress(OSError, ValueError):
        st = json.loads((run_dir / STATE_FILE).read_text())
    ctd_root = Path(st.get("containerd_root") or cache_root() / "node" / "containerd")
    _kill_kubepods_processes()
    _umount_under([run_dir, ctd_root])
    _remove_kubepods_cgroups()
    lap("mounts-cgroups-cleaned")
    # 5. rules (guards, KUBE-*), then the control plane (bound to the bridge address), network
    policy = "ACCEPT"
    with contextlib.suppress(OSError, ValueError, TypeError):
        base = net.Baseline.load(run_dir / "baseline.json")
        if ":FORWARD DROP" in base.iptables:
            policy = "DROP"
    net.remove_rules(forward_policy=policy)
    lap("rules-removed")
    if cluster is not None:
        cluster.stop(remove=False)
    lap("control-plane-stopped")
    net.network_down()
    _remove_hardcoded_paths()
    with contextlib.suppress(OSError):
        owner = json.loads(OWNER_FILE.read_text())
        if owner.get("run_dir") == str(run_dir):
            OWNER_FILE.unlink()
    with contextlib.suppress(OSError):
        (run_dir / STATE_FILE).unlink()
    lap("done")
    return timings


def live_owner() -> Path | None:
    """Run dir of another real node that is still running (its kubelet or containerd alive),
    or None when the bridge's owner is gone (crashed/killed) or there is none."""
    try:
        run_dir = Path(json.loads(OWNER_FILE.read_text())["run_dir"])
    except (OSError, ValueError, KeyError):
        return None
    alive = [p for p in _procs_from_state(run_dir) if p.name in ("kubelet", "containerd")]
    return run_dir if any(p.alive() for p in alive) else None


def cleanup_leftovers(verbose: bool = True, own_run_dir: Path | None = None) -> bool:
    """Tear down what a crashed/killed run left (found through the owner file). True if any.
    A node that is still running in another run dir is not touched: that raises."""
    try:
        owner = json.loads(OWNER_FILE.read_text())
    except (OSError, ValueError):
        return False
    run_dir = Path(owner["run_dir"])
    live = live_owner()
    if live is not None and own_run_dir is not None and live != own_run_dir:
        raise NodeStartError(
            f"another real node is running ({live}); it owns {net.BRIDGE}. Stop it first "
            f"(`python -m kubeforge_cluster.realnode down --name "
            f"{live.name.removeprefix('kubeforge-realnode-')}` or `make cluster-down NODES=real`)"
        )
    if verbose:
        print(
            f"[kubeforge-realnode] cleaning leftovers of a previous run in {run_dir}",
            file=sys.stderr,
        )
    teardown(run_dir, None, verbose=verbose)
    return True


def build_base_images(pause_bin: Path) -> list[Path]:
    """pause (the sandbox) and busybox (tests) as OCI archives, cached by content."""
    store = oci.BlobStore(cache_root() / "images" / "blobs")
    out_dir = cache_root() / "images"
    with _tmpdir(out_dir) as tmp:
        pr = tmp / "pause-root"
        pr.mkdir()
        shutil.copy2(pause_bin, pr / "pause")
        pause_layer = store.layer_from_dir(pr, force_root=True)
        pause = out_dir / "pause.oci.tar"
        oci.write_archive(
            pause, store, [pause_layer], oci.ImageConfig(entrypoint=["/pause"]), PAUSE_IMAGE
        )
        archives = [pause]
        bb_path = bins.static_busybox()
        if bb_path is not None:
            bb = str(bb_path)
            r = tmp / "bb-root"
            for d in ("bin", "etc", "tmp", "root", "www", "proc", "sys", "dev"):
                (r / d).mkdir(parents=True)
            shutil.copy2(bb, r / "bin" / "busybox")
            applets = subprocess.run([bb, "--list"], capture_output=True, text=True).stdout
            for a in applets.split():
                if a != "busybox":
                    (r / "bin" / a).symlink_to("busybox")
            (r / "etc" / "passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
            )
            (r / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            (r / "tmp").chmod(0o1777)
            (r / "www" / "index.html").write_text("<h1>hello from a real pod</h1>\n")
            layer = store.layer_from_dir(r, force_root=True)
            busybox = out_dir / "busybox.oci.tar"
            oci.write_archive(
                busybox,
                store,
                [layer],
                oci.ImageConfig(cmd=["sh"], env=["PATH=/bin"]),
                BUSYBOX_IMAGE,
            )
            archives.append(busybox)
    return archives


def _load_ca(d: Path) -> Any:
    """The control plane's CA (written by LocalCluster) as a :class:`pki.CA` to issue from."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .. import pki

    key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    return pki.CA(key=key, cert=cert, cert_path=d / "ca.crt")  # type: ignore[arg-type]


@contextlib.contextmanager
def _tmpdir(parent: Path) -> Any:
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def archive_ref(archive: Path) -> tuple[str, str]:
    """(image name, manifest digest) of a single-image OCI archive."""
    import tarfile

    with tarfile.open(archive) as t:
        idx = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
    m = idx["manifests"][0]
    return m["annotations"]["io.containerd.image.name"], m["digest"]


__all__ = [
    "NODE_NAME",
    "NodeStartError",
    "NodeUnsupported",
    "RealNode",
    "cleanup_leftovers",
    "live_owner",
    "teardown",
    "unsupported_reason",
]
