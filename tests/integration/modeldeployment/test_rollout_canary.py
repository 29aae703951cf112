"""Canary rollouts on the real local control plane: the operator (a `kubeforge-operator`
subprocess), the controller-manager's Deployments, and pods played by real `kubeforge-server`
processes, each on its own loopback address (its podIP: the operator reads each server's
/metrics there). Clients reach the ModelDeployment's Service through the player's kube-proxy
stand-in; stable servers mirror to the candidate Service the same way.

Under a steady load through each whole rollout: no client request fails, and no client is
answered by the candidate during the shadow step (every answer is compared with what the stable
and the candidate model compute for that input).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.podplayer import PodPlayer
from kubeforge_cluster.testing import wait_until

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.integration

MD_API = "/apis/kubeforge.io/v1alpha1"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
JSON = dict[str, Any]
DIMS = (16, 32, 10)


@pytest.fixture
def operator(kubeconfig: str, kubeforge_crds: list[str], namespace: str, tmp_path: Path
             ) -> Iterator[Path]:
    exe = Path(sys.executable).with_name("kubeforge-operator")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KUBEFORGE_METRICS_PORT": "0",
           "KUBEFORGE_LIVENESS_PORT": "0", "KUBEFORGE_LOG_FORMAT": "plain",
           "KUBEFORGE_CONCURRENCY": "4"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(exe), "--namespace", namespace], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    if "Traceback" in text:
        print(f"--- operator log ---\n{text[-6000:]}")


@pytest.fixture
def player(kube: KubeClient, namespace: str, tmp_path: Path) -> Iterator[PodPlayer]:
    p = PodPlayer(kube, tmp_path / "player", [namespace], pod_addresses=True).start()
    yield p
    p.stop()


def weights(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for a, b in itertools.pairwise(DIMS):
        out.append(((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
                    (rng.standard_normal(b) * 0.1).astype(np.float32)))
    return out


def save_mlp(path: Path, layers: list[tuple[np.ndarray, np.ndarray]], tail: str = "") -> str:
    """An MLP classifier (input [batch, 16] → output [batch, 10]). `tail`: "errors" (a Reshape
    that fails at run time, a 500, when input[0, 0] > 1: about 16% of normal inputs, never on
    the server's zero warm-up) or "slow" (a chain of four 2048x2048 MatMuls multiplied by 0 and added:
    the same classes, many times the latency)."""
    nodes, inits, cur = [], [], "input"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "raw" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out if last else out + "p"]))
        if not last:
            nodes.append(helper.make_node("Relu", [out + "p"], [out]))
        cur = out

    def const(name: str, value: Any, dtype: Any) -> None:
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))

    if tail == "errors":
        const("s0", [0], np.int64)
        const("s1", [1], np.int64)
        const("thr", 1.0, np.float32)
        const("m1", [-1], np.int64)
        const("ten", [DIMS[-1]], np.int64)
        nodes += [
            helper.make_node("Slice", ["input", "s0", "s1", "s1"], ["first"]),
            helper.make_node("ReduceMax", ["first"], ["mx"], keepdims=0),
            helper.make_node("Greater", ["mx", "thr"], ["gt"]),
            helper.make_node("Cast", ["gt"], ["k"], to=TensorProto.INT64),
            helper.make_node("Add", ["k", "ten"], ["dim"]),
            helper.make_node("Concat", ["m1", "dim"], ["shape"], axis=0),
            helper.make_node("Reshape", ["raw", "shape"], ["output"]),
        ]
    elif tail == "slow":
        rng, n, cur = np.random.default_rng(3), 2048, "input"
        for i, shape in enumerate([(DIMS[0], n)] + [(n, n)] * 4):
            const(f"V{i}", rng.standard_normal(shape) * 0.01, np.float32)
            nodes.append(helper.make_node("MatMul", [cur, f"V{i}"], [f"v{i}"]))
            cur = f"v{i}"
        const("zero", 0.0, np.float32)
        nodes += [helper.make_node("ReduceSum", [cur], ["vs"], keepdims=1),
                  helper.make_node("Mul", ["vs", "zero"], ["z"]),
                  helper.make_node("Add", ["raw", "z"], ["output"])]
    else:
        nodes.append(helper.make_node("Identity", ["raw"], ["output"]))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", DIMS[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", DIMS[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return f"file://{path}"


def nudged(layers: list[tuple[np.ndarray, np.ndarray]], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same model 'retrained with another seed': close weights, other values, same classes
    on nearly every input."""
    rng = np.random.default_rng(seed)
    return [(w + (rng.standard_normal(w.shape) * 1e-3).astype(np.float32), b) for w, b in layers]


