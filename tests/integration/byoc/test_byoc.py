"""Bring your own code on the real control plane.

The pods are played with what the REAL `kubeforge-report` zipapp writes: for each pod the test
runs the zipapp locally with the wrapper flags the operator put in the pod's command, around a tiny
Katib-style script given the pod's own arguments expanded the kubelet's way (`$(HP_LR)` from the
pod's env). Its progress lines are patched onto the pod as the in-cluster channel would, its
termination message ends the pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kf_operator_process import OperatorProcess
from kubeforge.pod import expand_env_refs
from kubeforge_cluster.progress import report_for_pod
from kubeforge_trainer.report import build as zipbuild

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
API = "/apis/kubeforge.io/v1alpha1/namespaces"
TJ_LABEL = "kubeforge.io/trainingjob"
REPORT_PYZ = "/kubeforge/bin/kubeforge-report.pyz"
EXAMPLE_SCRIPT = ROOT / "examples" / "scripts" / "katib_style_train.py"
JSON = dict[str, Any]

# A Katib-style trial program: flags in, `name=value` lines out, argparse's echo as noise.
TRAIN_PY = """\
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--layers", type=int, default=1)
ap.add_argument("--epochs", type=int, default=3)
ns = ap.parse_args()
print(ns, flush=True)
for e in range(1, ns.epochs + 1):
    acc = 0.5 + 5 * ns.lr + 0.02 * ns.layers - 0.05 * (ns.epochs - e)
    print(f"epoch={e} accuracy={acc:.4f} loss={1 - acc:.4f}", flush=True)
