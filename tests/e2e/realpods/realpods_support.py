"""Fixtures for tests on a real node (containerd + runc + kubelet + kube-proxy + CoreDNS).

They skip, with the reason, where this machine cannot run one: not root, no cgroups/netns,
node binaries absent (`make node-bins`), or another rig owns the bridge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeforge_cluster.realnode import RealNode, default_run_dir, net, unsupported_reason
from kubeforge_cluster.realnode.cleanup import live_owner
from kubeforge_cluster.realnode.runstate import OWNER_FILE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
IMAGES_OUT = REPO / "cluster" / "images" / "out"
TRAINER_ARCHIVE = IMAGES_OUT / "kubeforge-trainer.oci.tar"
TRAINER_IMAGE = "local/kubeforge-trainer:dev"


FINAL_PHASES = {
    "trainingjob": ("Succeeded", "Failed"),
    "tuningstudy": ("Succeeded", "Failed"),
    "modeldeployment": ("Ready", "Failed"),
}


def digits_trainingjob(name: str, epochs: int, **resources: Any) -> dict[str, Any]:
    """A small TrainingJob of the built-in trainer on the digits set (real pods: 1 CPU)."""
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"recipe": "mlp-classifier"},
            "dataset": {"uri": "builtin://digits"},
            "hyperparameters": {"lr": 0.01, "epochs": epochs, "batch_size": 64, "hidden": 64},
            "resources": {"cpu": "1", "memory": "2Gi", **resources},
        },
    }


def install_crds(node: RealNode) -> None:
    """kubeforge's CRDs, applied server-side and Established."""
    node.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), timeout=120
    )
    for crd in ("trainingjobs", "tuningstudies", "modeldeployments"):
        node.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}.kubeforge.io", "--timeout=60s"
        )


def require_trainer_archive() -> Path:
    """The trainer image archive, or a skip saying how to make it (`make images`)."""
    if not TRAINER_ARCHIVE.is_file():
        pytest.skip(
            f"{TRAINER_ARCHIVE.relative_to(REPO)} not built: `KUBEFORGE_TEST_TRAINER_IMAGE=1 "
            "make test-deps` builds it from its Dockerfile (BuildKit; ~6 GB, ~5 min cold, "
            "~20 GB of build cache), so the e2e suite does not by default"
        )
    return TRAINER_ARCHIVE


def build_image(name: str) -> Path:
    """Build (cached layers) the project's image `name` ("operator" or "server") into
    cluster/images/out without importing it; skip where the Debian base cannot be made."""
    sys.path.insert(0, str(REPO / "cluster" / "images"))
    try:
        import build as images
    finally:
        sys.path.pop(0)
    try:
        images.base_rootfs()
    except (SystemExit, OSError, RuntimeError) as e:
        pytest.skip(f"cannot build the {name} image here (Debian base via debootstrap): {e}")
    (archive,) = images.build([name], IMAGES_OUT, do_import=False)
    return Path(archive)


def skip_reason() -> str | None:
    reason = unsupported_reason()
    if reason:
        return f"real pods unavailable here: {reason}"
    if net.bridge_exists() and not OWNER_FILE.exists():
        return f"{net.BRIDGE} exists and is not ours: another rig owns the pod network"
    live = live_owner()
    if live is not None:
        return f"a real node is running ({live}) and owns {net.BRIDGE}: stop it to run this suite"
    return None


@pytest.fixture(scope="module")
def real_node() -> Iterator[RealNode]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    node = RealNode(default_run_dir("e2e"), name="e2e")
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Kube:
    """Small kubectl helpers for the tests (everything through the real kubectl)."""

    def __init__(self, node: RealNode, namespace: str) -> None:
        self.node = node
        self.ns = namespace

    def k(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        r = self.node.kubectl("-n", self.ns, *args, input=input, check=False, timeout=timeout)
        if check and r.returncode != 0:
            # the stderr in the message: a bare CalledProcessError hides why kubectl failed
            raise subprocess.CalledProcessError(
                r.returncode, f"kubectl {' '.join(args)}: {r.stderr.strip()}", r.stdout, r.stderr
            )
        return r.stdout if check else r.stdout + r.stderr

    def apply(self, obj: dict[str, Any]) -> None:
        self.k("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.k("get", kind, name, "-o", "json")))

    def wait(self, what: str, fn: Callable[[], Any], timeout: float = 90) -> Any:
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                v = fn()
                if v:
                    return v
            except (subprocess.CalledProcessError, KeyError, IndexError, ValueError) as e:
                last = e
            time.sleep(0.3)
        raise AssertionError(
            f"timed out waiting for {what} (last error {last}); "
            f"events:\n{self.k('get', 'events', check=False)}"
        )

    def wait_final(self, kind: str, name: str, timeout: float = 420) -> dict[str, Any]:
        """The status of `kind`/`name` once it reaches a final phase (FINAL_PHASES)."""

        def final() -> dict[str, Any] | None:
            st = self.get(kind, name).get("status", {})
            return dict(st) if st.get("phase") in FINAL_PHASES[kind] else None

        st: dict[str, Any] = self.wait(f"{kind} {name} final", final, timeout=timeout)
        return st

    def terminated(self, pod: str) -> dict[str, Any] | None:
        st = self.get("pod", pod).get("status", {})
        for cs in st.get("containerStatuses", []):
            t = cs.get("state", {}).get("terminated")
            if t:
                return dict(t)
        return None


@pytest.fixture(scope="module")
def kube(real_node: RealNode) -> Kube:
    ns = "rp-test"
    real_node.kubectl("create", "namespace", ns)
    kb = Kube(real_node, ns)
    kb.wait("default ServiceAccount", lambda: kb.k("get", "sa", "default"))
    return kb


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "local/busybox:1",
        "imagePullPolicy": "Never",
        "command": command,
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }
