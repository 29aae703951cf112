"""A valid 5 M-point grid study does not stall the operator (issue 18: with Optuna's
GridSampler it was built on the event loop: another TrainingJob waited 32 s for its Job,
/healthz timed out, RSS 1.48 GB, and the study got a 413 writing the grid into a trial).

Measured in one run: the time from creating a TrainingJob to its Job existing, alone (the
baseline) and right after the grid study was created; /healthz latency while the study starts.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import pytest
from kubeforge_cluster.client import ApiError

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"
TEMPLATE = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "hyperparameters": {"epochs": 1},
    "resources": {"cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
}


def _tj(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": TEMPLATE}


def _job_delay(kube: Any, ns: str, name: str, timeout: float = 60) -> float:
    """Seconds from creating TrainingJob `name` to its Job existing."""
    start = time.monotonic()
    kube.post(f"{API}/{ns}/trainingjobs", _tj(name))
    while time.monotonic() - start < timeout:
        try:
            kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
            return time.monotonic() - start
        except ApiError as err:
            if err.status != 404:
                raise
        time.sleep(0.02)
    raise AssertionError(f"no Job for {name} after {timeout} s")


def test_a_5m_point_grid_study_stalls_nothing(kube: Any, namespace: str, ts_operator: Any) -> None:
    ns = namespace
    baseline = _job_delay(kube, ns, "before")

    health: list[float] = []

    def probe_health() -> None:
        url = f"http://127.0.0.1:{ts_operator.liveness_port}/healthz"
        for _ in range(20):
            t = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                health.append(time.monotonic() - t)
            except OSError:
                health.append(float("inf"))
            time.sleep(0.1)

    study = {
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "TuningStudy",
        "metadata": {"name": "grid5m"},
        "spec": {
            "objective": {"metric": "loss"},
            "searchSpace": {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 2e-7}},
            "algorithm": {"name": "grid", "seed": 0},
            "maxTrials": 50, "parallelism": 4,
            "trialTemplate": {"spec": TEMPLATE},
        },
    }
    prober = threading.Thread(target=probe_health)
    prober.start()
    kube.post(f"{API}/{ns}/tuningstudies", study)
    during = _job_delay(kube, ns, "during")
    got = kube.wait_for(
        "the study's 4 trials",
        lambda: (lambda s: s if (s.get("status") or {}).get("trials", {}).get("total") == 4
                 else None)(kube.get(f"{API}/{ns}/tuningstudies/grid5m")),
        timeout=30,
    )
    prober.join()
    trials = kube.get(f"{API}/{ns}/trainingjobs", query={"labelSelector": "kubeforge.io/tuningstudy=grid5m"})
    sizes = [len(str(t["metadata"].get("annotations") or {})) for t in trials["items"]]
    print(f"\n[grid5m] Job of a TrainingJob: {baseline:.3f} s alone, {during:.3f} s right after a "
          f"5,000,001-point grid study; /healthz max {max(health):.3f} s over {len(health)} "
          f"probes; trial annotations <= {max(sizes)} bytes; study phase "
          f"{got['status']['phase']}")
    assert during <= baseline + 1.0
    assert max(health) < 1.0
    assert sizes and max(sizes) < 4096
    assert ts_operator.proc.poll() is None