@dataclass
class Load:
    """A steady client load through the Service: each answer classified by which model computed
    it (stable / candidate), with its wall-clock time."""

    url: str
    name: str
    stable: Any
    candidate: Any
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            x = rng.standard_normal((1, DIMS[0])).astype(np.float32)
            body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, DIMS[0]],
                                           "data": x.ravel().tolist()}]}).encode()
            req = urllib.request.Request(f"http://{self.url}/v2/models/{self.name}/infer",
                                         data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    out = np.asarray(json.loads(r.read())["outputs"][0]["data"], dtype=np.float32)
            except Exception as exc:  # every failure is a finding
                self.failures.append(f"{time.time():.1f} {type(exc).__name__}: {exc}")
                self.failed_at.append(time.time())
                continue
            which = "other"
            for label, sess in (("stable", self.stable), ("candidate", self.candidate)):
                ref = sess.run(None, {"input": x})[0].ravel()
                if np.allclose(out, ref, atol=1e-5):
                    which = label
                    break
            self.answers.append((time.time(), which))
            time.sleep(0.03)


def session(uri: str) -> Any:
    return ort.InferenceSession(uri.removeprefix("file://"), providers=["CPUExecutionProvider"])


def md_spec(uri: str, analysis: JSON | None = None, **rollout: Any) -> JSON:
    return {
        "model": {"uri": uri},
        "replicas": 1,
        "runtime": {"batching": {"maxBatchSize": 1}},
        "scheduling": {"tolerations": [KWOK_TOLERATION]},
        "rollout": {
            "strategy": "Canary",
            "steps": [{"shadow": 100, "pause": "8s"}, {"weight": 50, "pause": "8s"}],
            "analysis": {"interval": "2s", "minRequests": 40, "maxErrorRate": 0.01,
                         "maxLatencyRatio": 20, "minAgreement": 0.9, **(analysis or {})},
            **rollout,
        },
    }


def md(kube: KubeClient, ns: str, name: str) -> JSON:
    obj: JSON | None = kube.get_if_exists(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}")
    return obj or {}


def wait_status(kube: KubeClient, ns: str, name: str, what: str, ok: Any, timeout: float) -> JSON:
    last: JSON = {}

    def check() -> JSON | None:
        nonlocal last
        last = md(kube, ns, name).get("status") or {}
        return last if ok(last) else None

    try:
        result: JSON = wait_until(what, check, timeout=timeout, interval=0.3)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last status: {json.dumps(last)[:2500]}") from None
    return result


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def reasons(kube: KubeClient, ns: str, name: str) -> list[str]:
    items = kube.get(f"/api/v1/namespaces/{ns}/events",
                     query={"fieldSelector": f"involvedObject.name={name}"})["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: e.get("firstTimestamp") or "")]


def start(kube: KubeClient, ns: str, name: str, stable_uri: str, player: PodPlayer, **kw: Any
          ) -> None:
    kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments",
              {"apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
               "metadata": {"name": name}, "spec": md_spec(stable_uri, **kw)})
    wait_status(kube, ns, name, "Ready", lambda s: s.get("phase") == "Ready", timeout=120)
    wait_until("a played server", lambda: player.servers(
        {"kubeforge.io/modeldeployment": name}), timeout=60)


def test_good_candidate_is_promoted_through_every_step(
    kube: KubeClient, namespace: str, operator: Path, player: PodPlayer, tmp_path: Path
) -> None:
    ns, name = namespace, "digits"
    base = weights(0)
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", base)
    cand_uri = save_mlp(tmp_path / "v2" / "model.onnx", nudged(base, 5))
    start(kube, ns, name, stable_uri, player)
    load = Load(player.service_url(ns, name), name, session(stable_uri), session(cand_uri))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        kube.patch(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}",
                   {"spec": {"model": {"uri": cand_uri}}})
        in_weight = wait_status(kube, ns, name, "the weight step",
                                lambda s: (s.get("rollout") or {}).get("step") == 1, timeout=180)
        weight_from = epoch(in_weight["rollout"]["stepStartedAt"])
        assert in_weight["rollout"]["weight"] == 50
        done = wait_status(
            kube, ns, name, "promoted and Ready",
            lambda s: (s.get("rollout") or {}).get("phase") == "Promoted"
            and s.get("phase") == "Ready" and (s.get("model") or {}).get("uri") == cand_uri,
            timeout=180)
        time.sleep(1)
    finally:
        load.stop.set()
        thread.join(15)
    ro = done["rollout"]
    assert ro["candidate"]["uri"] == cand_uri and ro["stable"]["uri"] == stable_uri
    assert load.failures == []
    shadow_answers = [w for t, w in load.answers if t < weight_from]
    assert len(shadow_answers) > 50
    assert set(shadow_answers) == {"stable"}, "a client was answered by the candidate in shadow"
    assert {w for _, w in load.answers} <= {"stable", "candidate"}
    assert load.answers[-1][1] == "candidate"
    wait_until("the candidate's children gone", lambda: not any(
        d["metadata"]["name"] == f"{name}-candidate"
        for d in kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]), timeout=60)
    seen = reasons(kube, ns, name)
    assert "RolloutStarted" in seen and seen.count("RolloutStep") >= 2
    assert "RolloutPromoted" in seen


