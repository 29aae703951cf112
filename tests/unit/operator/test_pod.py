"""The shared pod builder: every spec.pod field, PSS restricted, HP_ mapping."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api import PodSettings, TrainingScheduling
from kubeforge.api.trainingjob import TrainingResources
from kubeforge.pod import (
    container_resources,
    expand_env_refs,
    hp_env,
    pod_parts,
    restricted_violations,
    safe_name,
    scheduling_fields,
)

OWN = {"kubeforge.io/trainingjob": "x", "kubeforge.io/kind": "TrainingJob"}


def _pod(settings: dict[str, Any], **kw: Any) -> dict[str, Any]:
    parts = pod_parts(PodSettings.model_validate(settings), own_labels=OWN,
                      default_service_account="kubeforge-trainer", **kw)
    spec = parts.pod_spec()
    spec["containers"] = [parts.container("main", "img")]
    return {"parts": parts, "spec": spec}


FIELDS: list[dict[str, Any]] = [
    {},
    {"serviceAccountName": "irsa-sa"},
    {"env": [{"name": "FOO", "value": "bar"},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
    {"envFrom": [{"secretRef": {"name": "aws"}}, {"configMapRef": {"name": "cfg"}, "prefix": "C_"}]},
    {"volumes": [{"name": "data", "mountPath": "/data", "readOnly": True, "claimName": "pvc1"},
                 {"name": "cert", "mountPath": "/cert", "secretName": "tls"},
                 {"name": "cfg", "mountPath": "/cfg", "configMapName": "c"},
                 {"name": "scratch", "mountPath": "/scratch", "emptyDir": {"sizeLimit": "10Gi"}}]},
    {"labels": {"team": "a"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    {"imagePullSecrets": ["regcred"], "imagePullPolicy": "Always"},
    {"runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 3456},
]


@pytest.mark.parametrize("settings", FIELDS)
def test_restricted_holds_for_every_field(settings: dict[str, Any]) -> None:
    built = _pod(settings, inputs=[("pvc://in/x", "s1")], outputs=[("pvc://out/y", "s2")])
    assert restricted_violations(built["spec"]) == []


def test_fields_land_where_they_belong() -> None:
    merged: dict[str, Any] = {}
    for f in FIELDS:
        merged.update(f)
    built = _pod(merged)
    parts, spec = built["parts"], built["spec"]
    c = spec["containers"][0]
    assert spec["serviceAccountName"] == "irsa-sa"
    assert {"name": "FOO", "value": "bar"} in c["env"]
    assert c["envFrom"][1] == {"configMapRef": {"name": "cfg"}, "prefix": "C_"}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "pvc1", "readOnly": True}
    assert vols["cert"]["secret"] == {"secretName": "tls"}
    assert vols["cfg"]["configMap"] == {"name": "c"}
    assert vols["scratch"]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert parts.labels == {"team": "a", **OWN}
    assert parts.annotations == {"sidecar.istio.io/inject": "false"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["imagePullPolicy"] == "Always"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1234, "runAsGroup": 2345,
                                       "fsGroup": 3456, "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_default_service_account_and_defaults() -> None:
    spec = _pod({})["spec"]
    assert spec["serviceAccountName"] == "kubeforge-trainer"
    assert spec["securityContext"]["runAsUser"] == 1000


def test_kubeforge_env_comes_first_and_pvc_uris() -> None:
    built = _pod({"env": [{"name": "URL", "value": "$(KUBEFORGE_OUTPUT_URI)/x"}]},
                 env=[{"name": "KUBEFORGE_OUTPUT_URI", "value": "pvc://m/a"}],
                 inputs=[("pvc://m/data", ""), ("s3://b/k", "s3creds")],
                 outputs=[("pvc://m/a", "s3creds")])
    c = built["spec"]["containers"][0]
    assert [e["name"] for e in c["env"]] == ["KUBEFORGE_OUTPUT_URI", "URL"]
    # one claim used for input and output: mounted once, read-write
    assert [m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/pvc/m"] == [
        {"name": "kubeforge-pvc-m", "mountPath": "/mnt/pvc/m", "readOnly": False}]
    assert c["envFrom"] == [{"secretRef": {"name": "s3creds"}}]  # deduplicated


def test_restricted_check_catches_bad_pods() -> None:
    bad = {"hostNetwork": True, "securityContext": {"runAsUser": 0},
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True}}]}
    problems = restricted_violations(bad)
    assert any("hostPath" in p for p in problems) and any("privileged" in p for p in problems)
    assert any("runAsUser 0" in p for p in problems) and "host namespaces" in problems


@pytest.mark.parametrize(
    ("hps", "expected"),
    [
        ({"lr": 0.01}, {"HP_LR": "0.01"}),
        ({"batch_size": 64}, {"HP_BATCH_SIZE": "64"}),
        ({"num-epochs": 3}, {"HP_NUM_EPOCHS": "3"}),
        ({"model.dropout": 0.5}, {"HP_MODEL_DROPOUT": "0.5"}),
        ({"use_bn": True, "opt": "adam"}, {"HP_USE_BN": "true", "HP_OPT": "adam"}),
        ({"layers": [64, 32]}, {"HP_LAYERS": "[64,32]"}),
        ({"cfg": {"b": 1, "a": 2}}, {"HP_CFG": '{"a":2,"b":1}'}),
        ({"lr": 1e-4}, {"HP_LR": "0.0001"}),
    ],
)
def test_hp_mapping(hps: dict[str, Any], expected: dict[str, str]) -> None:
    assert {e["name"]: e["value"] for e in hp_env(hps)} == expected


def test_kubelet_expansion_rule() -> None:
    env = {"HP_LR": "0.1"}
    assert expand_env_refs("--lr=$(HP_LR)", env) == "--lr=0.1"
    assert expand_env_refs("--x=$(HP_MISSING)", env) == "--x=$(HP_MISSING)"
    assert expand_env_refs("$$(HP_LR)", env) == "$(HP_LR)"


def test_resources_and_scheduling() -> None:
    r = TrainingResources.model_validate({"cpu": "2", "memory": "4Gi", "cpuLimit": "4", "gpuResource": "amd.com/gpu"})
    out = container_resources(r, gpus=2)
    assert out["limits"] == {"cpu": "4", "memory": "4Gi", "amd.com/gpu": "2"}
    assert out["requests"]["amd.com/gpu"] == "2"
    sched = TrainingScheduling.model_validate({"tolerations": [{"key": "spot", "operator": "Exists"}],
                                               "affinity": {"nodeAffinity": {}}})
    f = scheduling_fields(sched, gpus=1, gpu_resource="amd.com/gpu")
    assert f["tolerations"][-1] == {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert f["affinity"] == {"nodeAffinity": {}}
    assert "tolerations" not in scheduling_fields(TrainingScheduling(), gpus=0)


def test_safe_name() -> None:
    assert safe_name("kubeforge-pvc-", "Data_1") == "kubeforge-pvc-data-1"
    long = safe_name("kubeforge-pvc-", "x" * 100)
    assert len(long) <= 63
