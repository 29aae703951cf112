"""The project's own server image in a real pod: ``kubeforge-server`` (built without Docker by
``cluster/images/build.py``) serves an ONNX model behind a ClusterIP Service; the host sends a
real inference request with tritonclient through `kubectl port-forward` to the Service (loopback,
never the ClusterIP), and another pod reaches it by its DNS name."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeforge_cluster.portforward import port_forward
from kubeforge_cluster.realnode import RealNode, net
from realpods_support import Kube, build_image, pod

pytestmark = pytest.mark.e2e

np = pytest.importorskip("numpy")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")

REPO = Path(__file__).resolve().parents[3]
SERVER_IMAGE = "local/kubeforge-server:dev"
DIMS = (4, 16, 3)


def build_tiny_mlp(path: Path, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(DIMS)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        last = i == len(DIMS) - 2
        out = "output" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out if last else f"p{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"p{i}"], [out]))
        cur = out
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", DIMS[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", DIMS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def server_image(real_node: RealNode) -> Iterator[str]:
    """Build (cached layers: warm ~10-20 s) and import the server image."""
    t = time.monotonic()
    archive = build_image("server")
    built = time.monotonic() - t
    t = time.monotonic()
    real_node.import_images([archive])
    print(f"server image: build {built:.1f}s, import {time.monotonic() - t:.1f}s")
    yield SERVER_IMAGE


@pytest.mark.timeout(900)  # a cold run builds the Debian base (~1 min) and the deps (~1 min)
def test_server_image_serves_onnx_behind_clusterip(
    real_node: RealNode, kube: Kube, server_image: str
) -> None:
    model_dir = real_node.run_dir / "models" / "tiny"
    model = build_tiny_mlp(model_dir / "model.onnx")
    model_dir.chmod(0o755)
    model.chmod(0o644)
    labels = {"app": "tiny-server"}
    container = {
        "name": "server",
        "image": server_image,
        "imagePullPolicy": "Never",
        "args": ["--model", "/models/model.onnx", "--name", "tiny", "--http-port", "8080"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "env": [{"name": "KUBEFORGE_INTRA_OP_THREADS", "value": "1"}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": 8080},
            "periodSeconds": 1,
        },
        "resources": {"limits": {"memory": "512Mi", "cpu": "1"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "tiny-server"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [container],
                        "volumes": [
                            {"name": "model", "hostPath": {"path": str(model_dir)}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
            },
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "tiny-server"},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 8000, "targetPort": 8080}],
            },
        }
    )
    t = time.monotonic()
    kube.wait(
        "tiny-server Ready",
        lambda: kube.get("deployment", "tiny-server")["status"].get("readyReplicas") == 1,
        timeout=120,
    )
    ready_s = time.monotonic() - t
    assert net.check_nat() == []

    x = np.random.default_rng(1).standard_normal((5, DIMS[0])).astype(np.float32)
    want = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    # from the host only through loopback: kubectl port-forward to the Service (never its ClusterIP)
    with port_forward(real_node.cluster, kube.ns, "service/tiny-server", 8000) as local:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{local}", network_timeout=10.0)
        try:
            assert client.is_model_ready("tiny")
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            t = time.monotonic()
            res = client.infer("tiny", [inp], outputs=[httpclient.InferRequestedOutput("output")])
            infer_ms = (time.monotonic() - t) * 1000
            got = res.as_numpy("output")
        finally:
            client.close()
    assert got.shape == (5, DIMS[-1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    print(
        f"server pod Ready {ready_s:.1f}s after apply; host -> port-forward -> Service infer {infer_ms:.0f} ms"
    )

    # from another pod, by the Service's DNS name
    kube.apply(pod("tiny-client", ["sleep", "3600"]))
    kube.wait(
        "tiny-client running",
        lambda: kube.get("pod", "tiny-client")["status"]["phase"] == "Running",
    )

    def metadata() -> dict[str, object] | None:
        out = kube.k(
            "exec",
            "tiny-client",
            "--",
            "timeout",
            "5",
            "wget",
            "-qO-",
            "http://tiny-server:8000/v2/models/tiny",
            check=False,
        )
        try:
            return dict(json.loads(out))
        except ValueError:
            return None

    meta = kube.wait("model metadata from a pod by DNS name", metadata, timeout=30)
    assert meta["name"] == "tiny"
    assert [i["name"] for i in meta["inputs"]] == ["input"]  # type: ignore[index]
    assert net.check_guard_counters() == []