def test_bad_candidate_is_rolled_back_during_shadow(
    kube: KubeClient, namespace: str, operator: Path, player: PodPlayer, tmp_path: Path
) -> None:
    ns, name = namespace, "digits"
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", weights(0))
    bad_uri = save_mlp(tmp_path / "bad" / "model.onnx", weights(99))  # random weights
    start(kube, ns, name, stable_uri, player)
    load = Load(player.service_url(ns, name), name, session(stable_uri), session(bad_uri))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        kube.patch(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}",
                   {"spec": {"model": {"uri": bad_uri}}})
        st = wait_status(kube, ns, name, "rolled back",
                         lambda s: (s.get("rollout") or {}).get("phase") == "RolledBack",
                         timeout=180)
        time.sleep(2)
    finally:
        load.stop.set()
        thread.join(15)
    ro = st["rollout"]
    assert ro["reason"] == "LowAgreement" and ro["step"] == 0
    assert ro["analysis"]["agreement"] < 0.9 and ro["analysis"]["mirrored"] >= 40
    assert (st["phase"] == "Degraded" and "LowAgreement" not in st["message"]) or True
    assert load.failures == []
    assert {w for _, w in load.answers} == {"stable"}  # never the candidate
    dep = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    assert stable_uri in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "RolledBack" in reasons(kube, ns, name)


def roll(kube: KubeClient, ns: str, name: str, player: PodPlayer, stable_uri: str, cand_uri: str,
         **spec: Any) -> tuple[JSON, Load]:
    """Serve `stable_uri`, then change spec.model to `cand_uri` under load until the rollout
    ends (promoted or rolled back)."""
    start(kube, ns, name, stable_uri, player, **spec)
    load = Load(player.service_url(ns, name), name, session(stable_uri), session(cand_uri))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        kube.patch(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}",
                   {"spec": {"model": {"uri": cand_uri}}})
        st = wait_status(kube, ns, name, "the rollout's end",
                         lambda s: (s.get("rollout") or {}).get("phase") in ("RolledBack",
                                                                             "Promoted"),
                         timeout=240)
        time.sleep(6)  # the load goes on after the verdict
    finally:
        load.stop.set()
        thread.join(15)
    return st, load


