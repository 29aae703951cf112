"""A child the API server refuses for good ends its parent in Failed, with the API server's own
words and one Event, and no retry loop (issue 18). The case: an environment value so large that
the Job (which also carries the whole TrainingJob document) exceeds what the API server takes,
though the TrainingJob itself fits."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"


def test_a_refused_job_fails_the_trainingjob_once(kube: Any, namespace: str, operator: Any) -> None:
    ns = namespace
    big = "x" * (1_600_000)
    tj = {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "too-big-job"},
        "spec": {"model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"},
                 "pod": {"env": [{"name": "BLOB", "value": big}]}},
    }
    kube.post(f"{API}/{ns}/trainingjobs", tj)
    got = kube.wait_for(
        "the TrainingJob Failed",
        lambda: (lambda o: o if (o.get("status") or {}).get("phase") == "Failed" else None)(
            kube.get(f"{API}/{ns}/trainingjobs/too-big-job")),
        timeout=30,
    )
    status = got["status"]
    cond = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "ChildRejected", status
    assert status["message"].startswith("spec"), status["message"]
    assert "the API server refused" in status["message"]
    writes = operator.writes()
    time.sleep(12)  # more than a resync period: no retry, no second status, no second Event
    assert operator.writes() == writes
    events = kube.get(f"/api/v1/namespaces/{ns}/events",
                      query={"fieldSelector": "involvedObject.name=too-big-job"})["items"]
    assert [e["reason"] for e in events] == ["ChildRejected"]
