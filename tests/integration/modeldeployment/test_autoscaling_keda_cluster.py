"""ModelDeployment autoscaling on requests in flight, end to end with the real pieces: the real
KEDA operator and metrics API server (built by `make keda-bins`, run on the host: the aggregated
API `v1beta1.external.metrics.k8s.io` reached by the API server through the front proxy), a real
Prometheus (Debian's) scraping real `kubeforge-server` processes that play the pods, the
controller-manager's HPA controller, and the operator.

A load ramp of 1 → 4 → 16 → 64 closed-loop connections scales the replicas up; when the load
stops they come back down. Each batch of the model costs ~20 ms of CPU (see `_model`), so the
requests queue at the servers and 64 connections are ~64 requests in flight. Bounds (measured on
2 shared cores; printed on every run):
- 64 connections → the Deployment asks for >= 4 replicas within UP_BOUND_S
  (Prometheus scrape 1 s + HPA sync 15 s + KEDA's query; scale-up window 0 s);
- load stops → back to 1 replica within DOWN_BOUND_S (scale-down window 15 s + HPA sync 15 s).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.keda import Keda, LocalAddress
from kubeforge_cluster.keda import find as find_keda
from kubeforge_cluster.podplayer import PodPlayer
from kubeforge_cluster.prometheus_host import HostPrometheus
from kubeforge_cluster.testing import wait_until
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.integration

JSON = dict[str, Any]
MD_API = "/apis/kubeforge.io/v1alpha1"
NAME = "ramp"
TARGET = 8
MAX_REPLICAS = 6
UP_BOUND_S = 120.0
DOWN_BOUND_S = 150.0
LOOP_TRIPS = 20_000
BATCH = 8


def _required(reason: str) -> None:
    if os.environ.get("KUBEFORGE_REQUIRE_CLUSTER", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"KUBEFORGE_REQUIRE_CLUSTER is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def keda(cluster: Any) -> Iterator[Keda]:
    if not getattr(cluster, "local", False):
        pytest.skip("runs KEDA on the host beside a local control plane")
    missing = [n for n in ("keda-operator", "keda-adapter") if find_keda(n) is None]
    if missing:
        _required(f"{', '.join(missing)} missing: run `make keda-bins`")
    reason = LocalAddress.unsupported_reason() or HostPrometheus.unsupported_reason()
    if reason:
        _required(reason)
    k = Keda(cluster).start()
    yield k
    k.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[HostPrometheus]:
    p = HostPrometheus(tmp_path / "prometheus").start()
    yield p
    p.stop()


def _model(path: Path) -> Path:
    """output = input, after LOOP_TRIPS cheap steps per *batch* (a Loop on a scalar: ~20 ms of one
    core here, nearly independent of the batch size). Requests then queue at the servers the way
    they do at a busy model: with closed-loop clients, the requests in flight are about the
    connections, which is what the concurrency metric must see."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Sin", ["state_in"], ["state_out"])],
        "step",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [])],
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
         helper.make_node("Loop", ["trips", "cond", "total"], ["state_end"], body=body),
         helper.make_node("Mul", ["state_end", "zero"], ["nothing"]),  # keeps the Loop alive
         helper.make_node("Add", ["input", "nothing"], ["output"])],
        "busy-identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(LOOP_TRIPS, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


