"""The demo's pod player and resources, without a cluster."""

from __future__ import annotations

from kubeforge_cluster.demo import FINAL, PROMOTED, documents
from kubeforge_cluster.podplayer import pod_env, program_of
from kubeforge_cluster.progress import loopback_url, projected_token_source


def test_program_of_recognises_kubeforge_containers() -> None:
    assert program_of({"command": ["kubeforge-trainer"]}) == "trainer"
    assert (
        program_of(
            {
                "command": [
                    "torchrun",
                    "--nnodes",
                    "1",
                    "--standalone",
                    "--no-python",
                    "kubeforge-trainer",
                ]
            }
        )
        == "trainer"
    )
    assert program_of({"command": ["kubeforge-server"], "args": ["--model", "x"]}) == "server"
    assert program_of({"command": ["python3", "train.py"]}) is None
    assert (
        program_of(
            {
                "command": [
                    "python3",
                    "/kubeforge/bin/kubeforge-report.pyz",
                    "--",
                    "python3",
                    "kubeforge-trainer",
                ]
            }
        )
        == "trainer"  # kubeforge-report runs locally; the command after -- as it is
    )


def test_pod_env_fills_the_downward_api() -> None:
    pod = {
        "metadata": {"name": "p-0", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
        "status": {"podIP": "10.0.0.1"},
    }
    container = {
        "env": [
            {"name": "KUBEFORGE_JOB", "value": '{"spec": {}}'},
            {
                "name": "KUBEFORGE_POD_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]
    }
    env = pod_env(pod, container)
    assert env == {
        "KUBEFORGE_JOB": '{"spec": {}}',
        "KUBEFORGE_POD_NAME": "p-0",
        "NS": "ns",
        "L": "b",
    }


def test_demo_documents_are_valid_and_smaller_in_quick_mode() -> None:
    from kubeforge.api import ModelDeploymentSpec, TrainingJobSpec, TuningStudySpec

    full, quick = documents(False), documents(True)
    for tj, ts, md in (full, quick):
        TrainingJobSpec.model_validate(tj["spec"])
        TuningStudySpec.model_validate(ts["spec"])
        ModelDeploymentSpec.model_validate(md["spec"])
        assert md["spec"]["model"] == {"fromTrainingJob": tj["metadata"]["name"]}
        # accuracy against latency; the chosen point is promoted to its own ModelDeployment
        assert [o["metric"] for o in ts["spec"]["objectives"]] == ["val_accuracy", "onnx_latency_ms"]
        assert ts["spec"]["promote"]["modelDeployment"] == PROMOTED != md["metadata"]["name"]
        assert not PROMOTED.startswith(md["metadata"]["name"] + "-")  # its pods tell apart
        assert ts["spec"]["promote"]["select"] == {
            "maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 1.0}}}
    assert quick[1]["spec"]["maxTrials"] < full[1]["spec"]["maxTrials"]
    assert (
        quick[0]["spec"]["hyperparameters"]["epochs"] < full[0]["spec"]["hyperparameters"]["epochs"]
    )
    assert set(FINAL) == {d["kind"] for d in full}


def test_a_command_under_kubeforge_report_is_played_as_a_trainer() -> None:
    wrapped = {"command": ["python3", "/kubeforge/bin/kubeforge-report.pyz", "--collector",
                           "stdout", "--", "python3", "-c", "print(1)"]}
    assert program_of(wrapped) == "trainer"
    assert program_of({"command": ["python3", "/kubeforge/bin/kubeforge-report.pyz"]}) is None


def test_reports_go_to_the_operator_on_loopback_with_the_pods_token_settings() -> None:
    url = "https://kubeforge-progress.kubeforge-system.svc:8443/v1/namespaces/ml/trainingjobs/t/progress"
    assert loopback_url(url, "https://127.0.0.1:4443") == (
        "https://127.0.0.1:4443/v1/namespaces/ml/trainingjobs/t/progress"
    )
    pod = {"spec": {"volumes": [
        {"name": "x", "emptyDir": {}},
        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "kubeforge.io/progress", "expirationSeconds": 600, "path": "token"}}]}},
    ]}}
    assert projected_token_source(pod) == {
        "audience": "kubeforge.io/progress", "expirationSeconds": 600, "path": "token"
    }
    assert projected_token_source({"spec": {}}) is None
