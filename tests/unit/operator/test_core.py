"""apply.merge_patch, conditions, settings, the controller's queue, events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubeforge.apply import manifest_hash, merge_patch, plural, resource_path
from kubeforge.conditions import set_condition
from kubeforge.controller import Controller
from kubeforge.events import build_event
from kubeforge.settings import Settings


def test_merge_patch() -> None:
    assert merge_patch({"a": 1}, {"a": 1}) is None
    assert merge_patch({"a": 1, "b": 2}, {"a": 1}) == {"b": None}
    assert merge_patch({"n": {"x": 1, "y": 2}}, {"n": {"x": 1, "y": 3}}) == {"n": {"y": 3}}
    assert merge_patch({"n": {"x": 1}}, {"n": {}}) == {"n": {"x": None}}
    assert merge_patch({"l": [1, 2]}, {"l": [1]}) == {"l": [1]}
    assert merge_patch({}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_paths_and_hash() -> None:
    assert plural("TrainingJob") == "trainingjobs" and plural("Service") == "services"
    assert plural("Policy") == "policies"
    assert resource_path("batch/v1", "Job", "ns", "j") == "/apis/batch/v1/namespaces/ns/jobs/j"
    assert resource_path("v1", "Pod", "ns") == "/api/v1/namespaces/ns/pods"
    assert resource_path("kubeforge.io/v1alpha1", "TrainingJob", "n", "x", "status").endswith("/trainingjobs/x/status")
    assert manifest_hash({"a": 1, "b": 2}) == manifest_hash({"b": 2, "a": 1})


def test_set_condition_preserves_transition_time() -> None:
    conds: list[dict[str, Any]] = []
    set_condition(conds, "Running", True, "A", "m", now="t1")
    set_condition(conds, "Running", True, "B", "other", now="t2")
    assert conds[0]["lastTransitionTime"] == "t1" and conds[0]["reason"] == "B"
    set_condition(conds, "Running", False, "C", now="t3", observed_generation=2)
    assert conds[0]["lastTransitionTime"] == "t3" and conds[0]["observedGeneration"] == 2


def test_settings_from_env() -> None:
    s = Settings.from_env({"KUBEFORGE_TRAINER_IMAGE": "t:1", "KUBEFORGE_CONCURRENCY": "4",
                           "KUBEFORGE_NAMESPACES": "a, b", "KUBEFORGE_RESYNC_SECONDS": "10",
                           "KUBEFORGE_KUEUE_WORKLOADS": "false"}, metrics_port=9)
    assert (s.trainer_image, s.concurrency, s.namespaces, s.resync_seconds) == ("t:1", 4, ("a", "b"), 10.0)
    assert s.metrics_port == 9 and s.kueue_workloads is False
    assert s.output_uri("ns", "j") == "file:///var/lib/kubeforge/artifacts/ns/j/"
    assert Settings(artifact_store="pvc://store/").output_uri("n", "j") == "pvc://store/n/j/"


def test_event_shape() -> None:
    ev = build_event({"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                      "metadata": {"name": "j", "namespace": "n", "uid": "u"}},
                     "Warning", "Failed", "boom", "kubeforge-operator", "t")
    assert ev["involvedObject"]["uid"] == "u" and ev["metadata"]["namespace"] == "n"
    assert ev["type"] == "Warning" and ev["reason"] == "Failed"
    # the same Event gets the same name (a repeat meets a 409); another message, another name
    again = build_event({"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                         "metadata": {"name": "j", "namespace": "n", "uid": "u"}},
                        "Warning", "Failed", "boom", "kubeforge-operator", "t2")
    other = build_event({"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                         "metadata": {"name": "j", "namespace": "n", "uid": "u"}},
                        "Warning", "Failed", "bang", "kubeforge-operator", "t")
    assert ev["metadata"]["name"] == again["metadata"]["name"] != other["metadata"]["name"]
    assert ev["metadata"]["name"].startswith("j.")


def test_controller_retries_with_backoff() -> None:
    attempts: list[float] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 2:
            raise RuntimeError("apiserver hiccup")

    async def run() -> None:
        ctl: Controller[str] = Controller("T", snapshot=lambda k: "s", reconcile=reconcile, workers=1)
        ctl.start()
        ctl.enqueue(("n", "a"))
        await asyncio.sleep(0.8)
        await ctl.stop()

    asyncio.run(run())
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.45


def test_snapshot_none_means_gone() -> None:
    ran: list[int] = []
    forgotten: list[tuple[str, str]] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        ran.append(1)

    async def run() -> None:
        ctl: Controller[str] = Controller("T", snapshot=lambda k: None, reconcile=reconcile,
                                          workers=1, forget=forgotten.append)
        ctl.start()
        ctl.enqueue(("n", "gone"))
        await asyncio.sleep(0.05)
        await ctl.stop()

    asyncio.run(run())
    assert ran == [] and forgotten == [("n", "gone")]


def test_blocking_reconcile_is_refused() -> None:
    with pytest.raises(TypeError, match="coroutine"):
        Controller("T", snapshot=lambda k: "s", reconcile=lambda k, s: None)  # type: ignore[arg-type, return-value]


def test_forget_waits_for_the_running_reconcile() -> None:
    """An object deleted while its reconcile awaits the API: the reconciler forgets it only
    after that reconcile ended (else the reconcile would write its memory back, and a new object
    of the same name would start from it)."""
    memory: dict[tuple[str, str], str] = {}
    order: list[str] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        await asyncio.sleep(0.05)  # the API answers; meanwhile the DELETED event arrives
        memory[key] = "written status"
        order.append("reconciled")

    def forget(key: tuple[str, str]) -> None:
        memory.pop(key, None)
        order.append("forgotten")

    async def run() -> None:
        ctl: Controller[str] = Controller("T", snapshot=lambda k: "s", reconcile=reconcile,
                                          workers=1, forget=forget)
        ctl.start()
        ctl.enqueue(("n", "a"))
        await asyncio.sleep(0.01)
        ctl.forget(("n", "a"))
        assert order == []
        await asyncio.sleep(0.1)
        ctl.forget(("n", "b"))  # nothing running: forgotten at once
        await ctl.stop()

    asyncio.run(run())
    assert order == ["reconciled", "forgotten", "forgotten"] and memory == {}


def test_coroutine_reconcile_runs_on_the_loop_one_per_key() -> None:
    calls: list[str] = []
    active: set[str] = set()
    overlaps: list[str] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        if key[1] in active:
            overlaps.append(key[1])
        active.add(key[1])
        await asyncio.sleep(0.02)  # other objects run meanwhile
        calls.append(key[1])
        active.discard(key[1])

    async def run() -> None:
        ctl: Controller[str] = Controller("T", snapshot=lambda k: "s", reconcile=reconcile, workers=4)
        ctl.start()
        ctl.enqueue(("n", "a"))
        ctl.enqueue(("n", "b"))
        await asyncio.sleep(0.005)
        ctl.enqueue(("n", "a"))  # while running: exactly one more run, after the first
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ctl.pending == 0:
                break
        await ctl.stop()

    asyncio.run(run())
    assert overlaps == [] and calls.count("a") == 2 and calls.count("b") == 1


def test_resync_skips_objects_idle_as_they_are() -> None:
    ran: list[str] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        ran.append(key[1])

    async def run() -> None:
        ctl: Controller[str] = Controller("T", snapshot=lambda k: "s", reconcile=reconcile,
                                          workers=1, idle=lambda k: k[1].startswith("settled"))
        ctl.start()
        task = asyncio.create_task(ctl.resync(lambda: [("n", "settled-1"), ("n", "busy"), ("n", "settled-2")], 0.02))
        await asyncio.sleep(0.07)
        task.cancel()
        await ctl.stop()

    asyncio.run(run())
    assert ran and set(ran) == {"busy"}


def test_loop_metrics_render_at_scrape_time() -> None:
    from kubeforge.metrics import LoopCounter, LoopHistogram
    from prometheus_client import REGISTRY, generate_latest

    counter = LoopCounter("kubeforge_test_things", "Things.", ["kind"])
    hist = LoopHistogram("kubeforge_test_seconds", "Seconds.", ["kind"], buckets=(0.1, 1.0))
    try:
        counter.labels("a").inc()
        counter.labels("a").inc(2)
        for v in (0.05, 0.5, 5.0):
            hist.labels("a").observe(v)
        text = generate_latest().decode()
    finally:
        REGISTRY.unregister(counter)
        REGISTRY.unregister(hist)
    assert 'kubeforge_test_things_total{kind="a"} 3.0' in text
    assert 'kubeforge_test_seconds_bucket{kind="a",le="0.1"} 1.0' in text
    assert 'kubeforge_test_seconds_bucket{kind="a",le="1.0"} 2.0' in text
    assert 'kubeforge_test_seconds_bucket{kind="a",le="+Inf"} 3.0' in text
    assert 'kubeforge_test_seconds_sum{kind="a"} 5.55' in text


class TestInvalidSpecStatus:
    """What CEL cannot check at admission (hyperparameter names) fails the object, naming the
    field, and nothing else is made."""

    def _errors(self) -> list[Any]:
        from kubeforge.api import TrainingJobSpec
        from pydantic import ValidationError

        try:
            TrainingJobSpec.model_validate(
                {"model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"},
                 "hyperparameters": {"batch-size": 1, "batch_size": 2}}
            )
        except ValidationError as exc:
            return list(exc.errors())
        raise AssertionError("the collision was accepted")

    def test_failed_naming_the_field(self) -> None:
        from kubeforge.conditions import invalid_spec_status

        obj = {"metadata": {"name": "x", "generation": 3}, "status": {}}
        status = invalid_spec_status(obj, self._errors(), "2026-01-01T00:00:00Z", condition="Failed")
        assert status["phase"] == "Failed" and status["observedGeneration"] == 3
        assert status["message"].startswith("invalid spec: spec.hyperparameters: ")
        assert "HP_BATCH_SIZE" in status["message"]
        (cond,) = status["conditions"]
        assert (cond["type"], cond["status"], cond["reason"]) == ("Failed", "True", "InvalidSpec")

    def test_ready_false_for_serving(self) -> None:
        from kubeforge.conditions import invalid_spec_status

        obj = {"metadata": {"name": "x"}, "status": {"phase": "Ready"}}
        status = invalid_spec_status(obj, self._errors(), "2026-01-01T00:00:00Z", condition="Ready")
        (cond,) = status["conditions"]
        assert (cond["type"], cond["status"]) == ("Ready", "False")
        assert "observedGeneration" not in status