class Load:
    """Closed-loop clients: each connection sends the next inference when the last is answered,
    to the ready servers in turn (as the Service would spread them)."""

    BODY = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()

    def __init__(self, player: PodPlayer, labels: dict[str, str], model: str = NAME) -> None:
        self.model = model
        self.player = player
        self.labels = labels
        self.stop_all = threading.Event()
        self.threads: list[threading.Thread] = []
        self.ok = 0
        self.failed = 0
        self.lock = threading.Lock()

    def connections(self, n: int) -> None:
        while len(self.threads) < n:
            i = len(self.threads)
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            self.threads.append(t)
            t.start()

    def _run(self, i: int) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        k = i
        deadline = time.monotonic() + 600  # bounded whatever happens
        while not self.stop_all.is_set() and time.monotonic() < deadline:
            servers = self.player.servers(self.labels)
            if not servers:
                time.sleep(0.1)
                continue
            s = servers[k % len(servers)]
            k += 1
            host, port = s.url.split(":")
            conn = conns.get(s.url)
            try:
                if conn is None:
                    conn = conns[s.url] = http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("POST", f"/v2/models/{self.model}/infer", self.BODY,
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                with self.lock:
                    self.ok += r.status == 200
                    self.failed += r.status != 200
            except (OSError, http.client.HTTPException):  # a server gone or a closed keep-alive
                bad = conns.pop(s.url, None)
                if bad is not None:
                    bad.close()
                with self.lock:
                    self.failed += 1
                time.sleep(0.05)
        for c in conns.values():
            c.close()

    def stop(self) -> None:
        self.stop_all.set()
        for t in self.threads:
            t.join(timeout=15)


def _discovery(prom: HostPrometheus, player: PodPlayer, ns: str, labels: dict[str, str],
               stop: threading.Event) -> None:
    """The scrape targets follow the ready servers (a ServiceMonitor's job, here by hand)."""
    while not stop.wait(0.5):
        prom.set_targets([(s.url, {"namespace": ns, "pod": s.name})
                          for s in player.servers(labels)])


def _replicas(kube: KubeClient, ns: str, name: str = NAME) -> int:
    dep = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    return int(dep["spec"].get("replicas") or 0)


def _md(kube: KubeClient, ns: str, name: str = NAME) -> JSON:
    obj: JSON = kube.get(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}")
    return obj


def test_load_ramp_scales_up_then_down_with_real_keda(
    keda: Keda, prometheus: HostPrometheus, operator: Any, kube: KubeClient, kubectl: Any,
    namespace: str, tmp_path: Path,
) -> None:
    ns = namespace
    model = _model(tmp_path / "model" / "model.onnx")
    kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments", {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            # small batches of a busy model: requests queue at the servers
            "runtime": {"batching": {"maxBatchSize": BATCH}},
            "scheduling": {"tolerations": [
                {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]},
            "autoscaling": {
                "metric": "concurrency", "target": TARGET,
                "minReplicas": 1, "maxReplicas": MAX_REPLICAS,
                "scaleUpStabilization": "0s", "scaleDownStabilization": "15s",
                "prometheusAddress": prometheus.url,
            },
        },
    })
    labels = {"kubeforge.io/modeldeployment": NAME}
    player = PodPlayer(kube, tmp_path / "player", [ns], interval=0.5).start()
    stop_sd = threading.Event()
    sd = threading.Thread(target=_discovery, args=(prometheus, player, ns, labels, stop_sd),
                          daemon=True)
    sd.start()
    load = Load(player, labels)
    figures: dict[str, float] = {}
    try:
        # the ScaledObject (owned by the ModelDeployment) and KEDA's HPA on the external metric
        so = wait_until("the ScaledObject", lambda: _get(
            kube, f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{NAME}"), timeout=60)
        assert so["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        hpa = wait_until("KEDA's HPA", lambda: _get(
            kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/"
            f"keda-hpa-{NAME}"), timeout=60)
        assert _get(kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/"
                    f"{NAME}") is None  # no HPA of our own beside it
        metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        wait_until("one ready server", lambda: player.servers(labels), timeout=90)

        t0 = time.monotonic()
        for n, hold in ((1, 8.0), (4, 8.0), (16, 8.0)):
            load.connections(n)
            time.sleep(hold)
        # the aggregated API answers through the API server (front proxy → metrics server)
        ext = kube.get(f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}",
                       query={"labelSelector": f"scaledobject.keda.sh/name={NAME}"})
        assert ext["items"] and ext["items"][0]["metricName"] == metric
        t64 = time.monotonic()
        load.connections(64)
        wait_until(">= 4 replicas asked for", lambda: _replicas(kube, ns) >= 4,
                   timeout=UP_BOUND_S, interval=0.5)
        figures["up_from_64_s"] = time.monotonic() - t64
        figures["up_from_ramp_start_s"] = time.monotonic() - t0
        wait_until(">= 4 servers ready", lambda: len(player.servers(labels)) >= 4,
                   timeout=90, interval=0.5)
        figures["ready_from_64_s"] = time.monotonic() - t64
        print(f"\n[autoscaling] up: {figures}, requests ok={load.ok} failed={load.failed}")
        query = f'sum(kubeforge_server_inflight_requests{{namespace="{ns}",model="{NAME}"}})'
        inflight = wait_until("Prometheus sees the requests in flight",
                              lambda: (prometheus.query(query) or 0) > TARGET and
                              prometheus.query(query), timeout=30, interval=1)
        assert inflight > TARGET

        # the status shows the autoscaler's view; kubectl get md prints it
        def seen() -> JSON | None:
            view = (_md(kube, ns).get("status") or {}).get("autoscaling") or {}
            ok = view.get("currentValue") and (view.get("desiredReplicas") or 0) >= 4
            return view if ok else None

        view = wait_until("status.autoscaling under load", seen, timeout=60, interval=0.5)
        assert view["kind"] == "ScaledObject" and view["metric"] == "concurrency"
        assert float(view["currentValue"]) > TARGET / 2
        assert view["target"] == str(TARGET)
        out = kubectl("get", "md", NAME, "-n", ns)
        assert "SCALING" in out and "concurrency" in out, out

        t_stop = time.monotonic()
        load.stop()
        wait_until("back to 1 replica", lambda: _replicas(kube, ns) == 1,
                   timeout=DOWN_BOUND_S, interval=0.5)
        figures["down_after_stop_s"] = time.monotonic() - t_stop
        assert load.ok > 0 and load.failed <= load.ok * 0.01, (load.ok, load.failed)
        last = (_md(kube, ns).get("status") or {}).get("autoscaling") or {}
        print(f"\n[autoscaling] figures: {json.dumps({k: round(v, 1) for k, v in figures.items()})}"
              f" requests ok={load.ok} failed={load.failed} last view={last.get('summary')}")
    finally:
        load.stop()
        stop_sd.set()
        player.stop()
        # KEDA removes its finalizer from the ScaledObject: let it, while it still runs (the
        # namespace would otherwise stay Terminating after the module's KEDA stops)
        with contextlib.suppress(ApiError):
            kube.delete(f"{MD_API}/namespaces/{ns}/modeldeployments/{NAME}")
        with contextlib.suppress(TimeoutError):
            wait_until("the ScaledObject gone", lambda: _get(
                kube, f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{NAME}") is None,
                timeout=60, interval=0.5)


def test_rps_scales_on_the_request_rate(
    keda: Keda, prometheus: HostPrometheus, operator: Any, kube: KubeClient, namespace: str,
    tmp_path: Path,
) -> None:
    """metric rps: 4 closed-loop connections make far more than 10 requests/s, the rate()
    query through KEDA makes the Deployment ask for a second replica, and the status shows the
    rate per replica."""
    ns, name = namespace, "rate"
    model = _model(tmp_path / "model" / "model.onnx")
    kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments", {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "runtime": {"batching": {"maxBatchSize": BATCH}},
            "autoscaling": {"metric": "rps", "target": 10, "minReplicas": 1, "maxReplicas": 2,
                            "prometheusAddress": prometheus.url},
        },
    })
    labels = {"kubeforge.io/modeldeployment": name}
    player = PodPlayer(kube, tmp_path / "player", [ns], interval=0.5).start()
    stop_sd = threading.Event()
    threading.Thread(target=_discovery, args=(prometheus, player, ns, labels, stop_sd),
                     daemon=True).start()
    load = Load(player, labels, model=name)
    try:
        wait_until("one ready server", lambda: player.servers(labels), timeout=90)
        t0 = time.monotonic()
        load.connections(4)
        wait_until("2 replicas asked for", lambda: _replicas(kube, ns, name) == 2,
                   timeout=UP_BOUND_S, interval=0.5)
        up = time.monotonic() - t0

        def seen() -> JSON | None:
            view = (_md(kube, ns, name).get("status") or {}).get("autoscaling") or {}
            return view if float(view.get("currentValue") or 0) > 10 else None

        view = wait_until("status.autoscaling on rps", seen, timeout=60, interval=0.5)
        assert view["kind"] == "ScaledObject" and view["metric"] == "rps"
        print(f"\n[autoscaling] rps: 2 replicas {up:.1f}s after the load began; "
              f"view {view['summary']}")
    finally:
        load.stop()
        stop_sd.set()
        player.stop()
        with contextlib.suppress(ApiError):
            kube.delete(f"{MD_API}/namespaces/{ns}/modeldeployments/{name}")
        with contextlib.suppress(TimeoutError):
            wait_until("the ScaledObject gone", lambda: _get(
                kube, f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}") is None,
                timeout=60, interval=0.5)