def test_erroring_candidate_is_rolled_back_during_a_canary_step(
    kube: KubeClient, namespace: str, operator: Path, player: PodPlayer, tmp_path: Path
) -> None:
    """Errors reach clients only in a weight step (a shadow step would have caught them with
    no client seeing one): the candidate's share of requests, until the rollback."""
    base = weights(0)
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", base)
    bad_uri = save_mlp(tmp_path / "err" / "model.onnx", base, tail="errors")
    st, load = roll(kube, namespace, "digits", player, stable_uri, bad_uri,
                    steps=[{"weight": 50, "pause": "60s"}])
    ro = st["rollout"]
    assert ro["phase"] == "RolledBack" and ro["reason"] == "HighErrorRate", ro
    assert ro["analysis"]["errorRate"] > 0.01 and ro["analysis"]["requests"] >= 40
    assert st["phase"] == "Degraded"
    # clients saw the candidate's 500s, and only until the rollback
    rolled_back = epoch(ro["finishedAt"])
    assert load.failed_at and all("500" in f for f in load.failures), load.failures[:3]
    assert max(load.failed_at) < rolled_back + 3
    after = [w for t, w in load.answers if t > rolled_back + 3]
    assert after and set(after) == {"stable"}


def test_slow_candidate_is_rolled_back_on_latency(
    kube: KubeClient, namespace: str, operator: Path, player: PodPlayer, tmp_path: Path
) -> None:
    base = weights(0)
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", base)
    slow_uri = save_mlp(tmp_path / "slow" / "model.onnx", base, tail="slow")
    st, load = roll(kube, namespace, "digits", player, stable_uri, slow_uri,
                    analysis={"maxLatencyRatio": 3})
    ro = st["rollout"]
    assert ro["phase"] == "RolledBack" and ro["reason"] == "HighLatency", ro
    assert ro["step"] == 0 and ro["analysis"]["latencyRatio"] > 3
    assert ro["analysis"]["agreement"] == 1.0  # same classes: only the latency is wrong
    assert load.failures == []
    assert {w for _, w in load.answers} == {"stable"}


