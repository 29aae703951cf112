"""The operator under failure: control-plane outage, operator crashes, two replicas, a watch it
may not list, API throttling. Each test counts Jobs per TrainingJob: exactly one each."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest
from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.testing import PodDriver
from robustness_kit import (
    OPERATOR_NS,
    OPERATOR_SA,
    RULES,
    TJ_API,
    create_namespace,
    metric,
    post_trainingjob,
    set_role,
    wait_one_job_each,
)

pytestmark = pytest.mark.integration


def test_operator_sigkilled_three_times_during_200_creates(
    admin: KubeClient, namespace: str, start_operator: Any
) -> None:
    names = [f"crash-{i:03d}" for i in range(200)]
    op = start_operator("crash-0")
    for i, name in enumerate(names):
        post_trainingjob(admin, namespace, name)
        if i in (50, 100, 150):
            op.kill()  # SIGKILL: no cleanup, mid-reconcile
            op = start_operator(f"crash-{i}")
    wait_one_job_each(admin, namespace, names, timeout=90)


def test_list_pods_forbidden_degrades_only_readiness(
    admin: KubeClient, namespace: str, start_operator: Any
) -> None:
    """`list pods` removed while the operator runs: readiness names pods, TrainingJobs still get
    their Jobs; restored: ready again (and pods watched again)."""
    op = start_operator("no-list-pods", KUBEFORGE_RESYNC_SECONDS="10")
    first = [f"ok-{i}" for i in range(5)]
    for name in first:
        post_trainingjob(admin, namespace, name)
    wait_one_job_each(admin, namespace, first, timeout=60)
    admin.wait_for("ready", lambda: op.readiness()[0] == 200, timeout=60)
    no_list = [
        {**r, "verbs": ["get", "watch", "patch"]} if r["resources"] == ["pods"] else r for r in RULES
    ]
    set_role(admin, no_list)
    try:
        _status, body = admin.wait_for(
            "readiness false naming pods",
            lambda: (r := op.readiness())[0] == 503 and "pods" in r[1].get("notListable", {}) and r,
            timeout=90,
        )
        assert list(body["notListable"]) == ["pods"], body
        assert metric(op, "kubeforge_watch_list_failures_total", resource="pods") >= 1
        names = [f"nolist-{i}" for i in range(10)]
        for name in names:
            post_trainingjob(admin, namespace, name)
        wait_one_job_each(admin, namespace, first + names, timeout=90)
        assert op.proc is not None and op.proc.poll() is None, "the operator exited"
    finally:
        set_role(admin, RULES)
    admin.wait_for("ready again", lambda: op.readiness()[0] == 200, timeout=120)
    assert "pods can be listed again" in op.logs(2000)


def test_jobs_forbidden_to_the_operator_keep_the_trainingjob_waiting_not_failed(
    admin: KubeClient, namespace: str, start_operator: Any
) -> None:
    """The operator's RBAC loses `create jobs` (a chart being mended; an API server that just
    restarted answers such 403s until its authorizer's caches fill): the TrainingJob is not
    failed for it but shows Synced=False OperatorForbidden with the API server's words; the
    permission back, it gets its one Job and Synced=True."""
    start_operator("no-create-jobs")
    set_role(admin, [
        {**r, "verbs": ["get", "list", "watch", "patch", "update", "delete"]}
        if r["resources"] == ["jobs"] else r for r in RULES
    ])
    path = f"{TJ_API}/namespaces/{namespace}/trainingjobs/denied"

    def synced() -> dict[str, Any] | None:
        conds = (admin.get(path).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Synced"), None)

    try:
        post_trainingjob(admin, namespace, "denied")
        cond = admin.wait_for("Synced=False", lambda: (c := synced()) and c["status"] == "False"
                              and c, timeout=60)
        assert cond["reason"] == "OperatorForbidden", cond
        assert 'cannot create resource "jobs"' in cond["message"], cond
        assert (admin.get(path).get("status") or {}).get("phase") != "Failed"
    finally:
        set_role(admin, RULES)
    wait_one_job_each(admin, namespace, ["denied"], timeout=90)
    admin.wait_for("Synced=True", lambda: (c := synced()) and c["status"] == "True", timeout=60)
    assert (admin.get(path).get("status") or {}).get("phase") != "Failed"


def test_throttled_by_priority_and_fairness(
    admin: KubeClient, namespace: str, start_operator: Any
) -> None:
    flow = "/apis/flowcontrol.apiserver.k8s.io/v1"
    admin.post(f"{flow}/prioritylevelconfigurations", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": "kubeforge-throttle"},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "limitResponse": {"type": "Reject"}}},
    })
    admin.post(f"{flow}/flowschemas", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": "kubeforge-throttle"},
        "spec": {
            "priorityLevelConfiguration": {"name": "kubeforge-throttle"},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                              "serviceAccount": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "clusterScope": True, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    })
    try:
        op = start_operator("throttled", KUBEFORGE_CONCURRENCY="16")
        names = [f"apf-{i:03d}" for i in range(100)]
        for name in names:
            post_trainingjob(admin, namespace, name)
        wait_one_job_each(admin, namespace, names, timeout=120)
        assert metric(op, "kubeforge_api_retries_total", cause="throttled") > 0, "no 429 seen"
        assert op.proc is not None and op.proc.poll() is None, "the operator died"
    finally:
        for path in (f"{flow}/flowschemas/kubeforge-throttle",
                     f"{flow}/prioritylevelconfigurations/kubeforge-throttle"):
            with contextlib.suppress(ApiError):
                admin.delete(path)


def _events(kube: KubeClient, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if (e.get("source") or {}).get("component") == "kubeforge-operator"]


def test_two_replicas_one_reconciles_and_the_standby_takes_over(
    admin: KubeClient, namespace: str, start_operator: Any
) -> None:
    lease_env = {
        "KUBEFORGE_LEADER_ELECTION": "1",
        "KUBEFORGE_LEASE_NAMESPACE": OPERATOR_NS,
        "KUBEFORGE_LEASE_NAME": f"lease-{namespace}",
        "KUBEFORGE_LEASE_SECONDS": "10",
        "KUBEFORGE_RENEW_SECONDS": "2",
    }
    a = start_operator("replica-a", **lease_env)
    b = start_operator("replica-b", **lease_env)
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/lease-{namespace}"
    lease = admin.wait_for("a Lease holder", lambda: (admin.get(lease_path)["spec"].get("holderIdentity")), timeout=30)
    study = {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "TuningStudy", "metadata": {"name": "ha"},
        "spec": {
            "objective": {"metric": "accuracy", "direction": "maximize"},
            "maxTrials": 8, "parallelism": 8,
            "searchSpace": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
            "trialTemplate": {"spec": {
                "model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"},
                "hyperparameters": {"epochs": 1},
                "resources": {"cpu": "10m", "memory": "32Mi", "shmSize": "16Mi"}}},
        },
    }
    admin.post(f"{TJ_API}/namespaces/{namespace}/tuningstudies", study)

    def trials() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = admin.get(f"{TJ_API}/namespaces/{namespace}/trainingjobs")["items"]
        return [t for t in items if (t["metadata"].get("labels") or {}).get("kubeforge.io/tuningstudy") == "ha"]

    admin.wait_for("8 trials", lambda: len(trials()) == 8, timeout=60)
    # only the leader writes: exactly 8 trials and each Event once
    time.sleep(3)
    assert len(trials()) == 8
    reasons = [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in _events(admin, namespace)]
    assert len(reasons) == len(set(reasons)), f"an Event posted twice: {reasons}"
    counts = [e.get("count", 1) for e in _events(admin, namespace)]
    assert all(c == 1 for c in counts), counts

    driver = PodDriver(admin, namespace, timeout=60)
    trial_names = sorted(t["metadata"]["name"] for t in trials())

    def finish(trial: str, accuracy: float) -> None:
        (pod,) = driver.wait_pods(f"kubeforge.io/trainingjob={trial}")
        msg = {"metrics": {"accuracy": accuracy}, "artifacts": {"model": f"file:///out/{trial}/model.onnx"}}
        driver.succeed(pod, message=json.dumps(msg))

    for i, trial in enumerate(trial_names[:4]):  # half the study under the first leader
        finish(trial, 0.5 + i / 100)

    # kill the leader: the standby takes over within 30 s
    leader = a if "acquired leadership" in a.logs(400) else b
    assert "acquired leadership" in leader.logs(400), "neither replica says it leads"
    standby = b if leader is a else a
    # exactly one active reconciler: the standby has written nothing at all (not even the Lease)
    assert standby.writes() == 0, "the standby wrote"
    assert leader.writes() >= 8
    t0 = time.monotonic()
    leader.kill()
    admin.wait_for(
        "the standby holds the Lease",
        lambda: admin.get(lease_path)["spec"].get("holderIdentity") not in (None, lease),
        timeout=30,
    )
    assert time.monotonic() - t0 < 30
    assert standby.proc is not None and standby.proc.poll() is None
    # the other half under the new leader: it finishes the study
    for i, trial in enumerate(trial_names[4:]):
        finish(trial, 0.6 + i / 100)
    path = f"{TJ_API}/namespaces/{namespace}/tuningstudies/ha"
    study_done = admin.wait_for(
        "the study Succeeded", lambda: (o := admin.get(path)).get("status", {}).get("phase") == "Succeeded" and o,
        timeout=90,
    )
    assert len(trials()) == 8
    assert study_done["status"]["bestTrial"]["name"] == trial_names[-1]
    # every Event once (a new leader repeating the last step meets a 409), none counted twice
    events = _events(admin, namespace)
    keys = [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in events]
    assert len(keys) == len(set(keys)) and all(e.get("count", 1) == 1 for e in events), keys
    # no flapping: the study's resourceVersion stays still for 60 s after it ended
    rv = study_done["metadata"]["resourceVersion"]
    time.sleep(60)
    assert admin.get(path)["metadata"]["resourceVersion"] == rv


def _still(kube: KubeClient, path: str, seconds: float) -> bool:
    rv = kube.get(path)["metadata"]["resourceVersion"]
    time.sleep(seconds)
    return bool(kube.get(path)["metadata"]["resourceVersion"] == rv)


def test_zz_apiserver_and_etcd_killed_and_restarted_mid_run(
    own_cluster: Any, admin: KubeClient, start_operator: Any
) -> None:
    """Last in the module: the control plane goes down twice (kube-apiserver, then etcd)."""
    ns = create_namespace(admin, "rb-outage")
    start_operator("outage")
    before = [f"before-{i:02d}" for i in range(50)]
    after = [f"after-{i:02d}" for i in range(50)]
    for name in before[:25]:
        post_trainingjob(admin, ns, name)
    own_cluster.kill_component("kube-apiserver")
    time.sleep(3)
    own_cluster.start_component("kube-apiserver")
    for name in before[25:]:
        post_trainingjob(admin, ns, name)
    own_cluster.kill_component("etcd")
    failed: list[BaseException] = []

    def create_after() -> None:
        try:
            for name in after:
                post_trainingjob(admin, ns, name, tries=240)
        except BaseException as exc:  # surfaced below
            failed.append(exc)

    writer = threading.Thread(target=create_after)
    writer.start()  # creates ride out the etcd outage
    time.sleep(3)
    own_cluster.start_component("etcd")
    writer.join(180)
    assert not failed, failed
    wait_one_job_each(admin, ns, before + after, timeout=60)