def test_switching_metric_never_leaves_the_deployment_without_an_autoscaler(
    keda: Keda, operator: Any, kube: KubeClient, namespace: str
) -> None:
    """cpu → concurrency → cpu on the real cluster: polled every 50 ms, the Deployment always has
    kubeforge's HPA or the ScaledObject (and KEDA's HPA follows the ScaledObject)."""
    ns, name = namespace, "switch"
    md_path = f"{MD_API}/namespaces/{ns}/modeldeployments/{name}"
    hpa_path = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}"
    so_path = f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}"
    kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments", {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://bucket/m/"},
                 "resources": {"cpu": "100m", "memory": "128Mi"},
                 "autoscaling": {"metric": "cpu", "minReplicas": 1, "maxReplicas": 3}},
    })
    wait_until("kubeforge's HPA", lambda: _get(kube, hpa_path), timeout=60)
    samples: list[tuple[bool, bool]] = []
    stop = threading.Event()

    def sample() -> tuple[bool, bool]:
        # Two GETs are not one read: the HPA is read again after the ScaledObject, so that an HPA
        # made between the two reads (the switch back) is not taken for a moment with neither.
        hpa_before = _get(kube, hpa_path) is not None
        so = _get(kube, so_path) is not None
        return (hpa_before or _get(kube, hpa_path) is not None, so)

    def poll() -> None:
        while not stop.wait(0.05):
            samples.append(sample())

    samples.append(sample())
    assert samples[0] == (True, False)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        kube.patch(md_path, {"spec": {"autoscaling": {
            "metric": "concurrency", "prometheusAddress": "http://127.0.0.1:9"}}})
        wait_until("ScaledObject in, HPA out", lambda: _get(kube, so_path) and not _get(
            kube, hpa_path), timeout=60, interval=0.2)
        wait_until("KEDA's HPA", lambda: _get(
            kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/"
            f"keda-hpa-{name}"), timeout=60)
        kube.patch(md_path, {"spec": {"autoscaling": {"metric": "cpu", "prometheusAddress": None}}})
        wait_until("HPA in, ScaledObject out", lambda: _get(kube, hpa_path) and not _get(
            kube, so_path), timeout=60, interval=0.2)
        # The poller's last sample may have begun before the ScaledObject went (its two GETs are
        # not one read): the end state is sampled here, after the switch was seen, with it stopped.
        stop.set()
        poller.join(timeout=10)
        samples.append(sample())
    finally:
        stop.set()
        poller.join(timeout=10)
        with contextlib.suppress(ApiError):
            kube.delete(md_path)
        with contextlib.suppress(TimeoutError):
            wait_until("the ScaledObject gone", lambda: _get(kube, so_path) is None,
                       timeout=60, interval=0.5)
    # (each switch took well under a second here: few samples, none without an autoscaler)
    assert samples[-1] == (True, False)
    assert all(hpa or so for hpa, so in samples), samples
    assert any(so and not hpa for hpa, so in samples)  # the switch did happen in between


def test_scale_to_zero_is_refused_by_the_api_server(
    kube: KubeClient, kubeforge_crds: Any, namespace: str
) -> None:
    """No activator can run here: the CRD refuses minReplicas 0 and says what to install."""
    with pytest.raises(ApiError) as info:
        kube.post(f"{MD_API}/namespaces/{namespace}/modeldeployments", {
            "apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "zero"},
            "spec": {"model": {"uri": "s3://b/m/"},
                     "autoscaling": {"metric": "concurrency", "minReplicas": 0}},
        })
    text = str(info.value)
    assert "spec.autoscaling.minReplicas" in text and "activator" in text, text


def _get(kube: KubeClient, path: str) -> JSON | None:
    obj: JSON | None = kube.get_if_exists(path)
    return obj
