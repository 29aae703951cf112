"""The whole product from pulled images: the trainer, server and operator images built from their
Dockerfiles by BuildKit, pushed to a loopback registry, the chart installed from that registry
as an OCI artifact, and then, on the real node, everything a user does:

- a TrainingJob (no ``spec.image``: the chart's default trainer image, pulled by containerd)
  trains the digits MLP, reports progress to the in-cluster operator with its projected token,
  and writes the model into the artifact store;
- a ModelDeployment ``fromTrainingJob`` serves that model from the pulled server image, with the
  answers onnxruntime gives on the host for the same file;
- a second TrainingJob retrains it, and the ModelDeployment walks a Canary rollout to it (shadow,
  then half the replicas) under in-cluster traffic, analysed from the servers' own metrics, and
  is promoted without a failed request.

Opt-in (``KUBEFORGE_SHIP_TRAINER_E2E=1``): the trainer image is ~6 GB (torch from PyPI bundles
CUDA; its wheels alone are 3.2 GB), and a cold run needs ~25 GB of temporary disk and ~12 min on
2 cores. The registry's storage is the kept default (``~/.cache/kubeforge/registry``) and the
node's image store is kept too, so a warm run re-sends and re-pulls nothing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeforge_cluster.portforward import port_forward
from kubeforge_cluster.realnode import RealNode, net
from kubeforge_cluster.registry import LocalRegistry
from realpods_support import Kube, digits_trainingjob, install_crds
from ship_support import (
    RELEASE_NS,
    helm,
    helm_install_from_registry,
    pulled_by_node,
    skip_module_unless_shipping_runs_here,
    trusted_registry,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("KUBEFORGE_SHIP_TRAINER_E2E") != "1",
        reason="the trainer image is ~6 GB (3.2 GB of wheels, ~25 GB of temporary disk, ~12 min "
        "cold on 2 cores): KUBEFORGE_SHIP_TRAINER_E2E=1 runs it",
    ),
]

if os.environ.get("KUBEFORGE_SHIP_TRAINER_E2E") == "1":
    skip_module_unless_shipping_runs_here()

np = pytest.importorskip("numpy")
ort = pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")

NS = "rp-ship-trainer"
GROUP = "kubeforge.io/v1alpha1"
STORE_PREFIX = "pvc://kubeforge-artifacts/"


def _digits_rows(n: int) -> Any:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.data[:n], dtype=np.float32), d.target[:n]


class Release:
    """What the module's fixture made: the registry, the pushed images, the installed chart."""

    def __init__(self, registry: LocalRegistry, pushed: dict[str, Any], kube: Kube) -> None:
        self.registry = registry
        self.pushed = pushed
        self.kube = kube
        self.op = Kube(kube.node, RELEASE_NS)

    def operator_logs(self, tail: int = 40) -> str:
        return self.op.k("logs", "deploy/kubeforge", f"--tail={tail}", check=False)

    def debug(self) -> None:
        print(self.kube.k("get", "pods,jobs,deploy", "-o", "wide", check=False))
        print(self.kube.k("get", "events", "--sort-by=.lastTimestamp", check=False)[-4000:])
        print(self.operator_logs())


