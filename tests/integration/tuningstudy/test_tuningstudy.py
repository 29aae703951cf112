"""TuningStudy on the real control plane: the trainer player plays each trial pod with a known
objective function of the parameters it received (HP_* environment)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

API = "/apis/kubeforge.io/v1alpha1/namespaces"


def loss(params: dict[str, str]) -> float:
    return (float(params["x"]) - 1.0) ** 2 + (0.0 if params["opt"] == "adam" else 1.0)


def study(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "objective": {"metric": "loss", "direction": "minimize"},
        "searchSpace": {
            "x": {"type": "float", "low": -3.0, "high": 3.0},
            "opt": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
        "algorithm": {"name": "tpe", "seed": 0},
        "maxTrials": 12,
        "parallelism": 3,
        "maxFailedTrials": 3,
        "trialTemplate": {
            "spec": {
                "model": {"recipe": "mlp-classifier"},
                "dataset": {"uri": "builtin://digits"},
                "hyperparameters": {"epochs": 2},
                "resources": {"cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
                "runPolicy": {"backoffLimit": 0},
            }
        },
    }
    base.update(spec)
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": base,
    }


def apply(kubectl: Any, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def get_study(kube: Any, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = kube.get(f"{API}/{ns}/tuningstudies/{name}")
    return out


def trials(kube: Any, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get(
        f"{API}/{ns}/trainingjobs", query={"labelSelector": "kubeforge.io/tuningstudy"}
    )["items"]
    return items


def wait_phase(kube: Any, ns: str, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
    out: dict[str, Any] = kube.wait_for(
        f"TuningStudy {name} phase {phase}",
        lambda: (o := get_study(kube, ns, name)).get("status", {}).get("phase") == phase and o,
        timeout=timeout,
    )
    return out


def params_of(tj: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(tj["metadata"]["annotations"]["kubeforge.io/trial-params"]))


def str_params(p: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in p.items()}


def succeed_with_loss(pod: Any, params: dict[str, str]) -> list[tuple[Any, ...]]:
    return [("succeed", loss(params))]


def test_twelve_trials_at_parallelism_three(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    player = trainer_player("loss", succeed_with_loss)
    apply(kubectl, namespace, study("twelve"))
    st = wait_phase(kube, namespace, "twelve", "Succeeded", timeout=180)["status"]
    tjs = trials(kube, namespace)
    names = sorted(t["metadata"]["name"] for t in tjs)
    assert names == sorted(f"twelve-trial-{i}" for i in range(12))
    assert st["trials"] == {"total": 12, "running": 0, "succeeded": 12, "failed": 0, "pruned": 0}
    assert st["progress"] == "12/12"
    assert player.max_running <= 3
    values = {t["metadata"]["name"]: loss(str_params(params_of(t))) for t in tjs}
    best = min(values, key=lambda n: values[n])
    assert st["bestTrial"]["name"] == best
    assert st["bestTrial"]["value"] == pytest.approx(values[best])
    assert st["bestTrial"]["model"] == f"file:///out/{best}/model.onnx"
    # parameters reach the container and the trial's spec
    tj = next(t for t in tjs if t["metadata"]["name"] == best)
    assert tj["spec"]["hyperparameters"]["x"] == params_of(tj)["x"]
    assert tj["metadata"]["ownerReferences"][0]["kind"] == "TuningStudy"
    out = kubectl("get", "-n", namespace, "tuningstudy", "twelve")
    assert "12/12" in out and "Succeeded" in out


def test_target_stops_the_study(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    def behave(pod: Any, params: dict[str, str]) -> list[tuple[Any, ...]]:
        if pod["metadata"]["labels"]["kubeforge.io/trainingjob"].endswith("-trial-0"):
            time.sleep(1.0)
            return [("succeed", 0.01)]
        return [("hold",)]

    player = trainer_player("loss", behave)
    apply(kubectl, namespace, study("target", objective={"metric": "loss", "target": 0.05}))
    st = wait_phase(kube, namespace, "target", "Succeeded")["status"]
    cond = next(c for c in st["conditions"] if c["type"] == "Succeeded")
    assert cond["reason"] == "TargetReached"
    assert st["bestTrial"]["name"] == "target-trial-0"
    kube.wait_for("running trials stopped", lambda: len(player.stopped) == 2, timeout=30)
    assert set(player.stopped.values()) == {"study-succeeded"}
    st = kube.wait_for(
        "stopped trials counted",
        lambda: (
            (s := get_study(kube, namespace, "target")["status"])["trials"]["running"] == 0 and s
        ),
        timeout=30,
    )
    assert st["trials"]["total"] == 3 and st["trials"]["pruned"] == 2


def test_max_failed_trials(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    trainer_player("loss", lambda pod, params: [("fail", 1)])
    apply(kubectl, namespace, study("failing", parallelism=1, maxFailedTrials=2))
    st = wait_phase(kube, namespace, "failing", "Failed")["status"]
    cond = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "MaxFailedTrialsReached"
    assert st["trials"]["failed"] == 2 and st["trials"]["total"] == 2
    time.sleep(2)
    assert len(trials(kube, namespace)) == 2


def test_bad_curve_is_pruned(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    def behave(pod: Any, params: dict[str, str]) -> list[tuple[Any, ...]]:
        trial = pod["metadata"]["labels"]["kubeforge.io/trainingjob"]
        bad = trial.endswith("-trial-2")
        level = 5.0 if bad else 1.0
        acts: list[tuple[Any, ...]] = [("report", s, level - 0.1 * s) for s in range(4)]
        return [*acts, ("succeed", level - 0.4)]

    player = trainer_player("loss", behave)
    apply(
        kubectl,
        namespace,
        study(
            "prune",
            parallelism=1,
            maxTrials=3,
            earlyStopping={"name": "median", "startStep": 1, "settings": {"n_startup_trials": 2}},
        ),
    )
    st = wait_phase(kube, namespace, "prune", "Succeeded", timeout=180)["status"]
    assert player.stopped == {"prune-trial-2": "pruned"}
    assert st["trials"] == {"total": 3, "running": 0, "succeeded": 2, "failed": 0, "pruned": 1}
    tj = kube.get(f"{API}/{namespace}/trainingjobs/prune-trial-2")
    assert tj["metadata"]["annotations"]["kubeforge.io/stop"] == "pruned"
    assert tj["status"]["phase"] == "Failed"
    reports = json.loads(tj["metadata"]["annotations"]["kubeforge.io/trial-reports"])
    assert [s for s, _ in reports][:2] == [0, 1]


def test_operator_restarts_lose_and_double_no_trial(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    rng = random.Random(5)

    def behave(pod: Any, params: dict[str, str]) -> list[tuple[Any, ...]]:
        time.sleep(rng.uniform(0.2, 1.5))
        return [("succeed", loss(params))]

    trainer_player("loss", behave)
    apply(kubectl, namespace, study("restarts", maxTrials=10, parallelism=2))
    for i in range(5):
        time.sleep(rng.uniform(0.5, 3.0))
        if i % 2:
            ts_operator.proc.kill()  # a crash: no clean shutdown
            ts_operator.proc.wait()
        ts_operator.stop()
        time.sleep(rng.uniform(0.0, 1.0))
        ts_operator.start()
    st = wait_phase(kube, namespace, "restarts", "Succeeded", timeout=240)["status"]
    tjs = trials(kube, namespace)
    assert sorted(t["metadata"]["name"] for t in tjs) == sorted(
        f"restarts-trial-{i}" for i in range(10)
    )
    assert st["trials"] == {"total": 10, "running": 0, "succeeded": 10, "failed": 0, "pruned": 0}
    # each trial ran once: one pod each (a Job never recreated), one set of parameters
    pods = kube.get(
        f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "kubeforge.io/trainingjob"}
    )["items"]
    per_trial: dict[str, int] = {}
    for p in pods:
        t = p["metadata"]["labels"]["kubeforge.io/trainingjob"]
        per_trial[t] = per_trial.get(t, 0) + 1
    assert all(n == 1 for n in per_trial.values()), per_trial
    seen = {json.dumps(params_of(t), sort_keys=True) for t in tjs}
    assert len(seen) == 10
