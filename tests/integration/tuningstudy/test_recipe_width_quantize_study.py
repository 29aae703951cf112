"""Model selection and compression in one study on the real control plane: accuracy against
onnx_latency_ms over recipe x width x quantize mode (NSGA-II), the operator killed twice
mid-study, the front non-dominated, and promote serving the chosen point's int8 model when it
wins."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from kubeforge.tuningstudy.selection import pareto_front
from test_tuningstudy import apply, params_of, study, trials, wait_phase

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"
LATENCY_BOUND = 0.2


def float_figures(recipe: str, width: int) -> dict[str, float]:
    """Wider is more accurate and slower; the CNN is more accurate and slower still."""
    cnn = recipe == "cnn-classifier"
    return {
        "val_accuracy": round(0.85 + 0.1 * (1 - 16 / width) + (0.03 if cnn else 0.0), 6),
        "onnx_latency_ms": round((0.1 + 0.004 * width) * (1.5 if cnn else 1.0), 6),
    }


def trial_metrics(params: dict[str, Any]) -> dict[str, float]:
    """What the trainer reports: the float model's figures, and the int8 model's beside them
    when the trial quantizes (0.2 points less accurate, 0.4x the latency)."""
    out = float_figures(params["recipe"], int(params["width"]))
    if params["quant"] != "none":
        out["int8_val_accuracy"] = round(out["val_accuracy"] - 0.002, 6)
        out["int8_onnx_latency_ms"] = round(out["onnx_latency_ms"] * 0.4, 6)
    return out


def served(params: dict[str, Any]) -> dict[str, float]:
    """The figures of the model the trial stands for (its int8 one when it quantized)."""
    m = trial_metrics(params)
    if params["quant"] == "none":
        return m
    return {"val_accuracy": m["int8_val_accuracy"], "onnx_latency_ms": m["int8_onnx_latency_ms"]}


def promoted(kube: Any, namespace: str) -> dict[str, Any] | None:
    md: dict[str, Any] | None = kube.get_if_exists(
        f"{API}/{namespace}/modeldeployments/select-serving"
    )
    return md


def test_recipe_width_quantize_study_promotes_the_chosen_int8_point(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    rng = random.Random(5)

    def behave(pod: Any, _env: dict[str, str]) -> list[tuple[Any, ...]]:
        name = pod["metadata"]["labels"]["kubeforge.io/trainingjob"]
        tj = kube.get(f"{API}/{namespace}/trainingjobs/{name}")
        params = params_of(tj)
        # the template fields the search set are in the trial's own spec
        assert tj["spec"]["model"]["recipe"] == params["recipe"]
        quantize = (tj["spec"].get("output") or {}).get("onnx", {}).get("quantize")
        assert (quantize or {}).get("mode", "none") == params["quant"]
        time.sleep(rng.uniform(0.2, 1.0))
        extra = {}
        if params["quant"] != "none":
            extra = {"modelInt8": f"file:///out/{name}/model.int8.onnx"}
        return [("succeed", trial_metrics(params), extra)]

    player = trainer_player("val_accuracy", behave)
    obj = study(
        "select",
        maxTrials=10,
        parallelism=2,
        algorithm={"name": "nsga2", "seed": 2, "settings": {"population_size": 4}},
        searchSpace={
            "recipe": {"type": "categorical", "choices": ["mlp-classifier", "cnn-classifier"],
                       "target": "model.recipe"},
            "width": {"type": "int", "low": 16, "high": 128, "step": 16},
            "quant": {"type": "categorical", "choices": ["none", "dynamic-int8", "static-int8"],
                      "target": "output.onnx.quantize.mode"},
        },
        promote={
            "modelDeployment": "select-serving",
            "select": {"maximize": "val_accuracy",
                       "subjectTo": {"onnx_latency_ms": {"max": LATENCY_BOUND}}},
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
    st = wait_phase(kube, namespace, "select", "Succeeded", timeout=240)["status"]
    assert not player.errors, player.errors

    tjs = trials(kube, namespace)
    assert sorted(t["metadata"]["name"] for t in tjs) == sorted(
        f"select-trial-{i}" for i in range(10)
    )
    assert st["trials"] == {"total": 10, "running": 0, "succeeded": 10, "failed": 0, "pruned": 0}
    pods = kube.get(
        f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "kubeforge.io/trainingjob"}
    )["items"]
    assert len(pods) == 10  # one pod each: nothing lost, no trial ran twice
    params = {int(t["metadata"]["labels"]["kubeforge.io/trial-number"]): params_of(t) for t in tjs}
    for n, t in ((int(t["metadata"]["labels"]["kubeforge.io/trial-number"]), t) for t in tjs):
        assert t["status"]["metrics"] == trial_metrics(params[n])

    # the front, judged on what each trial stands for, is non-dominated and complete
    points = {n: [served(p)["val_accuracy"], served(p)["onnx_latency_ms"]] for n, p in params.items()}
    front = [p["number"] for p in st["paretoFront"]]
    assert front == pareto_front(points, ["maximize", "minimize"])
    for p in st["paretoFront"]:
        assert p["values"] == served(params[p["number"]])

    feasible = {n: served(p) for n, p in params.items()
                if served(p)["onnx_latency_ms"] <= LATENCY_BOUND}
    want = max(sorted(feasible), key=lambda n: feasible[n]["val_accuracy"])
    best = st["bestTrial"]
    assert best["number"] == want and best["value"] == feasible[want]["val_accuracy"]
    # only int8 models of width > 16 keep the bound and beat width 16: int8 wins
    assert params[want]["quant"] != "none" and best["variant"] == "int8"
    md = kube.wait_for("ModelDeployment promoted", lambda: promoted(kube, namespace), timeout=60)
    assert md["spec"]["model"]["uri"] == f"file:///out/{best['name']}/model.int8.onnx"
    assert {e.get("reason") for e in kube.get(
        f"/api/v1/namespaces/{namespace}/events")["items"]} >= {"Promoted"}