"""


def accuracy(lr: float, layers: int, epoch: int = 3, epochs: int = 3) -> float:
    """What TRAIN_PY prints (the known objective of the parameters)."""
    return round(0.5 + 5 * lr + 0.02 * layers - 0.05 * (epochs - epoch), 4)


# --------------------------------------------------------------------------- helpers
def apply(kubectl: Any, namespace: str, obj: JSON) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def get(kube: Any, ns: str, plural: str, name: str) -> JSON:
    out: JSON = kube.get(f"{API}/{ns}/{plural}/{name}")
    return out


def wait_phase(kube: Any, ns: str, plural: str, name: str, phase: str, timeout: float) -> JSON:
    out: JSON = kube.wait_for(
        f"{plural}/{name} phase {phase}",
        lambda: (o := get(kube, ns, plural, name)).get("status", {}).get("phase") == phase and o,
        timeout=timeout,
    )
    return out


def container_env(pod: JSON) -> dict[str, str]:
    c = pod["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}


@pytest.fixture(scope="module")
def report_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real kubeforge-report zipapp, built the way the trainer image builds it."""
    out = tmp_path_factory.mktemp("bin")
    subprocess.run(
        [sys.executable, "-m", "kubeforge_trainer.report.build", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pyz = out / "kubeforge-report.pyz"
    assert pyz.is_file() and zipbuild.PACKAGE
    return pyz


def run_real_report(
    pyz: Path, pod: JSON, workdir: Path, program: str = TRAIN_PY
) -> tuple[list[JSON], str]:
    """Run the pod's command locally: the real zipapp with the pod's wrapper flags, around
    `program` (/app/train.py) given the pod's arguments as the kubelet expands them. → (progress, termination)."""
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["python3", REPORT_PYZ], cmd
    sep = cmd.index("--")
    flags, user = cmd[2:sep], cmd[sep + 1 :]
    assert user[:2] == ["python3", "/app/train.py"], user
    env = container_env(pod)
    args = [expand_env_refs(a, env) for a in user[2:]]
    assert not any("$(" in a for a in args), args  # every reference is defined on the pod
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "train.py"
    script.write_text(program)
    run_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KUBEFORGE_PROGRESS_FILE": str(workdir / "progress.jsonl"),
        "KUBEFORGE_TERMINATION_LOG": str(workdir / "termination-log"),
        "KUBEFORGE_STOP_FILE": str(workdir / "stop"),
    }
    proc = subprocess.run(
        ["python3", str(pyz), *flags, "--", "python3", str(script), *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    progress_file = workdir / "progress.jsonl"
    progress = [json.loads(x) for x in progress_file.read_text().splitlines()]
    return progress, (workdir / "termination-log").read_text()


def play_pod(
    kube: Any, driver: Any, ns: str, pod: JSON, pyz: Path, workdir: Path, program: str = TRAIN_PY
) -> None:
    """Report each progress line to the operator's endpoint with a token bound to the pod
    (waiting until the TrainingJob shows it), then end the pod with the termination message."""
    tj = pod["metadata"]["labels"][TJ_LABEL]
    progress, message = run_real_report(pyz, pod, workdir, program)
    for report in progress:
        report_for_pod(kube, OperatorProcess.running[-1], pod, report)
        kube.wait_for(
            f"{tj} progress step {report['step']}",
            lambda r=report: (
                get(kube, ns, "trainingjobs", tj).get("status", {}).get("progress", {}).get("step")
                == r["step"]
            ),
            timeout=20,
        )
    driver.succeed(pod, message=message)


class Player:
    """Plays every Running trainer pod of the namespace in its own thread."""

    def __init__(self, kube: Any, driver: Any, ns: str, pyz: Path, workdir: Path) -> None:
        self.kube, self.driver, self.ns, self.pyz, self.workdir = kube, driver, ns, pyz, workdir
        self.pods: dict[str, JSON] = {}
        self.errors: list[str] = []
        self.max_running = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Player:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                pods = self.driver.pods(TJ_LABEL)
            except Exception as exc:  # the API server is busy: try again
                self.errors.append(repr(exc))
                time.sleep(0.2)
                continue
            live = {
                p["metadata"]["labels"][TJ_LABEL]
                for p in pods
                if p.get("status", {}).get("phase") in ("Pending", "Running")
            }
            self.max_running = max(self.max_running, len(live))
            for p in pods:
                name = p["metadata"]["name"]
                if name in self.pods or p.get("status", {}).get("phase") != "Running":
                    continue
                self.pods[name] = p
                threading.Thread(target=self._play, args=(p,), daemon=True).start()
            time.sleep(0.1)

    def _play(self, pod: JSON) -> None:
        name = pod["metadata"]["name"]
        try:
            play_pod(self.kube, self.driver, self.ns, pod, self.pyz, self.workdir / name)
        except Exception as exc:
            self.errors.append(f"{name}: {exc!r}")


@pytest.fixture
def user_objects(kubectl: Any, namespace: str) -> Iterator[None]:
    """What a user's pod settings name: their ServiceAccount and ConfigMaps."""
    kubectl("create", "serviceaccount", "-n", namespace, "trainer-sa")
    kubectl("create", "configmap", "-n", namespace, "train-cfg", "--from-literal=a=1")
    kubectl(
        "create",
        "configmap",
        "-n",
        namespace,
        "byo-train-script",
        f"--from-file=train.py={EXAMPLE_SCRIPT}",
    )
    yield


# --------------------------------------------------------------------------- the study
def katib_study(name: str) -> JSON:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metric": "accuracy", "direction": "maximize"},
            "searchSpace": {
                "lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
                "num_layers": {"type": "int", "low": 2, "high": 3},
            },
            "algorithm": {"name": "grid", "seed": 0},
            "earlyStopping": {"name": "none"},
            "maxTrials": 4,
            "parallelism": 2,
            "maxFailedTrials": 1,
            "trialTemplate": {
                "retain": True,
                "spec": {
                    "image": "registry.example/katib-mnist:1",
                    "command": ["python3", "/app/train.py"],
                    "args": ["--lr=$(HP_LR)", "--layers=$(HP_NUM_LAYERS)"],
                    "hyperparameters": {"epochs": 3},
                    "metricsCollector": {"kind": "StdOut"},
                    "resources": {"cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
                    "runPolicy": {"backoffLimit": 0},
                    "pod": {
                        "serviceAccountName": "trainer-sa",
                        "annotations": {"sidecar.istio.io/inject": "false"},
                        "env": [{"name": "DATA_DIR", "value": "/data"}],
                        "volumes": [
                            {"name": "cfg", "mountPath": "/etc/cfg", "configMapName": "train-cfg"}
                        ],
                        "imagePullSecrets": ["regcred"],
                    },
                },
            },
        },
    }


def check_trial_pod(pod: JSON) -> None:
    """A trial pod as the operator made it: HP_* env, the wrapper, the user's pod settings."""
    spec = pod["spec"]
    c = spec["containers"][0]
    env = container_env(pod)
    assert {"HP_LR", "HP_NUM_LAYERS", "HP_EPOCHS"} <= set(env) and env["DATA_DIR"] == "/data"
    assert env["HP_EPOCHS"] == "3"
    cmd = c["command"]
    sep = cmd.index("--")
    assert cmd[:2] == ["python3", REPORT_PYZ]
    assert "--metric=accuracy" in cmd[:sep]
    assert cmd[sep + 1 :] == [
        "python3",
        "/app/train.py",
        "--lr=$(HP_LR)",
        "--layers=$(HP_NUM_LAYERS)",
    ]
    init = spec["initContainers"]
    assert [i["name"] for i in init] == ["kubeforge-report"]
    assert init[0]["command"][-1] == REPORT_PYZ
    assert any(m["mountPath"] == "/kubeforge/bin" for m in c["volumeMounts"])
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert any(
        v["name"] == "cfg" and v.get("configMap", {}).get("name") == "train-cfg"
        for v in spec["volumes"]
    )
    assert any(m["name"] == "cfg" and m["mountPath"] == "/etc/cfg" for m in c["volumeMounts"])
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "trainer-sa"
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_katib_style_study_reaches_the_best_trial(
    operator: Any,
    kube: Any,
    kubectl: Any,
    namespace: str,
    pod_driver: Any,
    user_objects: None,
    report_pyz: Path,
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    with Player(kube, pod_driver, namespace, report_pyz, tmp_path) as player:
        apply(kubectl, namespace, katib_study("katib"))
        st = wait_phase(kube, namespace, "tuningstudies", "katib", "Succeeded", 90)["status"]
    assert not player.errors, player.errors
    assert st["trials"] == {"total": 4, "running": 0, "succeeded": 4, "failed": 0, "pruned": 0}
    assert player.max_running <= 2
    assert len(player.pods) == 4
    for pod in player.pods.values():
        check_trial_pod(pod)

    tjs = kube.get(
        f"{API}/{namespace}/trainingjobs", query={"labelSelector": "kubeforge.io/tuningstudy=katib"}
    )["items"]
    assert len(tjs) == 4
    expected: dict[str, float] = {}
    for tj in tjs:
        meta = tj["metadata"]
        params = json.loads(meta["annotations"]["kubeforge.io/trial-params"])
        assert meta["annotations"]["kubeforge.io/objective-metric"] == "accuracy"
        value = accuracy(float(params["lr"]), int(params["num_layers"]))
        expected[meta["name"]] = value
        # only objective lines were reports (argparse's Namespace(lr=...) was none), each at
        # its epoch; the final metrics are the termination message's; no model was written
        reports = json.loads(meta["annotations"]["kubeforge.io/trial-reports"])
        want = [[e, accuracy(float(params["lr"]), int(params["num_layers"]), e)] for e in (1, 2, 3)]
        assert reports == [[s, pytest.approx(v)] for s, v in want]
        status = tj["status"]
        assert status["phase"] == "Succeeded"
        assert status["metrics"] == {"accuracy": pytest.approx(value)}
        assert "artifacts" not in status
    best = max(expected, key=lambda n: expected[n])
    assert st["bestTrial"]["name"] == best
    assert st["bestTrial"]["value"] == pytest.approx(expected[best])
    assert "model" not in st["bestTrial"]
    # the user's ServiceAccount was granted nothing (the progress channel needs no RBAC)
    rbs = kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings")
    assert rbs["items"] == []
    assert time.monotonic() - t0 < 90


# --------------------------------------------------------------------------- a TrainingJob
def test_byo_trainingjob_without_model_and_a_deployment_that_waits(
    operator: Any,
    kube: Any,
    kubectl: Any,
    namespace: str,
    pod_driver: Any,
    user_objects: None,
    report_pyz: Path,
    tmp_path: Path,
) -> None:
    tj = yaml.safe_load((ROOT / "examples" / "trainingjob-byo-katib-style.yaml").read_text())
    tj["spec"]["resources"] = {"cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"}
    name = tj["metadata"]["name"]
    apply(kubectl, namespace, tj)
    md = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "byo-serve"},
        "spec": {
            "model": {"fromTrainingJob": name},
            "resources": {"cpu": "100m", "memory": "128Mi"},
        },
    }
    apply(kubectl, namespace, md)

    pod = pod_driver.wait_pods(f"{TJ_LABEL}={name}", count=1, phase="Running", timeout=30)[0]
    c = pod["spec"]["containers"][0]
    assert c["command"][:2] == ["python3", REPORT_PYZ]
    assert not any(a.startswith("--metric") for a in c["command"])  # no study: every metric
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    # the example's own script (its ConfigMap), run under the real zipapp
    program = EXAMPLE_SCRIPT.read_text()
    play_pod(kube, pod_driver, namespace, pod, report_pyz, tmp_path / "byo", program)

    st = wait_phase(kube, namespace, "trainingjobs", name, "Succeeded", 30)["status"]
    # lr 0.05, epochs 5 (the example's hyperparameters): accuracy 0.5 + 5 * lr at the last epoch
    assert st["metrics"] == {"accuracy": pytest.approx(0.75), "loss": pytest.approx(0.25)}
    assert "artifacts" not in st
    assert st["progress"]["epoch"] == 5

    def waiting() -> JSON | None:
        conds = (
            get(kube, namespace, "modeldeployments", "byo-serve")
            .get("status", {})
            .get("conditions")
            or []
        )
        c = next((c for c in conds if c["type"] == "ModelLoaded"), None)
        ok = c and c["status"] == "False" and "without a model" in c.get("message", "")
        return c if ok else None

    cond = kube.wait_for("ModelDeployment waits for a model", waiting, timeout=30)
    assert cond["reason"] == "WaitingForModel"
    assert f"TrainingJob {name} succeeded without a model" in cond["message"]
