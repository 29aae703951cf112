"""Install the kubeforge chart into a cluster and run the operator with the chart's identity.

On the local control plane pods are fake (kwok), so the operator Deployment the chart installs
never runs any code. :class:`OperatorProcess` runs the real `kubeforge-operator` as a local
process instead, with the settings the chart's Deployment would give it (its `env`) and a
kubeconfig holding a token of the chart's ServiceAccount (`kubectl create token`): it has
exactly the rights the chart grants, no more. Used by the chart's integration tests and the demo.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .cluster import free_port
from .helm import CHART, Helm, find_helm, rendered_env
from .progress import local_progress_tls

RELEASE = "kubeforge"
NAMESPACE = "kubeforge-system"


def kubectl_bin(cluster: Any) -> str:
    from . import binaries

    exe = binaries.find_binary("kubectl", getattr(cluster, "bin_dir", None)) or shutil.which(
        "kubectl"
    )
    if exe is None:
        raise RuntimeError("kubectl not found (make cluster-bins)")
    return str(exe)


def helm_for(cluster: Any, name: str = "helm", home: Path | None = None) -> Helm:
    path = find_helm(name)
    if path is None:
        raise RuntimeError(f"{name} not found (make cluster-bins)")
    return Helm(path, kubeconfig=cluster.kubeconfig, home=home)


def install(
    helm: Helm,
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    upgrade: bool = False,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`helm install` (or `upgrade --install`) of the chart, waiting for nothing (fake pods)."""
    verb = ["upgrade", "--install"] if upgrade else ["install"]
    args = [*verb, release, str(CHART), "--namespace", namespace, "--create-namespace", *extra]
    if values:
        args += ["--values", "-"]
    return helm(*args, input=json.dumps(values) if values else None)


def operator_env_from_release(
    helm: Helm, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """The operator container's env as the installed release renders it (`helm get manifest`)."""
    out = helm("get", "manifest", release, "--namespace", namespace).stdout
    return rendered_env([d for d in yaml.safe_load_all(out) if d])


def service_account_kubeconfig(
    cluster: Any,
    path: Path,
    *,
    service_account: str = RELEASE,
    namespace: str = NAMESPACE,
    duration: str = "2h",
) -> Path:
    """A kubeconfig for `service_account` (a bound token from `kubectl create token`)."""
    token = subprocess.run(
        [
            kubectl_bin(cluster),
            f"--kubeconfig={cluster.kubeconfig}",
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            f"--duration={duration}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx_name = admin.get("current-context")
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cl = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    if "certificate-authority" in cl and "certificate-authority-data" not in cl:
        cl = dict(cl)
        ca = Path(cl.pop("certificate-authority")).read_bytes()
        cl["certificate-authority-data"] = base64.b64encode(ca).decode()
    user = f"system:serviceaccount:{namespace}:{service_account}"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeforge", "cluster": cl}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "kubeforge", "user": user}}],
        "current-context": "operator",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def operator_binary() -> str:
    exe = Path(sys.executable).parent / "kubeforge-operator"
    return str(exe) if exe.exists() else (shutil.which("kubeforge-operator") or "")


class OperatorProcess:
    """The real `kubeforge-operator`, as a local process with the chart's settings and identity.

    `env` is the chart's rendered operator env; listeners are moved to free loopback ports, and
    the progress endpoint gets a local certificate (the chart's Secret is for the pod; the URL
    training pods get stays the chart's Service): `progress_endpoint` is where it listens.
    """

    def __init__(
        self,
        kubeconfig: Path,
        env: dict[str, str],
        log: Path,
        *,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.progress_tls = local_progress_tls(log.parent / f"{log.stem}-progress-tls")
        self.progress_endpoint = self.progress_tls.endpoint
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBEFORGE_")},
            **env,
            **self.progress_tls.env(),
            "KUBECONFIG": str(kubeconfig),
            "KUBEFORGE_METRICS_ADDRESS": "127.0.0.1",
            "KUBEFORGE_METRICS_PORT": str(self.metrics_port),
            "KUBEFORGE_LIVENESS_PORT": str(self.liveness_port),
            "KUBEFORGE_READINESS_PORT": str(free_port()),
        }
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.args = [operator_binary()]
        for ns in namespaces:
            self.args += ["--namespace", ns]
        self.args += ["--metrics-port", str(self.metrics_port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> OperatorProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"kubeforge-operator exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"kubeforge-operator not healthy after {timeout}s:\n{self.tail()}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_operator(
    cluster: Any,
    helm: Helm,
    workdir: Path,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    service_account: str | None = None,
    extra_env: dict[str, str] | None = None,
    namespaces: tuple[str, ...] = (),
) -> Iterator[OperatorProcess]:
    """The operator running with the installed release's env and ServiceAccount token."""
    kc = service_account_kubeconfig(
        cluster,
        workdir / "operator.kubeconfig",
        service_account=service_account or release,
        namespace=namespace,
    )
    env = operator_env_from_release(helm, release=release, namespace=namespace)
    env.update(extra_env or {})
    op = OperatorProcess(kc, env, workdir / "operator.log", namespaces=namespaces)
    try:
        yield op.start()
    finally:
        op.stop()
