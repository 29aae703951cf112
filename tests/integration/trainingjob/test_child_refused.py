"""A child the API server refuses for good ends its parent in Failed, with the API server's own
words and one Event, and no retry loop (issue 18). The refusal comes from what a cluster's own
policy engine does (Gatekeeper, Kyverno, a ValidatingAdmissionPolicy): it denies the Job, which
no CRD rule of kubeforge's can foresee."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from kubeforge_cluster.client import ApiError

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"
VAP = "/apis/admissionregistration.k8s.io/v1"


def _deny_blocked_jobs(kube: Any, ns: str) -> str:
    name = f"kf-test-deny-{ns}"
    kube.post(f"{VAP}/validatingadmissionpolicies", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["jobs"]}]},
            "validations": [{
                "expression": "!has(object.spec.template.metadata.labels) || "
                              "!('team' in object.spec.template.metadata.labels) || "
                              "object.spec.template.metadata.labels['team'] != 'blocked'",
                "message": "team blocked may not run jobs", "reason": "Forbidden"}],
        },
    })
    kube.post(f"{VAP}/validatingadmissionpolicybindings", {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {
                     "matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    })
    probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
             "spec": {"template": {"metadata": {"labels": {"team": "blocked"}}, "spec": {
                 "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}

    def denied() -> bool:
        try:
            kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", probe, query={"dryRun": "All"})
        except ApiError as err:
            return err.status == 403
        return False

    kube.wait_for("the policy in force", denied, timeout=30, interval=0.3)
    return name


def _refusals(operator: Any) -> float:
    """Reconciles of TrainingJobs stopped by a 403 for good (kubeforge_api_refusals_total)."""
    series = 'kubeforge_api_refusals_total{code="403",kind="TrainingJob",verdict="permanent"}'
    for line in operator.metrics().splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_job_denied_by_cluster_policy_fails_the_trainingjob_once(
    kube: Any, namespace: str, operator: Any
) -> None:
    ns = namespace
    policy = _deny_blocked_jobs(kube, ns)
    try:
        tj = {
            "apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "blocked"},
            "spec": {"model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"},
                     "pod": {"labels": {"team": "blocked"}}},
        }
        kube.post(f"{API}/{ns}/trainingjobs", tj)
        got = kube.wait_for(
            "the TrainingJob Failed",
            lambda: (lambda o: o if (o.get("status") or {}).get("phase") == "Failed" else None)(
                kube.get(f"{API}/{ns}/trainingjobs/blocked")),
            timeout=30,
        )
        status = got["status"]
        cond = next(c for c in status["conditions"] if c["type"] == "Failed")
        print("\n[refused]", status["message"])
        assert cond["reason"] == "ChildRejected", status
        assert status["message"].startswith("spec: the API server refused jobs 'blocked' (403")
        assert "team blocked may not run jobs" in status["message"]  # the API server's words
        version = got["metadata"]["resourceVersion"]
        refusals = _refusals(operator)
        assert refusals >= 1
        time.sleep(12)  # more than a resync period: no retry, no second status or Event
        again = kube.get(f"{API}/{ns}/trainingjobs/blocked")
        assert again["metadata"]["resourceVersion"] == version
        with pytest.raises(ApiError) as gone:
            kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/blocked")
        assert gone.value.status == 404
        assert operator.proc.poll() is None
        assert _refusals(operator) == refusals  # no second try
        events = kube.get(f"/api/v1/namespaces/{ns}/events",
                          query={"fieldSelector": "involvedObject.name=blocked"})["items"]
        assert [e["reason"] for e in events] == ["ChildRejected"]
    finally:
        for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
            with contextlib.suppress(ApiError):
                kube.delete(f"{VAP}/{kind}/{policy}")
