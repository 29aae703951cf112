"""A two-objective TuningStudy on the real control plane: accuracy against latency with
NSGA-II, the operator killed twice mid-study, the Pareto front, and promote.select serving the
chosen point."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from kubeforge.tuningstudy.selection import pareto_front
from test_tuningstudy import apply, params_of, study, trials, wait_phase

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"


def figures(params: dict[str, str]) -> dict[str, float]:
    """Wider is more accurate and slower; x away from 0 costs both."""
    width, x = int(params["width"]), float(params["x"])
    return {
        "val_accuracy": round(0.8 + 0.18 * (1 - 1 / width) - 0.02 * abs(x), 6),
        "onnx_latency_ms": round(0.05 * width + 0.01 * abs(x), 6),
    }


def promoted(kube: Any, namespace: str) -> dict[str, Any] | None:
    md: dict[str, Any] | None = kube.get_if_exists(
        f"{API}/{namespace}/modeldeployments/pareto-serving"
    )
    return md


def test_two_objective_study_survives_restarts_and_promotes_the_selected_point(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    rng = random.Random(3)

    def behave(pod: Any, params: dict[str, str]) -> list[tuple[Any, ...]]:
        time.sleep(rng.uniform(0.2, 1.0))
        return [("succeed", figures(params))]

    trainer_player("val_accuracy", behave)
    obj = study(
        "pareto",
        maxTrials=10,
        parallelism=2,
        algorithm={"name": "nsga2", "seed": 1, "settings": {"population_size": 4}},
        searchSpace={
            "width": {"type": "int", "low": 1, "high": 16},
            "x": {"type": "float", "low": -1.0, "high": 1.0},
        },
        promote={
            "modelDeployment": "pareto-serving",
            "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.4}}},
        },
    )
    spec = obj["spec"]
    del spec["objective"]
    spec["objectives"] = [
        {"metric": "val_accuracy", "direction": "maximize"},
        {"metric": "onnx_latency_ms", "direction": "minimize"},
    ]
    apply(kubectl, namespace, obj)
    for i in range(2):  # the operator dies twice mid-study (once without a clean shutdown)
        time.sleep(rng.uniform(1.0, 3.0))
        if i == 0:
            ts_operator.proc.kill()
            ts_operator.proc.wait()
        ts_operator.stop()
        time.sleep(0.5)
        ts_operator.start()
    st = wait_phase(kube, namespace, "pareto", "Succeeded", timeout=240)["status"]

    tjs = trials(kube, namespace)
    assert sorted(t["metadata"]["name"] for t in tjs) == sorted(
        f"pareto-trial-{i}" for i in range(10)
    )
    assert st["trials"] == {"total": 10, "running": 0, "succeeded": 10, "failed": 0, "pruned": 0}
    assert len({json.dumps(params_of(t), sort_keys=True) for t in tjs}) == 10  # none doubled
    pods = kube.get(
        f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "kubeforge.io/trainingjob"}
    )["items"]
    assert len(pods) == 10  # one pod each: no trial ran twice

    metrics = {
        int(t["metadata"]["labels"]["kubeforge.io/trial-number"]): t["status"]["metrics"]
        for t in tjs
    }
    points = {n: [m["val_accuracy"], m["onnx_latency_ms"]] for n, m in metrics.items()}
    assert [p["number"] for p in st["paretoFront"]] == pareto_front(
        points, ["maximize", "minimize"]
    )
    assert st["paretoFrontSize"] == len(st["paretoFront"])

    feasible = {n: m for n, m in metrics.items() if m["onnx_latency_ms"] <= 0.4}
    want = max(sorted(feasible), key=lambda n: feasible[n]["val_accuracy"])
    best = st["bestTrial"]
    assert best["number"] == want and best["value"] == feasible[want]["val_accuracy"]
    md = kube.wait_for("ModelDeployment promoted", lambda: promoted(kube, namespace), timeout=60)
    assert md["spec"]["model"]["uri"] == f"file:///out/{best['name']}/model.onnx"
