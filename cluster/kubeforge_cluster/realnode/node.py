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

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from ..client import ApiError
from ..cluster import LocalCluster, free_port
from ..procs import (
    Proc,
    WaitPolicy,
    dump_log_dirs,
    proc_records,
    spawn_logged,
    wait_while_running,
    write_state_file,
)
from . import bins, net
from .artifacts import ARTIFACT_CLAIM, create_artifact_store
from .cleanup import cleanup_leftovers, teardown
from .components import (
    containerd_config,
    coredns_corefile,
    crictl_config,
    kube_proxy_args,
    kubelet_args,
    kubelet_config,
)
from .controlplane import NodeControlPlane
from .host import NodeUnsupported, low_disk_reasons, unsupported_reason
from .identities import grant_rbac, write_identities
from .images import build_base_images
from .runstate import (
    OWNER_FILE,
    STATE_FILE,
    NodeStartError,
    default_run_dir,
    procs_from_state,
)
from .runtime import NodeRuntime

NODE_NAME = "realnode-1"

# what a node component says while it comes up (refused, 5xx, bad JSON, a crictl/ctr error)
_START_WAIT = WaitPolicy(
    NodeStartError,
    tail_lines=40,
    interval=0.1,
    transient=(OSError, ApiError, ValueError, RuntimeError),
)


class RealNode(NodeRuntime):
    """Starts, owns and stops one real node and its control plane (paths from NodeLayout,
    ctr/crictl from NodeRuntime)."""

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
        super().__init__(Path(run_dir) if run_dir else default_run_dir(name), verbose=verbose)
        self.name = name
        self.bin_dir = bin_dir
        self.cp_bin_dir = cp_bin_dir
        self.images = [Path(p) for p in images]
        self.kwok_nodes = kwok_nodes
        self.daemon = daemon
        self.node_name = NODE_NAME
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.cluster: LocalCluster | None = None
        self.timings: dict[str, float] = {}
        self.startup_seconds: float | None = None

    def _lap(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)
        self._say(f"{what}: {self.timings[what]:.1f}s")

    # --------------------------------------------------------------------------------------
    # lifecycle

    def attach(self) -> RealNode:
        """A handle on a node started by another process (its state file), for imports/checks."""
        self.bins = bins.require(self.bin_dir)
        self.procs = procs_from_state(self.run_dir)
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
        filesystems = [self.run_dir.parent, self.containerd_root]  # node fs, image fs
        for where in filesystems:
            where.mkdir(parents=True, exist_ok=True)
        problems += low_disk_reasons(filesystems)
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
        write_identities(self.run_dir, self.cluster.pki_dir, self.cluster.server, self.node_name)
        grant_rbac(self.cluster.client)
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

    def _start_containerd(self) -> None:
        rd = self.run_dir
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        cfg = containerd_config(
            rd,
            self.containerd_root,
            self.containerd_sock,
            self.registry_hosts_dir,
            self.bins["runc"],
        )
        (rd / "containerd" / "config.toml").write_text(cfg)
        self.crictl_config.write_text(crictl_config(self.containerd_sock))
        env = dict(os.environ)
        env["PATH"] = f"{self.bins['containerd'].parent}:{env.get('PATH', '')}"
        self._spawn(
            "containerd",
            [str(self.bins["containerd"]), "--config", str(rd / "containerd" / "config.toml")],
            env=env,
        )
        self._wait("containerd socket", self.containerd_sock.exists, "containerd", timeout=30)

    def _base_images(self) -> list[Path]:
        return build_base_images(self.bins["pause"])

    # --------------------------------------------------------------------------------------
    # kubelet, kube-proxy, CoreDNS

    def _start_kubelet(self) -> None:
        assert self.cluster is not None
        rd = self.run_dir
        kd = rd / "kubelet"
        (kd / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        cfg = kubelet_config(kd, self.containerd_sock, self.cluster.pki_dir / "ca.crt")
        (kd / "config.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ)
        env["PATH"] = f"{self.bins['runc'].parent}:{env.get('PATH', '')}"
        self._spawn(
            "kubelet",
            kubelet_args(self.bins["kubelet"], kd, rd / "kubelet.kubeconfig", self.node_name),
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
            kube_proxy_args(
                self.bins["kube-proxy"],
                self.run_dir / "kube-proxy.kubeconfig",
                self.node_name,
                self.ports["kp_healthz"],
                self.ports["kp_metrics"],
            ),
        )

    def _write_corefile(self) -> None:
        self.ports["dns_ready"] = free_port()
        kc = self.run_dir / "coredns.kubeconfig"
        self.corefile.write_text(coredns_corefile(kc, self.ports["dns_ready"]))

    def _start_coredns(self) -> None:
        self._spawn("coredns", [str(self.bins["coredns"]), "-conf", str(self.corefile)])

    # --------------------------------------------------------------------------------------
    # using it

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, **kw)

    def artifact_store(
        self, namespace: str, claim: str = ARTIFACT_CLAIM, fs_group: int = 1000
    ) -> str:
        """A shared artifact store for the pods of ``namespace``; returns its URI for the
        operator's ``artifactStore`` (``pvc://CLAIM/``). See :func:`artifacts.create_artifact_store`."""
        return create_artifact_store(
            self.kubectl,
            self.artifacts_dir,
            self.node_name,
            self.cp_dir / "logs" / "kube-controller-manager.log",
            namespace,
            claim,
            fs_group,
        )

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def dump_logs(self, lines: int = 30) -> str:
        return dump_log_dirs([self.logs_dir, self.cp_dir / "logs"], lines)

    # --------------------------------------------------------------------------------------
    # stop

    def stop(self) -> dict[str, float]:
        """Tear everything down (REALPODS rp-down/kp-down order); return per-step timings."""
        return teardown(self.run_dir, self.cluster, verbose=self.verbose, procs=self.procs)


__all__ = ["NODE_NAME", "RealNode"]
