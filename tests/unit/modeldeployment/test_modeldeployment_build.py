"""ModelDeployment builders over a table of specs (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment import build as b
from kubeforge.pod import restricted_violations
from kubeforge.settings import Settings

S = Settings()
URI = "s3://bucket/models/digits/"


def md(spec: dict[str, Any], name: str = "digits") -> tuple[dict[str, Any], ModelDeploymentSpec]:
    obj = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }
    return obj, ModelDeploymentSpec.model_validate(spec)


def build(spec: dict[str, Any], uri: str | None = URI, **kw: Any) -> b.Desired:
    obj, s = md(spec)
    return b.build(obj, s, kw.pop("settings", S), uri, **kw)


def server(d: b.Desired) -> dict[str, Any]:
    assert d.deployment is not None
    c: dict[str, Any] = d.deployment.manifest["spec"]["template"]["spec"]["containers"][0]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


CPU = {"model": {"uri": URI}}
GPU = {
    "model": {"uri": URI},
    "runtime": {"executionProvider": "cuda"},
    "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
}
TRT = {
    "model": {"uri": URI},
    "runtime": {"executionProvider": "tensorrt"},
    "resources": {"gpus": 2, "gpuResource": "amd.com/gpu", "extended": {"example.com/fpga": 1}},
}
AUTO = {"model": {"uri": URI}, "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "target": 60}}
THREE = {"model": {"uri": URI}, "replicas": 3}


@pytest.mark.parametrize(
    "spec", [CPU, GPU, TRT, AUTO, THREE], ids=["cpu", "gpu", "tensorrt", "auto", "three"]
)
def test_every_case_passes_restricted_and_has_owner(spec: dict[str, Any]) -> None:
    d = build(spec)
    assert d.deployment is not None
    assert restricted_violations(d.deployment.manifest["spec"]["template"]["spec"]) == []
    for child in d.children():
        meta = child.manifest["metadata"]
        assert meta["name"] == "digits" and meta["namespace"] == "ml"
        ref = meta["ownerReferences"][0]
        assert ref["kind"] == "ModelDeployment" and ref["controller"] and ref["uid"] == "u-1"
        assert meta["labels"]["kubeforge.io/modeldeployment"] == "digits"
        assert meta["annotations"]["kubeforge.io/spec-hash"] == child.hash


def test_cpu_server_container() -> None:
    d = build(CPU)
    c = server(d)
    assert c["image"] == S.server_image
    assert c["command"] == ["kubeforge-server"]
    assert c["args"][:14] == [
        "--model", URI, "--name", "digits", "--http-port", "8080", "--grpc-port", "8081",
        "--max-batch-size", "32", "--max-delay-ms", "2", "--drain-seconds", "25",
    ]  # fmt: skip
    assert c["args"][14:] == [
        "--max-request-bytes", "67108864", "--max-json-bytes", "2097152",
        "--max-request-rows", "1024", "--max-queue", "256", "--max-connections", "1000",
        "--max-buffered-bytes", "268435456", "--max-header-bytes", "65536",
        "--header-timeout", "10", "--body-timeout", "60", "--keepalive-timeout", "65",
    ]  # fmt: skip
    assert env(c)["KUBEFORGE_EXECUTION_PROVIDER"] == "cpu"
    assert env(c)["KUBEFORGE_INTRA_OP_THREADS"] == "0"
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert [p["name"] for p in c["ports"]] == ["http", "grpc"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": b.PRESTOP_SLEEP_SECONDS}}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "kubeforge-tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    pod = d.deployment.manifest["spec"]["template"]["spec"]  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] > b.PRESTOP_SLEEP_SECONDS + b.DRAIN_SECONDS
    assert pod["automountServiceAccountToken"] is False
    assert "tolerations" not in pod
    dep = d.deployment.manifest["spec"]  # type: ignore[union-attr]
    assert dep["replicas"] == 1
    assert dep["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert dep["selector"]["matchLabels"] == {
        "kubeforge.io/modeldeployment": "digits",
        "kubeforge.io/kind": "ModelDeployment",
    }
    assert d.hpa is None and d.pdb is None
    assert ("autoscaling/v2", "HorizontalPodAutoscaler") in d.absent
    assert ("policy/v1", "PodDisruptionBudget") in d.absent
    assert d.service_monitor is None and d.prometheus_rule is None


def test_gpu_image_resources_toleration() -> None:
    d = build(GPU)
    c = server(d)
    assert c["image"] == S.server_gpu_image
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert env(c)["KUBEFORGE_EXECUTION_PROVIDER"] == "cuda"
    pod = d.deployment.manifest["spec"]["template"]["spec"]  # type: ignore[union-attr]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 900


def test_tensorrt_gpu_resource_and_extended() -> None:
    c = server(build(TRT))
    assert env(c)["KUBEFORGE_EXECUTION_PROVIDER"] == "tensorrt"
    assert c["resources"]["limits"]["amd.com/gpu"] == "2"
    assert c["resources"]["limits"]["example.com/fpga"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 1800


def test_runtime_image_and_batching() -> None:
    spec = {
        "model": {"uri": URI},
        "runtime": {
            "image": "registry.example/srv:1",
            "intraOpThreads": 4,
            "batching": {"maxBatchSize": 1, "maxDelayMs": 0.5},
        },
        "resources": {"cpuLimit": "2", "memoryLimit": "2Gi"},
    }
    c = server(build(spec))
    assert c["image"] == "registry.example/srv:1"
    assert c["args"][c["args"].index("--max-batch-size") + 1] == "1"
    assert c["args"][c["args"].index("--max-delay-ms") + 1] == "0.5"
    assert env(c)["KUBEFORGE_INTRA_OP_THREADS"] == "4"
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}


def test_autoscaling_owns_replicas_and_hpa_shape() -> None:
    d = build(AUTO)
    assert d.deployment is not None
    assert "replicas" not in d.deployment.manifest["spec"]
    assert d.hpa is not None
    hpa = d.hpa.manifest
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "digits",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 60},
            },
        }
    ]
    # minReplicas 2 → a PDB
    assert d.pdb is not None and d.pdb.manifest["spec"]["maxUnavailable"] == 1


def test_autoscaling_memory_and_inflight_setting() -> None:
    spec = {"model": {"uri": URI}, "autoscaling": {"metric": "memory"}}
    d = build(spec, settings=Settings(serving_inflight_target=8))
    assert d.hpa is not None
    metrics = d.hpa.manifest["spec"]["metrics"]
    assert metrics[0]["resource"]["name"] == "memory"
    assert metrics[1] == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "kubeforge_server_inflight_requests"},
            "target": {"type": "AverageValue", "averageValue": "8"},
        },
    }
    assert d.pdb is None  # minReplicas 1


def test_switching_to_autoscaling_keeps_live_replicas_while_we_own_them() -> None:
    d = build(AUTO, keep_replicas=9)
    assert d.deployment is not None and d.deployment.manifest["spec"]["replicas"] == 6
    d = build(AUTO, keep_replicas=4)
    assert d.deployment is not None and d.deployment.manifest["spec"]["replicas"] == 4


@pytest.mark.parametrize("replicas,pdb", [(0, False), (1, False), (2, True), (3, True)])
def test_pdb_only_above_one_replica(replicas: int, pdb: bool) -> None:
    d = build({"model": {"uri": URI}, "replicas": replicas})
    assert (d.pdb is not None) is pdb
    if d.pdb is not None:
        spec = d.pdb.manifest["spec"]
        assert spec["selector"]["matchLabels"]["kubeforge.io/modeldeployment"] == "digits"
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert d.deployment is not None and d.deployment.manifest["spec"]["replicas"] == replicas


def test_pvc_model_mounted_read_only() -> None:
    uri = "pvc://models/digits/v3/model.onnx"
    d = build({"model": {"uri": uri}}, uri=uri)
    c = server(d)
    assert c["args"][1] == uri
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/pvc/models")
    assert mount["readOnly"] is True
    pod = d.deployment.manifest["spec"]["template"]["spec"]  # type: ignore[union-attr]
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_secret_ref_and_pod_settings_through_shared_builder() -> None:
    spec = {
        "model": {"uri": URI, "secretRef": "s3-creds"},
        "pod": {
            "serviceAccountName": "model-reader",
            "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
            "envFrom": [{"configMapRef": {"name": "extra"}}],
            "volumes": [{"name": "cfg", "mountPath": "/etc/cfg", "configMapName": "cfg"}],
            "labels": {"team": "ml"},
            "annotations": {"sidecar.istio.io/inject": "false"},
            "imagePullSecrets": ["regcred"],
            "imagePullPolicy": "Always",
            "runAsUser": 2000,
        },
        "scheduling": {"nodeSelector": {"pool": "serving"}, "priorityClassName": "high"},
    }
    d = build(spec)
    c = server(d)
    assert {"secretRef": {"name": "s3-creds"}} in c["envFrom"]
    assert {"configMapRef": {"name": "extra"}} in c["envFrom"]
    assert env(c)["AWS_REGION"] == "eu-west-1"
    assert c["imagePullPolicy"] == "Always"
    assert any(m["mountPath"] == "/etc/cfg" for m in c["volumeMounts"])
    tmpl = d.deployment.manifest["spec"]["template"]  # type: ignore[union-attr]
    assert tmpl["metadata"]["labels"]["team"] == "ml"
    assert tmpl["metadata"]["labels"]["kubeforge.io/modeldeployment"] == "digits"
    assert tmpl["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = tmpl["spec"]
    assert pod["serviceAccountName"] == "model-reader"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["nodeSelector"] == {"pool": "serving"}
    assert pod["priorityClassName"] == "high"
    assert restricted_violations(pod) == []


def test_service_ports() -> None:
    svc = build(CPU).service.manifest
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 8080, "http"),
        ("grpc", 8081, "grpc"),
    ]
    assert svc["spec"]["selector"] == {
        "kubeforge.io/modeldeployment": "digits",
        "kubeforge.io/kind": "ModelDeployment",
    }


def test_monitoring_only_with_crds_and_as_asked() -> None:
    d = build(CPU, monitoring_crds=True)
    assert d.service_monitor is not None and d.prometheus_rule is not None
    sm = d.service_monitor.manifest
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    alerts = [r["alert"] for r in d.prometheus_rule.manifest["spec"]["groups"][0]["rules"]]
    assert alerts == [
        "KubeforgeModelHighErrorRate",
        "KubeforgeModelHighLatency",
        "KubeforgeModelReplicasNotReady",
    ]
    off = build(
        {"model": {"uri": URI}, "monitoring": {"serviceMonitor": False, "prometheusRule": False}},
        monitoring_crds=True,
    )
    assert off.service_monitor is None and off.prometheus_rule is None
    assert ("monitoring.coreos.com/v1", "ServiceMonitor") in off.absent


def test_waiting_for_model_makes_only_the_service() -> None:
    d = build(CPU, uri=None)
    assert d.deployment is None and d.hpa is None and d.pdb is None
    assert [c.kind for c in d.children()] == ["Service"]
    assert d.absent == []  # nothing is deleted while waiting


def test_model_change_changes_the_pod_template_only() -> None:
    a = build(CPU, uri="s3://b/m1/")
    c = build(CPU, uri="s3://b/m2/")
    assert a.deployment is not None and c.deployment is not None
    assert a.deployment.hash != c.deployment.hash
    assert a.service.hash == c.service.hash
    assert a.deployment.manifest["spec"]["selector"] == c.deployment.manifest["spec"]["selector"]


def test_build_is_deterministic() -> None:
    assert build(TRT).deployment == build(TRT).deployment


def test_url() -> None:
    assert b.url("digits", "ml") == "http://digits.ml.svc.cluster.local:8080/v2/models/digits"


def test_runtime_limits_reach_the_server_flags() -> None:
    """Every runtime.limits field becomes a flag kubeforge-server accepts, with its value."""
    from kubeforge_server.config import load_config

    spec = {**CPU, "runtime": {"limits": {"maxQueue": 8, "bodyTimeoutSeconds": 2.5}}}
    args = server(build(spec))["args"]
    cfg = load_config(args)
    assert cfg.max_queue == 8 and cfg.body_timeout == 2.5 and cfg.keepalive_timeout == 65