@pytest.fixture(scope="module")
def release(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    from kubeforge_cluster import ship

    tmp = tmp_path_factory.mktemp("ship-trainer")
    with trusted_registry(real_node, tmp / "registry") as reg:
        t = time.monotonic()
        pushed = {
            p.name: p
            for p in ship.build_and_push(
                reg.host, ["operator", "server", "trainer"], run_dir=tmp / "buildkit"
            )
        }
        print(f"build+push of the three images: {time.monotonic() - t:.0f}s")
        for p in pushed.values():
            print(f"{p.ref}: {p.compressed_bytes / 1e6:.0f} MB, {p.layers} layers")
        chart_url = ship.push_chart(reg.host, tmp / "chart")
        install_crds(real_node)
        real_node.kubectl("create", "namespace", NS)
        store = real_node.artifact_store(NS)
        t = time.monotonic()
        helm_install_from_registry(
            real_node, chart_url, ship.app_version(), reg.host, f"artifactStore={store}"
        )
        print(f"helm install oci://...: operator Available in {time.monotonic() - t:.1f}s")
        kb = Kube(real_node, NS)
        kb.wait("default ServiceAccount", lambda: kb.k("get", "sa", "default"))
        rel = Release(reg, pushed, kb)
        try:
            yield rel
        finally:
            helm(real_node, "uninstall", "kubeforge", "-n", RELEASE_NS, "--wait")


def _train(rel: Release, name: str, **hyper: Any) -> dict[str, Any]:
    tj = digits_trainingjob(name, epochs=6)
    tj["spec"]["hyperparameters"].update(hyper)
    rel.kube.apply(tj)
    t = time.monotonic()
    try:
        # the first one waits for containerd to pull and unpack the trainer image (~3 GB)
        st = rel.kube.wait_final("trainingjob", name, timeout=1500)
    except AssertionError:
        rel.debug()
        print(rel.kube.k("logs", "-l", f"job-name={name}", "--tail=40", check=False))
        raise
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    print(f"TrainingJob {name} Succeeded {time.monotonic() - t:.0f}s after apply: {st['metrics']}")
    return st


def _on_host(node: RealNode, uri: str) -> Path:
    assert uri.startswith(STORE_PREFIX), uri
    return node.artifacts_dir / NS / uri[len(STORE_PREFIX) :]


@pytest.fixture(scope="module")
def trained(release: Release) -> dict[str, Any]:
    return _train(release, "digits")


@pytest.mark.timeout(1800)
def test_the_trainer_image_is_pushed_once(release: Release, tmp_path: Path) -> None:
    from kubeforge_cluster import ship

    trainer = release.pushed["trainer"]
    # base layers, then ONE layer with the venv (torch) and small ones after it: a code change
    # re-sends the small app layer, never the gigabytes (the runtime stage starts FROM deps)
    sizes = [
        int(x["size"])
        for x in json.loads(ship.crane("manifest", "--insecure", trainer.ref))["layers"]
    ]
    big = [s for s in sizes if s > 100e6]
    print(f"trainer layers (MB): {[round(s / 1e6, 1) for s in sizes]}")
    assert len(big) == 1 and big[0] > 1e9, sizes
    assert sizes[-1] < 20e6, "the app layer comes last and is small"
    before = release.registry.blob_uploads()
    t = time.monotonic()
    (again,) = ship.build_and_push(release.registry.host, ["trainer"], run_dir=tmp_path / "bk")
    print(f"unchanged trainer rebuild+push {time.monotonic() - t:.0f}s")
    assert again.digest == trainer.digest
    assert release.registry.blob_uploads() == before, "an unchanged trainer uploads no blob"


@pytest.mark.timeout(1800)
def test_trainingjob_from_the_pulled_trainer_is_served(
    real_node: RealNode, release: Release, trained: dict[str, Any]
) -> None:
    from kubeforge_cluster import ship

    kb = release.kube
    version = ship.app_version()
    host = release.registry.host
    # the TrainingJob named no image: the chart's default, from the registry
    pods = json.loads(kb.k("get", "pods", "-l", "job-name=digits", "-o", "json"))["items"]
    assert pods and {c["image"] for p in pods for c in p["spec"]["containers"]} == {
        f"{host}/kubeforge/trainer:{version}"
    }
    assert trained["metrics"]["val_accuracy"] > 0.9 and trained["metrics"]["epoch"] == 6
    assert int(trained["progress"]["step"]) > 0, "progress reached the in-cluster operator"
    model = _on_host(real_node, trained["artifacts"]["model"])
    assert model.is_file() and model.stat().st_size == trained["artifacts"]["bytes"]

    kb.apply(
        {
            "apiVersion": GROUP,
            "kind": "ModelDeployment",
            "metadata": {"name": "digits-served"},
            "spec": {
                "model": {"fromTrainingJob": "digits"},
                "runtime": {"executionProvider": "cpu"},
                "resources": {"cpu": "250m", "memory": "512Mi"},
                "replicas": 1,
            },
        }
    )
    try:
        md = kb.wait_final("modeldeployment", "digits-served", timeout=300)
    except AssertionError:
        release.debug()
        raise
    assert md["phase"] == "Ready", json.dumps(md, indent=1)
    assert md["model"]["uri"] == trained["artifacts"]["model"]

    x, y = _digits_rows(64)
    sess = ort.InferenceSession(str(model))
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with port_forward(real_node.cluster, NS, "service/digits-served", 8080) as local:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{local}")
        meta = client.get_model_metadata("digits-served")
        inp, outp = meta["inputs"][0], meta["outputs"][0]
        i = httpclient.InferInput(inp["name"], list(x.shape), inp["datatype"])
        i.set_data_from_numpy(x, binary_data=True)
        res = client.infer("digits-served", [i])
        client.close()
    got = res.as_numpy(outp["name"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    acc = float((got.argmax(axis=1) == y).mean())
    print(f"served by the pulled server image: accuracy {acc:.3f} on 64 rows, equal to onnxruntime")
    assert acc > 0.85
    assert {"operator", "server", "trainer"} <= pulled_by_node(release.registry)
    assert net.check_guard_counters() == []
    assert net.check_listeners() == []


LOAD_SCRIPT = r"""
import json, os, sys, time, urllib.request
url = os.environ["URL"]
rows = json.load(open("/load/rows.json"))
meta = json.load(urllib.request.urlopen(url.rsplit("/infer", 1)[0], timeout=5))
name = meta["inputs"][0]["name"]
ok = failed = 0
end = time.time() + float(os.environ["SECONDS_TO_RUN"])
i = 0
while time.time() < end and not os.path.exists("/tmp/stop"):
    body = json.dumps({"inputs": [{"name": name, "shape": [1, 64], "datatype": "FP32",
                                   "data": rows[i % len(rows)]}]}).encode()
    i += 1
    try:
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        ok += 1
    except Exception as e:
        failed += 1
        print("FAILED", type(e).__name__, e, flush=True)
    if i % 200 == 0:
        print(json.dumps({"ok": ok, "failed": failed}), flush=True)
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "done": True}), flush=True)
"""


@pytest.mark.timeout(1800)
def test_canary_rollout_to_a_retrained_model(
    real_node: RealNode, release: Release, trained: dict[str, Any]
) -> None:
    from kubeforge_cluster import ship

    kb = release.kube
    name = "digits-canary"
    kb.apply(
        {
            "apiVersion": GROUP,
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {"fromTrainingJob": "digits"},
                "runtime": {"executionProvider": "cpu"},
                "resources": {"cpu": "200m", "memory": "512Mi"},
                "replicas": 2,
                "rollout": {
                    "strategy": "Canary",
                    "steps": [{"shadow": 100, "pause": "15s"}, {"weight": 50, "pause": "15s"}],
                    "analysis": {
                        "interval": "3s",
                        "minRequests": 30,
                        "maxErrorRate": 0.01,
                        "maxLatencyRatio": 20,
                        "minAgreement": 0.8,
                    },
                },
            },
        }
    )
    md = kb.wait_final("modeldeployment", name, timeout=300)
    assert md["phase"] == "Ready", json.dumps(md, indent=1)
    stable_uri = md["model"]["uri"]
    retrained = _train(release, "digits-b", lr=0.02, hidden=48)
    cand_uri = retrained["artifacts"]["model"]
    assert cand_uri != stable_uri

    # in-cluster traffic (pods may use the Service's ClusterIP; the host never does): a pod of
    # the pulled server image posting real digits rows, one at a time
    x, _ = _digits_rows(64)
    kb.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "load-rows"},
            "data": {"rows.json": json.dumps(x.tolist())},
        }
    )
    kb.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "load"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "load",
                        "image": release.pushed["server"].ref,
                        "command": ["python", "-c", LOAD_SCRIPT],
                        "env": [
                            {
                                "name": "URL",
                                "value": f"http://{name}:8080/v2/models/{name}/infer",
                            },
                            {"name": "SECONDS_TO_RUN", "value": "600"},
                        ],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "volumeMounts": [{"name": "rows", "mountPath": "/load"}],
                    }
                ],
                "volumes": [{"name": "rows", "configMap": {"name": "load-rows"}}],
            },
        }
    )
    kb.wait(
        "the load pod answering",
        lambda: '"ok"' in kb.k("logs", "load", check=False),
        timeout=120,
    )
    t = time.monotonic()
    kb.k(
        "patch", "modeldeployment", name, "--type=merge",
        "-p", json.dumps({"spec": {"model": {"fromTrainingJob": "digits-b"}}}),
    )  # fmt: skip

    seen_steps: set[tuple[int, int]] = set()
    #: the last analysis figures read in each step (step index -> status.rollout.analysis)
    analyses: dict[int, dict[str, Any]] = {}

    def promoted() -> dict[str, Any] | None:
        st = kb.get("modeldeployment", name).get("status", {})
        ro = st.get("rollout") or {}
        if ro.get("phase") == "Progressing":
            seen_steps.add((int(ro.get("step", -1)), int(ro.get("weight") or 0)))
            if ro.get("analysis"):
                analyses[int(ro["step"])] = dict(ro["analysis"])
        if ro.get("phase") in ("RolledBack", "Failed"):
            raise AssertionError(f"rollout ended {ro.get('phase')}: {json.dumps(ro, indent=1)}")
        ok = ro.get("phase") == "Promoted" and st.get("phase") == "Ready"
        return dict(st) if ok and (st.get("model") or {}).get("uri") == cand_uri else None

    try:
        st = kb.wait("canary promoted", promoted, timeout=600)
    except AssertionError:
        release.debug()
        print(kb.k("logs", "load", "--tail=20", check=False))
        raise
    took = time.monotonic() - t
    time.sleep(3)  # a few requests on the promoted model
    kb.k("exec", "load", "--", "touch", "/tmp/stop")
    kb.wait("the load pod done", lambda: '"done": true' in kb.k("logs", "load", check=False))
    summary = json.loads(kb.k("logs", "load").strip().splitlines()[-1])
    ro = st["rollout"]
    print(
        f"canary promoted {took:.0f}s after the patch; steps seen {sorted(seen_steps)}; "
        f"analyses {analyses}; load {summary}"
    )
    assert ro["stable"]["uri"] == stable_uri and ro["candidate"]["uri"] == cand_uri
    assert (1, 50) in seen_steps, "the weight step was walked"
    # the verdicts rested on real traffic: mirrored copies compared in shadow (the two models
    # agree on most digits), candidate answers counted in the weight step
    shadow, weighted = analyses.get(0, {}), analyses.get(1, {})
    assert shadow.get("mirrored", 0) >= 30 and shadow.get("agreement", 0) >= 0.8, analyses
    assert weighted.get("requests", 0) >= 30 and weighted.get("errors") == 0, analyses
    assert summary["failed"] == 0 and summary["ok"] > 100, summary
    events = kb.k("get", "events", "--field-selector", f"involvedObject.name={name}")
    assert "RolloutStarted" in events and "RolloutPromoted" in events
    # the candidate's children are gone; the stable Deployment serves the retrained model
    kb.wait(
        "the candidate Deployment gone",
        lambda: f"{name}-candidate" not in kb.k("get", "deploy", "-o", "name"),
        timeout=120,
    )
    images = {
        c["image"]
        for p in json.loads(kb.k("get", "pods", "-l", f"kubeforge.io/modeldeployment={name}",
                                 "-o", "json"))["items"]
        for c in p["spec"]["containers"]
    }  # fmt: skip
    assert images == {f"{release.registry.host}/kubeforge/server:{ship.app_version()}"}, images
    assert net.check_guard_counters() == []