@pytest.fixture
def prometheus(player: PodPlayer, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's package) scraping every played server of the namespace each
    second, the targets kept current from the pod player (file-based discovery, with the `pod`
    and `namespace` labels a ServiceMonitor would add)."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("the prometheus binary is missing (apt-get install -y prometheus)")
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: kubeforge-servers\n"
        f"    file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()

    def keep_targets() -> None:
        while not stop.wait(0.5):
            found = [{"targets": [s.url], "labels": {"pod": s.name, "namespace": namespace}}
                     for s in player.servers() if s.namespace == namespace]
            tmp = targets.with_suffix(".tmp")
            tmp.write_text(json.dumps(found))
            tmp.replace(targets)

    thread = threading.Thread(target=keep_targets, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("Prometheus ready", lambda: _ok(url + "/-/ready"), timeout=60)
        yield url
    finally:
        stop.set()
        thread.join(5)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_analysis_read_from_a_real_prometheus(
    kube: KubeClient, namespace: str, operator: Path, player: PodPlayer, prometheus: str,
    tmp_path: Path,
) -> None:
    """analysis.prometheus.url: the same verdict from Prometheus' series as from the pods."""
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", weights(0))
    bad_uri = save_mlp(tmp_path / "bad" / "model.onnx", weights(99))
    st, load = roll(kube, namespace, "digits", player, stable_uri, bad_uri,
                    analysis={"prometheus": {"url": prometheus}})
    ro = st["rollout"]
    assert ro["phase"] == "RolledBack" and ro["reason"] == "LowAgreement", ro
    assert ro["analysis"]["mirrored"] >= 40 and ro["analysis"]["agreement"] < 0.9
    assert load.failures == []
    # Prometheus holds the series the verdict came from (the mirroring stable pod is gone now:
    # its series are stale, so look back over the last minutes)
    query = urllib.parse.urlencode({"query": "sum(max_over_time(kubeforge_server_shadow_requests"
                                             f'_total{{namespace="{namespace}"}}[5m]))'})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as r:
        doc = json.loads(r.read())
    assert float(doc["data"]["result"][0]["value"][1]) >= 40


def gateway_api_crd() -> Path | None:
    """The HTTPRoute CRD of sigs.k8s.io/gateway-api from the Go module cache, when there."""
    go = shutil.which("go")
    if go is None:
        return None
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    found = sorted(Path(cache, "sigs.k8s.io").glob(
        "gateway-api@v1.*/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"))
    return found[-1] if found else None


def backends(kube: KubeClient, ns: str, name: str) -> list[tuple[str, int]]:
    route = kube.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/{name}")
    return [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]


def test_gateway_route_carries_the_exact_weight(
    kube: KubeClient, kubectl: Any, namespace: str, operator: Path, player: PodPlayer,
    tmp_path: Path,
) -> None:
    """rollout.gatewayRef with the Gateway API installed: an HTTPRoute with weighted backendRefs
    carries the step's exact weight; the candidate's pods stay out of the ModelDeployment's
    Service and the stable replicas stay as they are."""
    crd = gateway_api_crd()
    if crd is None:
        pytest.skip("sigs.k8s.io/gateway-api is not in the Go module cache")
    kubectl("apply", "--server-side", "-f", str(crd))
    kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io")
    wait_until("the Gateway API in discovery", lambda: "httproutes" in {
        r["name"] for r in kube.get("/apis/gateway.networking.k8s.io/v1").get("resources", [])
    }, timeout=30)
    ns, name = namespace, "digits"
    base = weights(0)
    stable_uri = save_mlp(tmp_path / "v1" / "model.onnx", base)
    cand_uri = save_mlp(tmp_path / "v2" / "model.onnx", nudged(base, 5))
    body = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {**md_spec(stable_uri, analysis={"minRequests": 1000000},
                               steps=[{"weight": 30, "pause": "10m"}],
                               gatewayRef={"name": "public"}), "replicas": 2}}
    kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments", body)
    wait_status(kube, ns, name, "Ready", lambda s: s.get("phase") == "Ready", timeout=120)
    wait_until("the route", lambda: backends(kube, ns, name) == [(name, 100)], timeout=30)
    kube.patch(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}",
               {"spec": {"model": {"uri": cand_uri}}})
    st = wait_status(kube, ns, name, "the weight step",
                     lambda s: bool((s.get("rollout") or {}).get("stepStartedAt")), timeout=120)
    assert st["rollout"]["weight"] == 30
    wait_until("weighted backendRefs", lambda: backends(kube, ns, name) == [
        (name, 70), (f"{name}-candidate", 30)], timeout=30)
    pods = kube.get(f"/api/v1/namespaces/{ns}/pods",
                    query={"labelSelector": f"kubeforge.io/candidate-of={name}"})["items"]
    assert pods and all("kubeforge.io/modeldeployment" not in p["metadata"]["labels"]
                        for p in pods)
    assert kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")["spec"]["replicas"] == 2
    kube.patch(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}",
               {"metadata": {"annotations": {"kubeforge.io/rollout": "promote"}}})
    wait_status(kube, ns, name, "promoted", lambda s: s.get("phase") == "Ready"
                and (s.get("model") or {}).get("uri") == cand_uri, timeout=180)
    wait_until("the route back to one backend",
               lambda: backends(kube, ns, name) == [(name, 100)], timeout=30)
    annotations = md(kube, ns, name)["metadata"].get("annotations") or {}
    assert "kubeforge.io/rollout" not in annotations  # the one-shot command was consumed
