"""Binaries of a real node: build (once, cached outside the repo, keyed by versions) or find them.

Built from Go modules (``go install pkg@version``, CGO off, version-stamped):
containerd + containerd-shim-runc-v2 + ctr, crictl, CoreDNS. kubelet and kube-proxy come from the
project's wrapper module (``cluster/go``, the same k8s version as the control plane). The sandbox
("pause") binary is compiled from C with gcc. From Debian: ``runc`` and
``containernetworking-plugins`` (bridge, host-local, loopback in /usr/lib/cni); ``--apt`` installs
them (plus iptables, conntrack) with apt-get.

    python -m kubeforge_cluster.realnode build [--apt] [--force]
    python -m kubeforge_cluster.realnode build --status

Heavy builds run under ``nice -n 19`` (shared machine). A warm run does no work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import binaries as cp_binaries

CONTAINERD_VERSION = "v2.4.2"
CRICTL_VERSION = "v1.37.0"
COREDNS_VERSION = "v1.15.0"
K8S_VERSION = cp_binaries.K8S_VERSION

CACHE_KEY = (
    f"realnode-containerd-{CONTAINERD_VERSION}-crictl-{CRICTL_VERSION}"
    f"-coredns-{COREDNS_VERSION}-k8s-{K8S_VERSION}"
)
NODE_BINARIES = (
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "crictl",
    "coredns",
    "kubelet",
    "kube-proxy",
    "pause",
)
#: Debian packages the node needs (binary -> package).
APT_PACKAGES = {
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "busybox (static)": "busybox-static",
    "gcc": "gcc",
}
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")

PAUSE_C = r"""
/* The sandbox process of every pod: sleeps, reaps zombies, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int s) { (void)s; _exit(0); }
static void sigreap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}, r = {0};
  a.sa_handler = sigdown; sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  r.sa_handler = sigreap; r.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
"""


def default_bin_dir() -> Path:
    env = os.environ.get("KUBEFORGE_NODE_BIN_DIR")
    if env:
        return Path(env).expanduser()
    return cp_binaries.default_bin_dir().parent / CACHE_KEY


def _log(msg: str) -> None:
    print(f"[node-bins] {msg}", flush=True)


def _out(args: list[str]) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout + r.stderr


def version_ok(name: str, path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    if name in ("containerd", "ctr"):
        return CONTAINERD_VERSION in _out([str(path), "--version"])
    if name == "containerd-shim-runc-v2":
        return CONTAINERD_VERSION in _out([str(path), "-v"])
    if name == "crictl":
        return CRICTL_VERSION.lstrip("v") in _out([str(path), "--version"])
    if name == "coredns":
        return f"CoreDNS-{COREDNS_VERSION.lstrip('v')}" in _out([str(path), "-version"])
    if name in ("kubelet", "kube-proxy"):
        return f"Kubernetes {K8S_VERSION}" in _out([str(path), "--version"])
    if name == "pause":
        return (path.parent / "pause.c").is_file() and (
            path.parent / "pause.c"
        ).read_text() == PAUSE_C
    return False


def find_runc() -> Path | None:
    for p in (os.environ.get("KUBEFORGE_RUNC"), shutil.which("runc"), "/usr/sbin/runc"):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    return None


def missing_system() -> list[str]:
    """Debian-provided pieces that are absent (names of the packages to install)."""
    miss: list[str] = []
    if find_runc() is None:
        miss.append("runc")
    if not all((CNI_BIN_DIR / p).is_file() for p in CNI_PLUGINS):
        miss.append("containernetworking-plugins")
    for tool, pkg in (("iptables", "iptables"), ("conntrack", "conntrack"), ("gcc", "gcc")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            miss.append(pkg)
    if static_busybox() is None:
        miss.append("busybox-static")
    return miss


def static_busybox() -> Path | None:
    """Debian's busybox-static: the test image ``local/busybox:1`` is made from it."""
    for p in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if p and Path(p).is_file():
            try:
                head = Path(p).read_bytes()[:4096]
            except OSError:
                continue
            if b"ld-linux" not in head:  # no program interpreter: static
                return Path(p)
    return None


def apt_install(pkgs: list[str]) -> None:
    _log(f"apt-get install {' '.join(pkgs)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=300",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *pkgs,
        ],
        check=True,
        env=env,
    )


def status(bin_dir: Path | None = None) -> dict[str, str]:
    d = bin_dir or default_bin_dir()
    out = {n: ("ok" if version_ok(n, d / n) else "missing") for n in NODE_BINARIES}
    runc = find_runc()
    out["runc"] = f"ok ({runc})" if runc else "missing (apt: runc)"
    cni = all((CNI_BIN_DIR / p).is_file() for p in CNI_PLUGINS)
    out["cni-plugins"] = "ok" if cni else "missing (apt: containernetworking-plugins)"
    return out


def require(bin_dir: Path | None = None) -> dict[str, Path]:
    """Paths of every node binary; raise :class:`MissingNodeBinaries` when any is absent."""
    d = bin_dir or default_bin_dir()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for n in NODE_BINARIES:
        p = d / n
        if p.is_file() and os.access(p, os.X_OK):
            found[n] = p
        else:
            missing.append(n)
    runc = find_runc()
    if runc is None:
        missing.append("runc")
    else:
        found["runc"] = runc
    missing += [m for m in missing_system() if m not in missing and m != "runc"]
    if missing:
        raise MissingNodeBinaries(missing, d)
    return found


class MissingNodeBinaries(RuntimeError):
    def __init__(self, missing: list[str], bin_dir: Path) -> None:
        self.missing = missing
        super().__init__(
            f"real-node binaries missing: {', '.join(missing)} (in {bin_dir} / Debian packages). "
            "Run `make cluster NODES=real` or `python -m kubeforge_cluster.realnode build --apt` "
            "(~6 min cold; cached afterwards)."
        )


def _go_env(gobin: Path | None = None, cgo: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "1" if cgo else "0",
            "GOFLAGS": "-trimpath -buildvcs=false",
            "GOWORK": "off",
        }
    )
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, label: str) -> float:
    t0 = time.monotonic()
    _log(f"{label} ...")
    r = subprocess.run(
        ["nice", "-n", "19", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"[node-bins] {label} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    dt = time.monotonic() - t0
    _log(f"{label}: done in {dt:.0f}s")
    return dt


def _k8s_node_ldflags() -> str:
    return cp_binaries._k8s_ldflags()


NODE_TOOLS = ("k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-proxy")


def _node_module() -> Path:
    """The wrapper module (cluster/go): it pins the control plane's k8s version and its ``tool``
    block lists kubelet and kube-proxy, so their go.sum lines are there."""
    src = cp_binaries.GO_MODULE_DIR
    gomod = (src / "go.mod").read_text()
    missing = [t for t in NODE_TOOLS if f"\t{t}\n" not in gomod]
    if missing:
        raise SystemExit(f"[node-bins] {src / 'go.mod'} does not list {missing} in its tool block")
    return src


def build(bin_dir: Path | None = None, *, force: bool = False, apt: bool = False) -> Path:
    """Build whatever is missing into ``bin_dir`` (default: the versioned cache dir)."""
    t_start = time.monotonic()
    d = bin_dir or default_bin_dir()
    d.mkdir(parents=True, exist_ok=True)
    sysmiss = missing_system()
    if sysmiss:
        if apt:
            apt_install(sysmiss)
        else:
            _log(f"missing Debian packages: {' '.join(sysmiss)} (re-run with --apt)")
    todo = [n for n in NODE_BINARIES if force or not version_ok(n, d / n)]
    if not todo:
        _log(f"all node binaries present in {d}: nothing to do ({time.monotonic() - t_start:.1f}s)")
        return d
    times: dict[str, float] = {}
    with cp_binaries._locked(d):
        go = cp_binaries._go()
        if "pause" in todo:
            (d / "pause.c").write_text(PAUSE_C)
            times["pause"] = _run(
                ["gcc", "-static", "-Os", "-s", "-o", str(d / "pause"), str(d / "pause.c")],
                dict(os.environ),
                d,
                "gcc pause",
            )
        if {"containerd", "containerd-shim-runc-v2", "ctr"} & set(todo):
            ld = (
                f"-s -w -X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}"
            )
            pkgs = [
                f"github.com/containerd/containerd/v2/cmd/{c}@{CONTAINERD_VERSION}"
                for c in ("containerd", "containerd-shim-runc-v2", "ctr")
            ]
            times["containerd"] = _run(
                [go, "install", "-tags", "no_btrfs,no_devmapper,no_zfs", "-ldflags", ld, *pkgs],
                _go_env(d),
                Path("/"),
                f"go install containerd {CONTAINERD_VERSION}",
            )
        if "crictl" in todo:
            ld = f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={CRICTL_VERSION}"
            times["crictl"] = _run(
                [
                    go,
                    "install",
                    "-ldflags",
                    ld,
                    f"sigs.k8s.io/cri-tools/cmd/crictl@{CRICTL_VERSION}",
                ],
                _go_env(d),
                Path("/"),
                f"go install crictl {CRICTL_VERSION}",
            )
        if "coredns" in todo:
            times["coredns"] = _run(
                [
                    go,
                    "install",
                    "-ldflags",
                    "-s -w",
                    f"github.com/coredns/coredns@{COREDNS_VERSION}",
                ],
                _go_env(d),
                Path("/"),
                f"go install coredns {COREDNS_VERSION}",
            )
        kpkgs = [f"k8s.io/kubernetes/cmd/{n}" for n in ("kubelet", "kube-proxy") if n in todo]
        if kpkgs:
            times["kubelet+kube-proxy"] = _run(
                [
                    go,
                    "build",
                    "-tags",
                    "selinux,notest",
                    "-ldflags",
                    _k8s_node_ldflags(),
                    "-o",
                    str(d) + "/",
                    *kpkgs,
                ],
                _go_env(),
                _node_module(),
                f"go build {' '.join(kpkgs)} {K8S_VERSION}",
            )
        bad = [n for n in todo if not version_ok(n, d / n)]
        if bad:
            raise SystemExit(f"[node-bins] built but version check failed: {', '.join(bad)}")
        (d / "manifest.json").write_text(
            json.dumps(
                {
                    "containerd": CONTAINERD_VERSION,
                    "crictl": CRICTL_VERSION,
                    "coredns": COREDNS_VERSION,
                    "kubernetes": K8S_VERSION,
                    "last_build_seconds": times,
                },
                indent=2,
            )
            + "\n"
        )
    _log(f"done in {time.monotonic() - t_start:.0f}s: {d}")
    return d
