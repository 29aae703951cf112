"""The three kinds on real pods, with the real node's shared artifact store
(``pvc://kubeforge-artifacts/``: a hostPath PersistentVolume bound to a claim in each namespace):

- a ModelDeployment ``fromTrainingJob`` serves the model the trainer image trained (the trainer
  pod wrote it into the claim, the server pod reads it from there), Ready, and answers
  tritonclient from the host through `kubectl port-forward` to its Service;
- a 2-node TrainingJob: torchrun's static rendezvous on pod 0 through the headless Service, both
  pods exit 0, Succeeded;
- a small TuningStudy whose trials run as real pods and which picks a best trial;
- deleting each kind cascades to its children.

One node and one operator (a local process) for the module, one namespace per test. Needs the
trainer image archive (``KUBEFORGE_TEST_TRAINER_IMAGE=1 make test-deps`` builds it from its
Dockerfile; skipped with that reason elsewhere); the server image is built from cached layers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubeforge_cluster.portforward import port_forward
from kubeforge_cluster.realnode import NODE_NAME, RealNode, net
from realpods_support import (
    TRAINER_IMAGE,
    Kube,
    build_image,
    digits_trainingjob,
    install_crds,
    require_trainer_archive,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

np = pytest.importorskip("numpy")
httpclient = pytest.importorskip("tritonclient.http")

SERVER_IMAGE = "local/kubeforge-server:dev"
NAMESPACES = ("rp-serve", "rp-ddp", "rp-tune")
GROUP = "kubeforge.io/v1alpha1"


@pytest.fixture(scope="module")
def operator(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    trainer_archive = require_trainer_archive()
    server_archive = build_image("server")
    t = time.monotonic()
    real_node.import_images([trainer_archive, server_archive])
    print(f"trainer + server images in the node ({time.monotonic() - t:.1f}s)")
    from integration.kf_operator_process import OperatorProcess

    # the namespaces (each with the store's claim) exist before the operator starts watching them
    for ns in NAMESPACES:
        real_node.kubectl("create", "namespace", ns)
        kb = Kube(real_node, ns)
        kb.wait("default ServiceAccount", lambda kb=kb: kb.k("get", "sa", "default"))
        assert real_node.artifact_store(ns) == "pvc://kubeforge-artifacts/"
    install_crds(real_node)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(
        str(real_node.kubeconfig),
        log,
        KUBEFORGE_TRAINER_IMAGE=TRAINER_IMAGE,
        KUBEFORGE_SERVER_IMAGE=SERVER_IMAGE,
        KUBEFORGE_ARTIFACT_STORE="pvc://kubeforge-artifacts/",
        KUBEFORGE_NAMESPACES=",".join(NAMESPACES),
    ).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log tail:\n{op.logs(20)}")


def namespace(node: RealNode, ns: str) -> Kube:
    """The test's own namespace (made before the operator starts) with the artifact store's claim
    bound in it."""
    assert ns in NAMESPACES
    kb = Kube(node, ns)
    pvc = kb.get("pvc", "kubeforge-artifacts")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["status"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["volumeName"] == f"kubeforge-artifacts-{ns}"
    return kb


def wait_final(kb: Kube, op: Any, kind: str, name: str, timeout: float = 420) -> dict[str, Any]:
    try:
        return kb.wait_final(kind, name, timeout)
    except AssertionError:
        print(kb.k("get", "pods", "-o", "wide", check=False))
        print(
            kb.k("logs", "-l", "app.kubernetes.io/managed-by=kubeforge", "--tail=30", check=False)
        )
        print(op.logs(40))
        raise


def names(kb: Kube, kind: str, selector: str = "") -> list[str]:
    args = ["get", kind, "-o", "name"] + (["-l", selector] if selector else [])
    return kb.k(*args).split()


def cascades(kb: Kube, kind: str, name: str, children: list[tuple[str, str]]) -> None:
    """Delete ``kind/name``; every (kind, label selector) child list becomes empty."""
    assert all(names(kb, k, sel) for k, sel in children), "children exist before the delete"
    kb.k("delete", kind, name, "--wait=true", "--timeout=90s")
    kb.wait(
        f"children of {kind}/{name} deleted",
        lambda: not any(names(kb, k, sel) for k, sel in children),
        timeout=90,
    )


@pytest.mark.timeout(720)
def test_modeldeployment_serves_the_trained_model(real_node: RealNode, operator: Any) -> None:
    kb = namespace(real_node, "rp-serve")
    kb.apply(digits_trainingjob("digits", epochs=6))
    st = wait_final(kb, operator, "trainingjob", "digits")
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["metrics"]["val_accuracy"] > 0.9
    model_uri = st["artifacts"]["model"]
    assert model_uri.startswith("pvc://kubeforge-artifacts/rp-serve/digits/"), model_uri
    # the trainer pod (uid 1000) wrote it into the hostPath volume: the bytes are on the host
    on_host = real_node.artifacts_dir / "rp-serve" / model_uri[len("pvc://kubeforge-artifacts/") :]
    assert on_host.is_file() and on_host.stat().st_size == st["artifacts"]["bytes"]
    assert on_host.stat().st_uid == 1000

    kb.apply(
        {
            "apiVersion": GROUP,
            "kind": "ModelDeployment",
            "metadata": {"name": "digits"},
            "spec": {
                "model": {"fromTrainingJob": "digits"},
                "runtime": {"executionProvider": "cpu"},
                "resources": {"cpu": "500m", "memory": "512Mi"},
                "replicas": 1,
            },
        }
    )
    t = time.monotonic()
    md = wait_final(kb, operator, "modeldeployment", "digits", timeout=240)
    assert md["phase"] == "Ready", json.dumps(md, indent=1)
    assert md["model"]["uri"] == model_uri
    assert md["replicas"]["ready"] == 1
    print(f"ModelDeployment Ready {time.monotonic() - t:.1f}s after apply")
    pods = json.loads(
        kb.k("get", "pods", "-l", "app.kubernetes.io/managed-by=kubeforge", "-o", "json")
    )["items"]
    servers = [
        p
        for p in pods
        if p["metadata"]["name"].startswith("digits-")
        and "job-name" not in p["metadata"].get("labels", {})
    ]
    assert len(servers) == 1 and servers[0]["spec"]["nodeName"] == NODE_NAME
    claims = [
        v["persistentVolumeClaim"]
        for v in servers[0]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [{"claimName": "kubeforge-artifacts", "readOnly": True}]

    # tritonclient from the host through loopback: kubectl port-forward to the Service
    # (REALPODS.md: never a ClusterIP from the host)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.asarray(digits.data[:64], dtype=np.float32)
    with port_forward(kb.node.cluster, kb.ns, "service/digits", 8080) as local:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{local}")
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        inp, outp = meta["inputs"][0], meta["outputs"][0]
        i = httpclient.InferInput(inp["name"], list(x.shape), inp["datatype"])
        i.set_data_from_numpy(x, binary_data=True)
        res = client.infer("digits", [i], outputs=[httpclient.InferRequestedOutput(outp["name"])])
        client.close()
    scores = res.as_numpy(outp["name"])
    assert scores.shape == (64, 10)
    acc = float((scores.argmax(axis=1) == digits.target[:64]).mean())
    print(f"tritonclient -> port-forward 127.0.0.1:{local} -> Service digits: accuracy {acc:.3f}")
    assert acc > 0.85
    assert net.check_guard_counters() == []

    cascades(
        kb,
        "modeldeployment",
        "digits",
        [("deployment", ""), ("service", ""), ("pods", "!job-name")],
    )
    cascades(kb, "trainingjob", "digits", [("job", ""), ("pods", "job-name=digits")])


@pytest.mark.timeout(600)
def test_two_node_trainingjob_rendezvous_on_pod_0(real_node: RealNode, operator: Any) -> None:
    kb = namespace(real_node, "rp-ddp")
    kb.apply(digits_trainingjob("ddp", epochs=3, nodes=2, cpu="500m", memory="1536Mi"))
    # the headless Service of pod 0's rendezvous, before the pods run
    svc = kb.wait("headless Service ddp", lambda: kb.get("service", "ddp"), timeout=60)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["port"] == 29500
    st = wait_final(kb, operator, "trainingjob", "ddp")
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["metrics"]["val_accuracy"] > 0.8
    pods = json.loads(kb.k("get", "pods", "-l", "job-name=ddp", "-o", "json"))["items"]
    by_index = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods
    }
    assert sorted(by_index) == ["0", "1"], sorted(by_index)
    for idx, p in by_index.items():
        assert p["spec"]["hostname"] == f"ddp-{idx}" and p["spec"]["subdomain"] == "ddp"
        assert p["spec"]["nodeName"] == NODE_NAME
        (cs,) = p["status"]["containerStatuses"]
        assert cs["state"]["terminated"]["exitCode"] == 0, cs
        cmd = p["spec"]["containers"][0]["command"]
        assert cmd[cmd.index("--master-addr") + 1] == "ddp-0.ddp", cmd
    # both ranks exited 0: torchrun --nnodes 2 returns only after pod 1 joined pod 0's store
    # at ddp-0.ddp (resolved by CoreDNS from the headless Service) and training ended together
    assert net.check_guard_counters() == []
    cascades(kb, "trainingjob", "ddp", [("job", ""), ("service", ""), ("pods", "job-name=ddp")])


@pytest.mark.timeout(720)
def test_tuningstudy_trials_run_as_real_pods(real_node: RealNode, operator: Any) -> None:
    kb = namespace(real_node, "rp-tune")
    kb.apply(
        {
            "apiVersion": GROUP,
            "kind": "TuningStudy",
            "metadata": {"name": "search"},
            "spec": {
                "objective": {"metric": "val_loss", "direction": "minimize"},
                "searchSpace": {
                    "lr": {"type": "float", "low": 0.005, "high": 0.05, "log": True},
                    "hidden": {"type": "int", "low": 32, "high": 64, "step": 32},
                },
                "algorithm": {"name": "random", "seed": 0},
                "maxTrials": 2,
                "parallelism": 2,
                "trialTemplate": {
                    "retain": True,
                    "spec": {
                        "model": {"recipe": "mlp-classifier"},
                        "dataset": {"uri": "builtin://digits"},
                        "hyperparameters": {"epochs": 3, "batch_size": 64},
                        "resources": {"cpu": "500m", "memory": "1536Mi"},
                    },
                },
            },
        }
    )
    st = wait_final(kb, operator, "tuningstudy", "search", timeout=540)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["trials"]["succeeded"] == 2, st["trials"]
    trials = [n.split("/", 1)[1] for n in names(kb, "trainingjobs")]
    assert len(trials) == 2
    values = {}
    for t in trials:
        tst = kb.get("trainingjob", t)["status"]
        assert tst["phase"] == "Succeeded"
        values[t] = tst["metrics"]["val_loss"]
        assert tst["artifacts"]["model"].startswith(f"pvc://kubeforge-artifacts/rp-tune/{t}/")
        (p,) = json.loads(kb.k("get", "pods", "-l", f"job-name={t}", "-o", "json"))["items"]
        assert p["spec"]["nodeName"] == NODE_NAME
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    best = st["bestTrial"]
    assert best["name"] == min(values, key=lambda k: values[k]), (best, values)
    assert best["value"] == pytest.approx(values[best["name"]])
    print(f"TuningStudy best {best['name']} val_loss={best['value']:.4f} of {values}")
    cascades(kb, "tuningstudy", "search", [("trainingjobs", ""), ("jobs", ""), ("pods", "")])
