"""Fixtures for the TuningStudy integration tests: the operator as a real process (restartable),
and a trainer player that plays every trial pod with a known objective of its parameters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kf_operator_process import OperatorProcess
from kubeforge_cluster.progress import report_for_pod

TRIAL_LABEL = "kubeforge.io/trainingjob"
JSON = dict[str, Any]


@pytest.fixture
def ts_operator(cluster: Any, kubeforge_crds: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh operator per test (the restart test stops and starts it)."""
    op = OperatorProcess(str(cluster.kubeconfig), tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


def pod_params(pod: JSON) -> dict[str, str]:
    """The trial's parameters as the container sees them (HP_* environment)."""
    out: dict[str, str] = {}
    for c in pod["spec"]["containers"]:
        for e in c.get("env") or []:
            if e["name"].startswith("HP_") and "value" in e:
                out[e["name"][3:].lower()] = e["value"]
    return out


class TrainerPlayer:
    """Plays the trainer in every trial pod of a namespace, in a thread.

    `behave(pod, params)` returns a list of actions: ("report", step, value), ("succeed",
    value) or ("succeed", {metric: value, ...}[, {artifact: uri}]), ("fail", code), ("hold",) (leave it running). Between reports it waits until the
    operator has recorded the previous one on the trial. Reports go to the running operator's
    progress endpoint with a token bound to the pod. A pod asked to stop exits 3: the request is
    the trial TrainingJob's `kubeforge.io/stop` annotation, which the endpoint answers to the
    trainer's reports (read here directly, so a held pod that sends no reports stops too).
    """

    def __init__(
        self,
        kube: Any,
        driver: Any,
        namespace: str,
        metric: str,
        behave: Callable[[JSON, dict[str, str]], list[tuple[Any, ...]]],
    ) -> None:
        self.kube, self.driver, self.ns, self.metric, self.behave = (
            kube,
            driver,
            namespace,
            metric,
            behave,
        )
        self.done: set[str] = set()
        self.stopped: dict[str, str] = {}
        self.finished_at: dict[str, float] = {}
        self.max_running = 0
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> TrainerPlayer:
        t = threading.Thread(target=self._loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(10)

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                pods = self.driver.pods(TRIAL_LABEL)
            except Exception as exc:  # the API server is busy: try again
                self.errors.append(str(exc))
                time.sleep(0.2)
                continue
            running = [
                p for p in pods if p.get("status", {}).get("phase") in ("Pending", "Running")
            ]
            self.max_running = max(
                self.max_running, len({p["metadata"]["labels"][TRIAL_LABEL] for p in running})
            )
            for p in pods:
                name = p["metadata"]["name"]
                with self._lock:
                    if name in self.done or name in self._busy:
                        continue
                    if p.get("status", {}).get("phase") != "Running":
                        continue
                    self._busy.add(name)
                threading.Thread(target=self._play, args=(p,), daemon=True).start()
            time.sleep(0.1)

    def _stop_requested(self, pod: JSON) -> str | None:
        trial = pod["metadata"]["labels"][TRIAL_LABEL]
        tj = self.kube.get(f"/apis/kubeforge.io/v1alpha1/namespaces/{self.ns}/trainingjobs/{trial}")
        value: str | None = (tj["metadata"].get("annotations") or {}).get("kubeforge.io/stop")
        return value

    def _reports_recorded(self, trial: str) -> list[list[float]]:
        tj = self.kube.get(f"/apis/kubeforge.io/v1alpha1/namespaces/{self.ns}/trainingjobs/{trial}")
        raw = (tj["metadata"].get("annotations") or {}).get("kubeforge.io/trial-reports") or "[]"
        out: list[list[float]] = json.loads(raw)
        return out

    def _play(self, pod: JSON) -> None:
        name = pod["metadata"]["name"]
        trial = pod["metadata"]["labels"][TRIAL_LABEL]
        try:
            for action in self.behave(pod, pod_params(pod)):
                if self._halt.is_set():
                    return
                reason = self._stop_requested(pod)
                if reason:
                    self.stopped[trial] = reason
                    self.driver.fail(
                        pod, exit_code=3, reason="Error", message=f"stopped ({reason})"
                    )
                    break
                if action[0] == "report":
                    _, step, value = action
                    report = {
                        "seq": step + 1,
                        "step": step,
                        "epoch": step,
                        "metrics": {self.metric: value},
                        "time": time.time(),
                    }
                    answer = report_for_pod(self.kube, OperatorProcess.running[-1], pod, report)
                    if answer.get("stop"):
                        self.stopped[trial] = answer["stop"]
                        self.driver.fail(
                            pod, exit_code=3, reason="Error", message=f"stopped ({answer['stop']})"
                        )
                        break
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and not self._halt.is_set():
                        if any(s == step for s, _ in self._reports_recorded(trial)):
                            break
                        time.sleep(0.1)
                elif action[0] == "succeed":
                    # a number: the value of the player's metric; a dict: several metrics
                    metrics = action[1] if isinstance(action[1], dict) else {self.metric: action[1]}
                    # a third item: more artifacts (modelInt8), as the built-in trainer writes
                    extra = action[2] if len(action) > 2 else {}
                    msg = {
                        "metrics": metrics,
                        "artifacts": {"model": f"file:///out/{trial}/model.onnx", **extra},
                    }
                    self.driver.succeed(pod, message=json.dumps(msg))
                    self.finished_at[trial] = time.time()
                    break
                elif action[0] == "fail":
                    self.driver.fail(pod, exit_code=action[1])
                    break
                elif action[0] == "hold":
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline and not self._halt.is_set():
                        reason = self._stop_requested(pod)
                        if reason:
                            self.stopped[trial] = reason
                            self.driver.fail(pod, exit_code=3, message=f"stopped ({reason})")
                            break
                        time.sleep(0.2)
                    break
            with self._lock:
                self.done.add(name)
        except Exception as exc:
            self.errors.append(f"{name}: {exc!r}")
        finally:
            with self._lock:
                self._busy.discard(name)


@pytest.fixture
def trainer_player(
    kube: Any, pod_driver: Any, namespace: str
) -> Iterator[Callable[..., TrainerPlayer]]:
    players: list[TrainerPlayer] = []

    def make(
        metric: str, behave: Callable[[JSON, dict[str, str]], list[tuple[Any, ...]]]
    ) -> TrainerPlayer:
        p = TrainerPlayer(kube, pod_driver, namespace, metric, behave).start()
        players.append(p)
        return p

    yield make
    for p in players:
        p.stop()
