"""pytest plumbing for tests that need a real control plane (loaded by tests/conftest.py).

Fixtures
    cluster          session   LocalCluster (or ExternalCluster with KUBEFORGE_TEST_KUBECONFIG)
    kubeconfig       session   str path of the admin kubeconfig
    kube             session   KubeClient (tiny stdlib REST client) for that kubeconfig
    kubectl          session   Kubectl: kubectl("get", "pods", "-n", ns) -> stdout
    namespace        function  a fresh namespace (default SA ready), deleted afterwards
    pod_driver       function  PodDriver for `namespace`: play the kubelet
    prometheus_crds  session   installs the Prometheus Operator CRDs; returns their names
    kueue            session   runs the real Kueue controller (local cluster only)

Environment
    KUBEFORGE_TEST_KUBECONFIG  use this cluster instead of starting one
    KUBEFORGE_REQUIRE_CLUSTER  fail (not skip) when binaries are missing (set in CI)
    KUBEFORGE_KEEP_CLUSTER     keep the run dir (logs, etcd data) after the session
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import binaries
from .client import ApiError, KubeClient
from .cluster import LocalCluster
from .kubectlops import install_prometheus_crds
from .kubectlops import kubectl as run_kubectl
from .kwoknodes import GPU_LABEL
from .podstatus import readiness_status, terminated_status, timestamp_now

JSON = dict[str, Any]
_ACTIVE: list[Any] = []
_FAILED: list[str] = []


# ---------------------------------------------------------------------------------------------
# handles


class ExternalCluster:
    """A cluster the user named (KUBEFORGE_TEST_KUBECONFIG): same surface as LocalCluster."""

    local = False

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.client = KubeClient(kubeconfig)
        self.bin_dir: Path | None = None
        nodes = self.client.get("/api/v1/nodes")["items"]
        self.node_names = [n["metadata"]["name"] for n in nodes]
        self.gpu_node_names = [
            n["metadata"]["name"]
            for n in nodes
            if n["metadata"].get("labels", {}).get(GPU_LABEL) == "true"
        ]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            *args, kubeconfig=self.kubeconfig, input=input, check=check, timeout=timeout
        )

    def dump_logs(self, lines: int = 40) -> str:
        return "(external cluster: component logs not available here)"

    def install_prometheus_crds(self) -> list[str]:
        return install_prometheus_crds(self.kubeconfig)

    def start_kueue(self, **kw: Any) -> Any:
        try:
            self.client.get("/apis/kueue.x-k8s.io/v1beta2")
        except ApiError:
            pytest.skip("external cluster has no Kueue installed")
        return None


class Kubectl:
    """The real kubectl bound to a kubeconfig. ``kubectl("get", "ns")`` returns stdout and raises
    AssertionError (with stderr) on a non-zero exit; ``.json(...)`` parses ``-o json`` output;
    ``.result(...)`` returns the CompletedProcess without checking."""

    def __init__(self, kubeconfig: str | Path, bin_dir: Path | None = None) -> None:
        self.kubeconfig = str(kubeconfig)
        self.bin_dir = bin_dir

    def result(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            *args,
            kubeconfig=self.kubeconfig,
            input=input,
            check=False,
            timeout=timeout,
            bin_dir=self.bin_dir,
        )

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        r = self.result(*args, input=input, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r.stdout

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self(*args, "-o", "json", timeout=timeout))


# ---------------------------------------------------------------------------------------------
# the kubelet, played by the test


class PodDriver:
    """Plays the kubelet for chosen pods by patching their status subresource.

    ``pod`` is a name or a Pod dict. kwok makes scheduled pods Running first; the terminal
    methods wait for that (so kwok cannot overwrite them), then set the phase and every
    container's ``state.terminated``. kwok leaves such pods alone afterwards.
    """

    def __init__(self, client: KubeClient, namespace: str, timeout: float = 30) -> None:
        self.client = client
        self.namespace = namespace
        self.timeout = timeout

    # -- lookups ------------------------------------------------------------------------------
    def _ns_name(self, pod: str | JSON) -> tuple[str, str]:
        if isinstance(pod, dict):
            return pod["metadata"].get("namespace", self.namespace), pod["metadata"]["name"]
        return self.namespace, pod

    def get(self, pod: str | JSON) -> JSON:
        ns, name = self._ns_name(pod)
        result: JSON = self.client.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return result

    def pods(self, selector: str = "") -> list[JSON]:
        q = {"labelSelector": selector} if selector else None
        items: list[JSON] = self.client.get(f"/api/v1/namespaces/{self.namespace}/pods", query=q)[
            "items"
        ]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    def wait_pods(
        self,
        selector: str = "",
        count: int = 1,
        phase: str | None = None,
        timeout: float | None = None,
    ) -> list[JSON]:
        """Wait until at least ``count`` pods match ``selector`` (and ``phase``); return them."""

        def ok() -> list[JSON] | None:
            ps = [
                p
                for p in self.pods(selector)
                if phase is None or p.get("status", {}).get("phase") == phase
            ]
            return ps if len(ps) >= count else None

        result: list[JSON] = self.client.wait_for(
            f"{count} pod(s) {selector!r} phase={phase} in {self.namespace}",
            ok,
            timeout=timeout or self.timeout,
        )
        return result

    def wait_phase(self, pod: str | JSON, phase: str, timeout: float | None = None) -> JSON:
        result: JSON = self.client.wait_for(
            f"pod {self._ns_name(pod)[1]} phase {phase}",
            lambda: (p := self.get(pod)).get("status", {}).get("phase") == phase and p,
            timeout=timeout or self.timeout,
        )
        return result

    # -- driving ------------------------------------------------------------------------------
    def _patch_status(self, pod: str | JSON, status: JSON) -> JSON:
        ns, name = self._ns_name(pod)
        result: JSON = self.client.patch(
            f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status}
        )
        return result

    def run(self, pod: str | JSON, *, ready: bool = True, timeout: float | None = None) -> JSON:
        """Wait until the pod is scheduled and Running (kwok does it); set readiness."""
        p = self.wait_phase(pod, "Running", timeout)
        if not ready:
            p = self._set_ready(p, False)
        return p

    def _set_ready(self, p: JSON, ready: bool) -> JSON:
        return self._patch_status(p, readiness_status(p, ready))

    def _terminate(
        self,
        pod: str | JSON,
        phase: str,
        exit_code: int,
        reason: str,
        message: str,
        timeout: float | None,
    ) -> JSON:
        p = self.wait_phase(pod, "Running", timeout)
        return self._patch_status(p, terminated_status(p, phase, exit_code, reason, message))

    def succeed(
        self,
        pod: str | JSON,
        message: str = "",
        exit_code: int = 0,
        *,
        reason: str = "Completed",
        timeout: float | None = None,
    ) -> JSON:
        """End the pod Succeeded; ``message`` is the termination message (e.g. metrics JSON)."""
        return self._terminate(pod, "Succeeded", exit_code, reason, message, timeout)

    def fail(
        self,
        pod: str | JSON,
        exit_code: int = 1,
        *,
        reason: str = "Error",
        message: str = "",
        timeout: float | None = None,
    ) -> JSON:
        """End the pod Failed with ``exit_code`` (and ``reason``/``message``)."""
        return self._terminate(pod, "Failed", exit_code, reason, message, timeout)

    def crashloop(
        self,
        pod: str | JSON,
        exit_code: int = 1,
        *,
        restarts: int = 3,
        message: str = "",
        timeout: float | None = None,
    ) -> JSON:
        """Leave the pod Running but not Ready, its containers in CrashLoopBackOff."""
        p = self.wait_phase(pod, "Running", timeout)
        now = timestamp_now()
        last: JSON = {"exitCode": exit_code, "reason": "Error", "startedAt": now, "finishedAt": now}
        if message:
            last["message"] = message
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": restarts,
                "started": False,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container {c['name']}",
                    }
                },
                "lastState": {"terminated": last},
            }
            for c in p["spec"]["containers"]
        ]
        conds = [
            c
            for c in p["status"].get("conditions", [])
            if c["type"] not in ("Ready", "ContainersReady")
        ]
        conds += [
            {
                "type": t,
                "status": "False",
                "reason": "ContainersNotReady",
                "lastTransitionTime": now,
            }
            for t in ("Ready", "ContainersReady")
        ]
        return self._patch_status(
            p, {"phase": "Running", "conditions": conds, "containerStatuses": statuses}
        )


# ---------------------------------------------------------------------------------------------
# fixtures


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    ext = os.environ.get("KUBEFORGE_TEST_KUBECONFIG")
    if ext:
        c: Any = ExternalCluster(ext)
        _ACTIVE.append(c)
        yield c
        _ACTIVE.remove(c)
        return
    try:
        binaries.require_binaries()
    except binaries.MissingBinaries as e:
        if _truthy("KUBEFORGE_REQUIRE_CLUSTER"):
            pytest.fail(f"KUBEFORGE_REQUIRE_CLUSTER is set but {e}", pytrace=False)
        pytest.skip(f"no local control plane: {e}")
    lc = LocalCluster(name=f"test-{os.getpid()}")
    lc.start()
    _ACTIVE.append(lc)
    try:
        yield lc
    finally:
        _ACTIVE.remove(lc)
        keep_all = _truthy("KUBEFORGE_KEEP_CLUSTER")
        keep_logs = bool(_FAILED)
        lc.stop(remove=not (keep_all or keep_logs))
        if keep_logs and not keep_all:
            shutil.rmtree(lc.run_dir / "etcd", ignore_errors=True)  # ~60-130 MB, rarely wanted
        if keep_all or keep_logs:
            print(f"\n[kubeforge-cluster] kept run dir with logs: {lc.run_dir}")


@pytest.fixture(scope="session")
def kubeconfig(cluster: Any) -> str:
    return str(cluster.kubeconfig)


@pytest.fixture(scope="session")
def kube(cluster: Any) -> KubeClient:
    client: KubeClient = cluster.client
    return client


@pytest.fixture(scope="session", name="kubectl")
def kubectl_fixture(cluster: Any) -> Kubectl:
    return Kubectl(cluster.kubeconfig, getattr(cluster, "bin_dir", None))


@pytest.fixture
def namespace(kube: KubeClient, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"kf-{uuid.uuid4().hex[:8]}"
    kube.post(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"kubeforge.io/test": "true"},
                "annotations": {"kubeforge.io/test-id": request.node.nodeid[-250:]},
            },
        },
    )
    kube.wait_for(
        f"ServiceAccount {name}/default",
        lambda: kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
    )
    yield name
    with contextlib.suppress(ApiError):
        kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def pod_driver(kube: KubeClient, namespace: str) -> PodDriver:
    return PodDriver(kube, namespace)


@pytest.fixture(scope="session")
def prometheus_crds(cluster: Any) -> list[str]:
    names: list[str] = cluster.install_prometheus_crds()
    return names


@pytest.fixture(scope="session")
def kueue(cluster: Any) -> Iterator[Any]:
    try:
        k = cluster.start_kueue()
    except binaries.MissingBinaries as e:
        if _truthy("KUBEFORGE_REQUIRE_CLUSTER"):
            pytest.fail(f"KUBEFORGE_REQUIRE_CLUSTER is set but {e}", pytrace=False)
        pytest.skip(f"no kueue: {e}")
    yield k
    if k is not None:
        k.stop()


# ---------------------------------------------------------------------------------------------
# hooks: component logs in the report of a failed test that used the cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    rep = outcome.get_result()
    if not rep.failed or not _ACTIVE:
        return
    uses_cluster = (
        "cluster" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("integration") is not None
    )
    if not uses_cluster:
        return
    _FAILED.append(item.nodeid)
    c = _ACTIVE[-1]
    try:
        rep.sections.append(("kubeforge-cluster component logs", c.dump_logs(lines=30)))
    except Exception as e:  # never mask the real failure
        rep.sections.append(("kubeforge-cluster component logs", f"(could not read: {e})"))


def wait_until(what: str, fn: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    """Poll ``fn`` until truthy (exceptions count as not yet); raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last}")
