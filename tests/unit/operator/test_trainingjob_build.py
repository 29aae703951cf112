"""TrainingJob → Job (+ Service): table of cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kf_operator_helpers import SETTINGS, parsed, tj, with_spec
from kubeforge.pod import expand_env_refs, restricted_violations
from kubeforge.trainingjob.build import CONTAINER, QUEUE_LABEL, build


def _build(spec: dict[str, Any]) -> Any:
    obj = tj(spec)
    return build(obj, parsed(obj), SETTINGS)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(job)["env"]}


def test_one_node_cpu() -> None:
    d = _build(with_spec())
    job = d.job
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (1, 1, "Indexed")
    assert spec["suspend"] is False and spec["backoffLimit"] == 3
    assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 120
    assert "subdomain" not in pod and d.service is None
    c = _container(job)
    assert c["command"] == ["kubeforge-trainer"]  # one pod, one process: run directly
    assert c["image"] == SETTINGS.trainer_image
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    env = _env(job)
    doc = json.loads(env["KUBEFORGE_JOB"])
    assert doc["metadata"] == {"name": "digits", "namespace": "ml"}
    assert doc["spec"]["output"]["uri"] == "file:///var/lib/kubeforge/artifacts/ml/digits/"
    assert "suspend" not in doc["spec"] and "runPolicy" not in doc["spec"]
    assert env["KUBEFORGE_OUTPUT_URI"] == "file:///var/lib/kubeforge/artifacts/ml/digits/"
    assert env["KUBEFORGE_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["KUBEFORGE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (env["HP_LR"], env["HP_EPOCHS"], env["HP_BATCH_SIZE"]) == ("0.01", "10", "64")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/dev/shm" in mounts and "/var/lib/kubeforge/artifacts" in mounts
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["kubeforge-dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    labels = job["metadata"]["labels"]
    assert labels["kubeforge.io/trainingjob"] == "digits"
    assert labels["kubeforge.io/kind"] == "TrainingJob"
    assert spec["template"]["metadata"]["labels"]["kubeforge.io/trainingjob"] == "digits"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert owner["uid"] == "uid-1" and owner["kind"] == "TrainingJob"
    assert job["metadata"]["annotations"]["kubeforge.io/spec-hash"] == d.job_hash
    assert restricted_violations(pod) == []
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [2, 3]},
    }
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_four_nodes_eight_gpus() -> None:
    d = _build(
        with_spec(
            resources={"nodes": 4, "gpusPerNode": 8, "procsPerNode": 8, "shmSize": "16Gi",
                       "extended": {"vpc.amazonaws.com/efa": "4"}},
            scheduling={"nodeSelector": {"gpu": "h100"}, "priorityClassName": "high"},
        )
    )
    spec = d.job["spec"]
    assert (spec["completions"], spec["parallelism"]) == (4, 4)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "digits"
    c = _container(d.job)
    assert c["command"] == [
        "kubeforge-launch", "--nnodes", "4", "--nproc-per-node", "8",
        "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--master-addr", "digits-0.digits", "--master-port", "29500",
        "--no-python", "kubeforge-trainer",
    ]
    assert c["image"] == SETTINGS.trainer_gpu_image
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"]["vpc.amazonaws.com/efa"] == "4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "high"
    svc = d.service
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["name"] == "digits"
    assert svc["spec"]["selector"]["kubeforge.io/trainingjob"] == "digits"
    assert svc["metadata"]["ownerReferences"][0]["controller"] is True
    assert restricted_violations(pod) == []


def test_one_node_many_procs_is_standalone() -> None:
    c = _container(_build(with_spec(resources={"procsPerNode": 4})).job)
    assert c["command"][:6] == [
        "kubeforge-launch", "--nnodes", "1", "--nproc-per-node", "4", "--standalone"
    ]


def test_suspended() -> None:
    d = _build(with_spec(suspend=True))
    assert d.job["spec"]["suspend"] is True and not d.queued
    assert d.job_for_create()["spec"]["suspend"] is True


def test_queued_job_leaves_suspend_to_kueue() -> None:
    d = _build(with_spec(scheduling={"queueName": "team-a"}))
    assert d.queued
    assert d.job["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert "suspend" not in d.job["spec"]  # never in the apply configuration
    assert d.job_for_create()["spec"]["suspend"] is True  # created suspended, once
    # Kueue flipping suspend on the live Job does not change what we want to apply
    d2 = _build(with_spec(scheduling={"queueName": "team-a"}))
    assert d2.job_hash == d.job_hash


def test_run_policy_maps_and_only_mutable_fields_change() -> None:
    a = _build(with_spec())
    b = _build(with_spec(runPolicy={"backoffLimit": 0, "activeDeadlineSeconds": 600,
                                    "ttlSecondsAfterFinished": 60}))
    assert b.job["spec"]["backoffLimit"] == 0
    assert b.job["spec"]["activeDeadlineSeconds"] == 600
    assert b.job["spec"]["ttlSecondsAfterFinished"] == 60
    assert a.job_hash != b.job_hash
    assert a.job["spec"]["template"] == b.job["spec"]["template"]  # template is immutable
    c = _build(with_spec(suspend=True))
    assert a.job["spec"]["template"] == c.job["spec"]["template"]


def test_bring_your_own_code_stdout_collector() -> None:
    spec = {
        "image": "registry.example/katib-mnist:1",
        "command": ["python3", "/opt/mnist.py"],
        "args": ["--lr=$(HP_LR)", "--epochs=$(HP_NUM_EPOCHS)"],
        "hyperparameters": {"lr": 0.1, "num-epochs": 3},
        "metricsCollector": {"kind": "StdOut", "format": "text"},
    }
    d = _build(spec)
    c = _container(d.job)
    pod = d.job["spec"]["template"]["spec"]
    assert c["command"] == [
        "python3", "/kubeforge/bin/kubeforge-report.pyz", "--collector", "stdout",
        "--format", "text", "--", "python3", "/opt/mnist.py", "--lr=$(HP_LR)",
        "--epochs=$(HP_NUM_EPOCHS)",
    ]
    init = pod["initContainers"][0]
    assert init["image"] == SETTINGS.trainer_image
    assert init["command"] == ["cp", "/opt/kubeforge/bin/kubeforge-report.pyz",
                               "/kubeforge/bin/kubeforge-report.pyz"]
    assert any(m["mountPath"] == "/kubeforge/bin" for m in c["volumeMounts"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    # what the kubelet does with $(VAR) in the command
    expanded = [expand_env_refs(a, {k: v for k, v in env.items() if v is not None}) for a in c["command"]]
    assert expanded[-2:] == ["--lr=0.1", "--epochs=3"]
    assert restricted_violations(pod) == []
    # exit codes 2/3 are meaningful under kubeforge-report
    assert d.job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"


def test_own_code_without_collector_keeps_its_exit_codes() -> None:
    d = _build({"image": "me/train:1", "command": ["python3", "train.py"]})
    c = _container(d.job)
    assert c["command"] == ["python3", "train.py"]
    rules = d.job["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["Ignore"]
    assert "initContainers" not in d.job["spec"]["template"]["spec"]


def test_own_code_multi_node_under_torchrun_no_python() -> None:
    d = _build({"image": "me/train:1", "command": ["python3", "train.py"], "args": ["--x"],
                "resources": {"nodes": 2}})
    c = _container(d.job)
    assert c["command"][0] == "torchrun"  # a user image has no kubeforge-launch
    assert c["command"][-4:] == ["--no-python", "python3", "train.py", "--x"]


def test_file_collector_and_pattern() -> None:
    d = _build({"image": "me/t:1", "command": ["sh", "-c", "run"],
                "metricsCollector": {"kind": "File", "path": "/tmp/m.log", "format": "json",
                                     "pattern": "(?P<name>\\w+)=(?P<value>[0-9.]+)"}})
    cmd = _container(d.job)["command"]
    i = cmd.index("--")
    assert cmd[:i] == ["python3", "/kubeforge/bin/kubeforge-report.pyz", "--collector", "file",
                       "--format", "json", "--path", "/tmp/m.log", "--pattern",
                       "(?P<name>\\w+)=(?P<value>[0-9.]+)"]


def test_pvc_dataset_output_and_secrets() -> None:
    d = _build(with_spec(
        dataset={"uri": "pvc://data/digits.csv", "secretRef": "ds-creds"},
        output={"uri": "pvc://models/run1/", "secretRef": "out-creds"},
    ))
    pod = d.job["spec"]["template"]["spec"]
    c = _container(d.job)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mnt/pvc/data"]["readOnly"] is True
    assert mounts["/mnt/pvc/models"]["readOnly"] is False
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["kubeforge-pvc-data"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert not any(v["name"] == "kubeforge-artifacts" for v in pod["volumes"])
    assert c["envFrom"] == [{"secretRef": {"name": "ds-creds"}}, {"secretRef": {"name": "out-creds"}}]
    assert _env(d.job)["KUBEFORGE_OUTPUT_URI"] == "pvc://models/run1/"


def test_script_from_configmap() -> None:
    d = _build(with_spec(model={"script": {"configMap": "train-py", "key": "train.py"}}))
    c = _container(d.job)
    assert _env(d.job)["KUBEFORGE_SCRIPT_PATH"] == "/kubeforge/script/train.py"
    assert any(m["mountPath"] == "/kubeforge/script" for m in c["volumeMounts"])


@pytest.mark.parametrize("store", ["pvc://kubeforge-artifacts/", "s3://bucket/kf"])
def test_artifact_store_setting(store: str) -> None:
    from kubeforge.settings import Settings

    s = Settings(artifact_store=store)
    obj = tj(with_spec())
    d = build(obj, parsed(obj), s)
    env = {e["name"]: e.get("value") for e in _container(d.job)["env"]}
    assert env["KUBEFORGE_OUTPUT_URI"] == store.rstrip("/") + "/ml/digits/"
    mounts = [m["mountPath"] for m in _container(d.job)["volumeMounts"]]
    assert ("/mnt/pvc/kubeforge-artifacts" in mounts) == store.startswith("pvc://")


def test_build_is_deterministic() -> None:
    assert _build(with_spec()).job == _build(with_spec()).job
