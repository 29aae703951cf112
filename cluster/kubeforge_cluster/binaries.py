"""Where the control-plane binaries live, and how they are built (stdlib only).

One cache directory outside the repo, keyed by every version it holds:
``${KUBEFORGE_BIN_DIR:-${XDG_CACHE_HOME:-~/.cache}/kubeforge/bin/<KEY>}``. Binaries a user already
has are used instead of building: any directory in ``KUBEFORGE_USE_BINARIES`` (``:``-separated)
or ``KUBEBUILDER_ASSETS`` that holds a binary wins over the cache for that binary.

The cache also holds data the tests need without a Go module cache: ``kwok-stages/`` (kwok's stock
stages), ``crds/prometheus-operator/`` and ``kueue/`` (CRDs + webhook manifests).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"
HELM3_VERSION = "v3.22.0"
KUEUE_VERSION = "v0.17.0"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"

CACHE_KEY = (
    f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}-helm-{HELM_VERSION}"
    f"-kueue-{KUEUE_VERSION}"
)
GO_MODULE_DIR = Path(__file__).resolve().parent.parent / "go"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
#: Binaries a cluster cannot start without.
CORE_BINARIES = (*K8S_BINARIES, "etcd", "kwok")
#: Everything ``make cluster-bins`` provides (helm3 only with --helm3).
ALL_BINARIES = (*CORE_BINARIES, "helm", "kueue")


def default_bin_dir() -> Path:
    env = os.environ.get("KUBEFORGE_BIN_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kubeforge" / "bin" / CACHE_KEY


def user_dirs() -> list[Path]:
    """Directories of binaries the user already has (searched before the cache)."""
    dirs: list[Path] = []
    for var in ("KUBEFORGE_USE_BINARIES", "KUBEBUILDER_ASSETS"):
        for part in os.environ.get(var, "").split(os.pathsep):
            if part.strip():
                dirs.append(Path(part.strip()).expanduser())
    return dirs


def _is_exe(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_binary(name: str, bin_dir: Path | None = None) -> Path | None:
    for d in [*user_dirs(), bin_dir or default_bin_dir()]:
        if _is_exe(d / name):
            return d / name
    return None


def require_binaries(
    names: tuple[str, ...] = CORE_BINARIES, bin_dir: Path | None = None
) -> dict[str, Path]:
    found = {n: find_binary(n, bin_dir) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if "kwok" in names and not (data_dir(bin_dir) / "kwok-stages" / "pod-ready.yaml").is_file():
        missing.append("kwok-stages/ (data copied by make cluster-bins)")
    if missing:
        raise MissingBinaries(missing, bin_dir or default_bin_dir())
    return {n: p for n, p in found.items() if p is not None}


class MissingBinaries(RuntimeError):
    def __init__(self, missing: list[str], bin_dir: Path) -> None:
        self.missing = missing
        super().__init__(
            f"control-plane binaries missing: {', '.join(missing)} (looked in "
            f"{', '.join(str(d) for d in [*user_dirs(), bin_dir])}). "
            "Run `make cluster-bins` (about 10 min once; cached afterwards), or point "
            "KUBEFORGE_USE_BINARIES / KUBEBUILDER_ASSETS at a directory holding them."
        )


def data_dir(bin_dir: Path | None = None) -> Path:
    """Non-binary assets (kwok stages, CRDs, kueue manifests) sit next to the binaries."""
    return bin_dir or default_bin_dir()


# --------------------------------------------------------------------------------------------
# version checks (a warm run only runs these)


def _run_out(args: list[str]) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout + r.stderr


def binary_version_ok(name: str, path: Path) -> bool:
    """True when the binary at ``path`` is the version this cache is for."""
    if not _is_exe(path):
        return False
    if name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        return f"Kubernetes {K8S_VERSION}" in _run_out([str(path), "--version"])
    if name == "kubectl":
        return f"Client Version: {K8S_VERSION}" in _run_out([str(path), "version", "--client"])
    if name == "etcd":
        return f"etcd Version: {ETCD_VERSION[1:]}" in _run_out([str(path), "--version"])
    if name == "helm":
        return HELM_VERSION in _run_out([str(path), "version", "--short"])
    if name == "helm3":
        return HELM3_VERSION in _run_out([str(path), "version", "--short"])
    # kwok and kueue: the build records their version in the manifest (go install pkg@version).
    manifest = _read_manifest(path.parent)
    want = {"kwok": KWOK_VERSION, "kueue": KUEUE_VERSION}.get(name)
    return manifest.get(name) == want and bool(_run_out([str(path), "--help"]))


def _read_manifest(d: Path) -> dict[str, str]:
    try:
        return dict(json.loads((d / "manifest.json").read_text()))
    except (OSError, ValueError):
        return {}


def _write_manifest(d: Path, updates: dict[str, str]) -> None:
    m = _read_manifest(d)
    m.update(updates)
    tmp = d / "manifest.json.tmp"
    tmp.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    tmp.replace(d / "manifest.json")


# --------------------------------------------------------------------------------------------
# building


def _log(msg: str) -> None:
    print(f"[cluster-bins] {msg}", flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
            "GOFLAGS": "-trimpath -buildvcs=false",
            "GOWORK": "off",
        }
    )
    env.update(extra or {})
    return env


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise SystemExit(
            "[cluster-bins] `go` not found on PATH: Go >= 1.26 is needed to build the control "
            "plane (or set KUBEFORGE_USE_BINARIES to a directory with the binaries)."
        )
    return go


def _run_with_progress(args: list[str], cwd: Path, env: dict[str, str], label: str) -> None:
    """Run a go command with ``-v``; print a heartbeat (elapsed, packages compiled)."""
    t0 = time.monotonic()
    count = 0
    lines: list[str] = []
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    done = threading.Event()

    def beat() -> None:
        while not done.wait(30):
            _log(f"  ... {label}: {_fmt(time.monotonic() - t0)} elapsed, {count} packages compiled")

    th = threading.Thread(target=beat, daemon=True)
    th.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        count += 1
        lines.append(line)
        del lines[:-60]
    rc = proc.wait()
    done.set()
    if rc != 0:
        sys.stderr.write("".join(lines))
        raise SystemExit(f"[cluster-bins] {label} failed (exit {rc}); last output above")
    _log(f"  {label}: done in {_fmt(time.monotonic() - t0)}")


def _k8s_ldflags() -> str:
    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    minor = K8S_VERSION.split(".")[1]
    parts = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for k, v in (
            ("gitVersion", K8S_VERSION),
            ("gitMajor", "1"),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", build_date),
        ):
            parts += ["-X", f"{pkg}.{k}={v}"]
    return " ".join(parts)


def _mod_dir(module: str) -> Path:
    out = subprocess.run(
        [_go(), "mod", "download", "-json", module],
        capture_output=True,
        text=True,
        env=_go_env(),
        cwd="/",
        check=False,
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "Dir" not in info:
        raise SystemExit(
            f"[cluster-bins] go mod download {module} failed: {out.stderr}{out.stdout}"
        )
    return Path(info["Dir"])


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another build holds {d}/.lock; waiting for it ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@dataclass
class Step:
    names: tuple[str, ...]
    label: str
    estimate: str


def _copy_tree_files(src: Path, dst: Path, pattern: str) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(src.glob(pattern)):
        shutil.copyfile(f, dst / f.name)
        n += 1
    return n


def _assets_ok(d: Path) -> bool:
    return (
        (d / "kwok-stages" / "pod-ready.yaml").is_file()
        and any((d / "crds" / "prometheus-operator").glob("monitoring.coreos.com_*.yaml"))
        and (d / "kueue-manifests" / "webhook" / "manifests.yaml").is_file()
        and any((d / "kueue-manifests" / "crd").glob("kueue.x-k8s.io_*.yaml"))
    )


def _copy_assets(d: Path) -> None:
    kwok = _mod_dir(f"sigs.k8s.io/kwok@{KWOK_VERSION}") / "kustomize" / "stage"
    st = d / "kwok-stages"
    st.mkdir(parents=True, exist_ok=True)
    for rel in (
        "node/fast/node-initialize.yaml",
        "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
    ):
        shutil.copyfile(kwok / rel, st / Path(rel).name)
    prom = _mod_dir(
        f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    )
    _copy_tree_files(
        prom / "example" / "prometheus-operator-crd",
        d / "crds" / "prometheus-operator",
        "monitoring.coreos.com_*.yaml",
    )
    kueue = _mod_dir(f"sigs.k8s.io/kueue@{KUEUE_VERSION}") / "config" / "components"
    _copy_tree_files(kueue / "crd" / "bases", d / "kueue-manifests" / "crd", "*.yaml")
    _copy_tree_files(kueue / "webhook", d / "kueue-manifests" / "webhook", "manifests.yaml")
    _write_manifest(
        d,
        {
            "kwok-stages": KWOK_VERSION,
            "prometheus-operator-crds": PROMETHEUS_OPERATOR_VERSION,
            "kueue-manifests": KUEUE_VERSION,
        },
    )


def build(
    bin_dir: Path | None = None,
    *,
    helm3: bool = False,
    kueue: bool = True,
    force: bool = False,
) -> Path:
    """Build whatever is missing or of the wrong version into ``bin_dir``; return it."""
    t_start = time.monotonic()
    d = bin_dir or default_bin_dir()
    wanted = list(ALL_BINARIES if kueue else ALL_BINARIES[:-1])
    if helm3:
        wanted.append("helm3")
    if not kueue:
        wanted = [w for w in wanted if w != "kueue"]

    # Binaries the user already has are used as they are.
    todo: list[str] = []
    for name in wanted:
        for ud in user_dirs():
            if _is_exe(ud / name):
                _log(f"{name}: using {ud / name} (user-provided; not built)")
                break
        else:
            if force or not binary_version_ok(name, d / name):
                todo.append(name)

    if not todo and _assets_ok(d):
        _log(
            f"all binaries present and at the right versions in {d}: nothing to do "
            f"(checked in {time.monotonic() - t_start:.1f}s)"
        )
        return d

    with _locked(d):
        go = _go()
        _log(f"building into {d}")
        _log(
            "this happens ONCE per version set (cold: ~10 min on 2 cores, ~15 min with kueue); "
            "later runs reuse the cache"
        )
        steps = [
            Step(
                K8S_BINARIES,
                "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl",
                "~7 min cold",
            ),
            Step(("etcd",), "etcd", "~10 s after the step above"),
            Step(("kwok",), "kwok", "~1 min"),
            Step(("helm",), "helm v4", "~2 min"),
            Step(("helm3",), "helm v3 (helm3)", "~2 min"),
            Step(("kueue",), "kueue", "~4 min"),
        ]
        steps = [s for s in steps if any(n in todo for n in s.names)]
        for i, step in enumerate(steps, 1):
            _log(
                f"step {i}/{len(steps)}: {step.label} ({step.estimate}; total elapsed "
                f"{_fmt(time.monotonic() - t_start)})"
            )
            _build_step(go, step.names, d)
            for n in step.names:
                if n in todo and not binary_version_ok(n, d / n):
                    raise SystemExit(f"[cluster-bins] {n} built but its version check failed")
        if not _assets_ok(d):
            _log("copying kwok stages, Prometheus Operator CRDs and kueue manifests into the cache")
            _copy_assets(d)
        _log(f"done in {_fmt(time.monotonic() - t_start)}: {d}")
    return d


def _build_step(go: str, names: tuple[str, ...], d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if names == K8S_BINARIES:
        pkgs = [f"k8s.io/kubernetes/cmd/{n}" for n in K8S_BINARIES]
        _run_with_progress(
            [
                go,
                "build",
                "-v",
                "-tags",
                "selinux,notest",
                "-ldflags",
                _k8s_ldflags(),
                "-o",
                str(d) + "/",
                *pkgs,
            ],
            GO_MODULE_DIR,
            _go_env(),
            "go build (k8s)",
        )
        return
    if names == ("etcd",):
        _run_with_progress(
            [
                go,
                "build",
                "-v",
                "-ldflags",
                "-s -w",
                "-o",
                str(d / "etcd"),
                "go.etcd.io/etcd/server/v3",
            ],
            GO_MODULE_DIR,
            _go_env(),
            "go build (etcd)",
        )
        return
    name = names[0]
    pkg, ldflags, version = {
        "kwok": (f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}", "-s -w", KWOK_VERSION),
        "helm": (
            f"helm.sh/helm/v4/cmd/helm@{HELM_VERSION}",
            f"-s -w -X helm.sh/helm/v4/internal/version.version={HELM_VERSION}",
            HELM_VERSION,
        ),
        "helm3": (
            f"helm.sh/helm/v3/cmd/helm@{HELM3_VERSION}",
            f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM3_VERSION}",
            HELM3_VERSION,
        ),
        "kueue": (f"sigs.k8s.io/kueue/cmd/kueue@{KUEUE_VERSION}", "-s -w", KUEUE_VERSION),
    }[name]
    if name == "helm3":
        # `go install` names the binary after its package dir (helm): install elsewhere, move.
        tmp = d / ".helm3-tmp"
        tmp.mkdir(exist_ok=True)
        _run_with_progress(
            [go, "install", "-v", "-ldflags", ldflags, pkg],
            Path("/"),
            _go_env({"GOBIN": str(tmp)}),
            "go install (helm3)",
        )
        (tmp / "helm").replace(d / "helm3")
        tmp.rmdir()
    else:
        _run_with_progress(
            [go, "install", "-v", "-ldflags", ldflags, pkg],
            Path("/"),
            _go_env({"GOBIN": str(d)}),
            f"go install ({name})",
        )
    _write_manifest(d, {name: version})


def status(bin_dir: Path | None = None) -> dict[str, str]:
    d = bin_dir or default_bin_dir()
    out: dict[str, str] = {}
    for n in (*ALL_BINARIES, "helm3"):
        p = find_binary(n, d)
        if p is None:
            out[n] = "missing"
        elif p.parent != d:
            out[n] = f"user-provided: {p}"
        else:
            out[n] = "ok" if binary_version_ok(n, p) else "wrong version"
    return out
