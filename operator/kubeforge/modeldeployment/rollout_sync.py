"""The I/O side of a progressive rollout, called by the ModelDeployment reconcile: read the
candidate from the indexes, measure (scrape the pods or ask Prometheus) once per
`analysis.interval`, run the pure state machine (`rollout.plan`), apply or delete the candidate's
children, post the Events, and consume the `kubeforge.io/rollout` annotation.

Memory (lost on restart, by design): the step's analysis window (a restart starts a new window;
the step's pause still counts from status.rollout.stepStartedAt) and what was last applied.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kubeforge import events
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.api.rollout import ROLLOUT_ANNOTATION
from kubeforge.apply import ApiError, AsyncKube, resource_path
from kubeforge.context import OperatorContext
from kubeforge.controller import Key
from kubeforge.modeldeployment import rollout as ro
from kubeforge.modeldeployment import rollout_build as rb
from kubeforge.modeldeployment._children import HTTP_PORT
from kubeforge.modeldeployment.analysis import Decision, StepWindow, decide
from kubeforge.modeldeployment.indexed import API_VERSION, IDX_CAND_DEPLOY, IDX_CAND_PODS, KIND
from kubeforge.modeldeployment.monitoring import MonitoringDiscovery
from kubeforge.modeldeployment.resolve import Resolved
from kubeforge.modeldeployment.rollout_metrics import query_prometheus, scrape_pods
from kubeforge.modeldeployment.status import pod_problem, pod_ready

log = logging.getLogger("kubeforge.modeldeployment.rollout")

JSON = dict[str, Any]
WAIT_SECONDS = 2.0
"""Look again this soon while the candidate starts or a promotion completes."""


@dataclass
class Outcome:
    """What the reconcile does with the stable Deployment and status."""

    stable_uri: str | None
    """The model the stable Deployment runs (None: the reconcile's usual choice)."""
    stable_args: list[str] = field(default_factory=list)
    stable_replicas: int | None = None
    status: JSON | None = None
    """status.rollout (None: absent)."""
    requeue: float | None = None
    degraded: bool = False
    """A rolled-back candidate is still spec.model (the spec's model is not served)."""
    route_weight: int = 0
    """The candidate's share in the HTTPRoute (with rollout.gatewayRef)."""


@dataclass
class _Window:
    ident: tuple[str, int, str]
    """(candidate URI, step, step start): a new identity is a new window."""
    window: StepWindow = field(default_factory=StepWindow)
    measured: float = 0.0
    """monotonic time of the last measurement."""


def _ready_replicas(dep: JSON | None) -> int:
    return int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)


class RolloutDriver:
    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.kube: AsyncKube = ctx.api
        self.settings = ctx.settings
        self.windows: dict[Key, _Window] = {}
        self.applied: dict[tuple[Key, str], str] = {}
        """(key, kind) → hash of the candidate child (or HTTPRoute) we applied last."""
        self.gateway = MonitoringDiscovery(
            ctx.api, rb.GATEWAY_GROUP_VERSION, frozenset({"httproutes"})
        )


    def forget(self, key: Key) -> None:
        self.windows.pop(key, None)
        for k in [k for k in self.applied if k[0] == key]:
            self.applied.pop(k, None)

    async def run(
        self,
        key: Key,
        md: JSON,
        spec: ModelDeploymentSpec,
        stable: JSON | None,
        stable_pods: list[JSON],
        served: str | None,
        resolved: Resolved,
        now: str,
    ) -> Outcome:
        gateway = spec.rollout.gateway_ref
        routed = gateway is not None and await self.gateway.available()
        if gateway is not None and not routed:
            # a cached "not installed" may predate the Gateway API's install: a step sized by
            # replica counts instead of the route's exact weight would be wrong, so look again
            self.gateway.invalidate()
            routed = await self.gateway.available()
        out = await self._run(
            key, md, spec, stable, stable_pods, served, resolved, now, routed=routed
        )
        await self._sync_route(key, md, spec, out, routed)
        return out

    async def _run(
        self,
        key: Key,
        md: JSON,
        spec: ModelDeploymentSpec,
        stable: JSON | None,
        stable_pods: list[JSON],
        served: str | None,
        resolved: Resolved,
        now: str,
        *,
        routed: bool = False,
    ) -> Outcome:
        prev: JSON | None = (md.get("status") or {}).get("rollout")
        cand_dep = self.ctx.one(IDX_CAND_DEPLOY, key)
        cand_pods: list[JSON] = list(self.ctx.all(IDX_CAND_PODS, key))
        if spec.rollout.strategy != "Canary":
            await self._remove_candidate(key, md, cand_dep)
            return Outcome(None, status=None)
        candidate = resolved.uri
        if stable is None or served is None or candidate is None or candidate == served:
            return await self._idle(key, md, stable, cand_dep, prev, served, candidate, now)

        problem = None
        for pod in cand_pods:
            found = pod_problem(pod)
            if found is not None:
                problem = found[1]
                break
        prev_phase = (prev or {}).get("phase")
        same = (prev or {}).get("candidate", {}).get("uri") == candidate
        decision = None
        if same and prev_phase in (ro.PROGRESSING, ro.PAUSED) and prev and prev.get(
            "stepStartedAt"
        ):
            decision = await self._measure(key, md, spec, prev, stable_pods, cand_pods, now)
        annotations = (md["metadata"].get("annotations") or {})
        command = annotations.get(ROLLOUT_ANNOTATION)
        obs = ro.Observed(
            stable_uri=served,
            stable_sha256=(prev or {}).get("stable", {}).get("sha256") if same else None,
            candidate_uri=candidate,
            candidate_sha256=resolved.sha256,
            candidate_ready=_ready_replicas(cand_dep),
            candidate_problem=problem,
            command=command,
            decision=decision,
        )
        plan = ro.plan(spec.rollout, prev, obs, now)
        for type_, reason, message in plan.events:
            await events.post(self.kube, md, type_, reason, message)
        if command is not None and plan.command_done:
            await self._consume(key, md)

        status = dict(plan.status)
        out = Outcome(served, status=status, degraded=status.get("phase") == ro.ROLLED_BACK)
        stable_replicas = int(((stable.get("spec") or {}).get("replicas")) or spec.replicas)
        if spec.autoscaling is None:
            stable_replicas = spec.replicas
        if plan.promote:
            out.stable_uri = candidate
            out.requeue = WAIT_SECONDS
        if plan.run_candidate:
            steps = spec.rollout.canary_steps()
            step = plan.step or steps[min(int(status.get("step", 0)), len(steps) - 1)]
            cut = rb.split(step, stable_replicas, spec.autoscaling is not None, routed=routed)
            if plan.step is None and not plan.promote:  # the candidate starts: no traffic yet
                cut = rb.Split(None, cut.candidate, 0, 0, False)
            # promoting: the candidate keeps its last step's share until the stable Deployment
            # runs the new model everywhere (then it goes)
            await self._apply_candidate(key, md, spec, candidate, cut)
            out.route_weight = cut.weight
            if plan.step is not None:
                status["weight"] = cut.weight
                if cut.shadow:
                    out.stable_args = rb.shadow_args(
                        spec, key[1], key[0], cut.shadow
                    )
                out.stable_replicas = cut.stable
            if plan.new_window:
                await self._baseline(key, spec, status, stable_pods, cand_pods)
            if out.requeue is None:
                started = status.get("stepStartedAt")
                out.requeue = (
                    float(spec.rollout.analysis.interval_seconds()) if started else WAIT_SECONDS
                )
        else:
            await self._remove_candidate(key, md, cand_dep)
            self.windows.pop(key, None)
        return out

    # --- measuring ---------------------------------------------------------------------------

    def _tracks(
        self, stable_pods: list[JSON], cand_pods: list[JSON]
    ) -> dict[str, tuple[str, str]]:
        """pod name → (track, IP) of the ready servers to measure."""
        cand_label = self.settings.label(rb.CANDIDATE_OF)
        out: dict[str, tuple[str, str]] = {}
        for track, pods in (("stable", stable_pods), ("candidate", cand_pods)):
            for pod in pods:
                meta = pod.get("metadata") or {}
                if track == "stable" and cand_label in (meta.get("labels") or {}):
                    continue  # a candidate pod in a weight step (the Service selects it too)
                if meta.get("deletionTimestamp") or not pod_ready(pod):
                    continue
                ip = (pod.get("status") or {}).get("podIP") or ""
                out[str(meta.get("name"))] = (track, str(ip))
        return out

    async def _scrape(
        self, key: Key, spec: ModelDeploymentSpec, stable_pods: list[JSON], cand_pods: list[JSON]
    ) -> dict[str, Any]:
        tracks = self._tracks(stable_pods, cand_pods)
        url = spec.rollout.analysis.prometheus.url
        async with aiohttp.ClientSession() as session:
            if url:
                return await query_prometheus(
                    session, url, key[0], key[1], {n: t for n, (t, _) in tracks.items()}
                )
            return await scrape_pods(session, tracks, HTTP_PORT, key[1])

    def _window(self, key: Key, status: JSON) -> _Window:
        ident = (
            str(status.get("candidate", {}).get("uri")),
            int(status.get("step", 0)),
            str(status.get("stepStartedAt")),
        )
        w = self.windows.get(key)
        if w is None or w.ident != ident:
            w = self.windows[key] = _Window(ident)
        return w

    async def _baseline(
        self, key: Key, spec: ModelDeploymentSpec, status: JSON, stable_pods: list[JSON],
        cand_pods: list[JSON],
    ) -> None:
        """A step begins: every server's counters now are the window's baseline."""
        w = self._window(key, status)
        w.window.observe(await self._scrape(key, spec, stable_pods, cand_pods))
        w.measured = time.monotonic()

    async def _measure(
        self, key: Key, md: JSON, spec: ModelDeploymentSpec, prev: JSON,
        stable_pods: list[JSON], cand_pods: list[JSON], now: str,
    ) -> Decision | None:
        analysis = spec.rollout.analysis
        w = self._window(key, prev)
        fresh = w.measured == 0.0
        if not fresh and time.monotonic() - w.measured < analysis.interval_seconds() - 0.5:
            return None
        w.window.observe(await self._scrape(key, spec, stable_pods, cand_pods))
        w.measured = time.monotonic()
        if fresh:
            return None  # a restarted operator's first scrape is its baseline
        steps = spec.rollout.canary_steps()
        step = steps[min(int(prev.get("step", 0)), len(steps) - 1)]
        return decide(
            w.window.track("stable"),
            w.window.track("candidate"),
            analysis,
            elapsed_seconds=ro.seconds_since(prev.get("stepStartedAt"), now),
            pause_seconds=step.pause_seconds(),
        )

    # --- children ----------------------------------------------------------------------------

    async def _apply_candidate(
        self, key: Key, md: JSON, spec: ModelDeploymentSpec, uri: str, cut: rb.Split
    ) -> None:
        for child in (
            rb.candidate_service(md, self.settings),
            rb.candidate_deployment(
                md, spec, self.settings, uri, replicas=cut.candidate, answering=cut.answering
            ),
        ):
            mark = (key, child.kind)
            if self.applied.get(mark) == child.hash:
                continue
            await self.kube.apply(child.manifest, parse=False)
            self.applied[mark] = child.hash

    async def _remove_candidate(self, key: Key, md: JSON, cand_dep: JSON | None) -> None:
        if cand_dep is None and not any(
            k[0] == key and k[1] in ("Deployment", "Service") for k in self.applied
        ):
            return
        name = rb.candidate_name(key[1])
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
            try:
                await self.kube.request(
                    "DELETE", resource_path(api_version, kind, key[0], name),
                    resource=kind.lower(), parse=False,
                )
            except ApiError as exc:
                if not exc.not_found:
                    raise
            self.applied.pop((key, kind), None)

    async def _idle(
        self, key: Key, md: JSON, stable: JSON | None, cand_dep: JSON | None, prev: JSON | None,
        served: str | None, candidate: str | None, now: str,
    ) -> Outcome:
        """No rollout under way: the spec's model is the served one (or none resolves yet)."""
        if prev is None:
            await self._remove_candidate(key, md, cand_dep)
            return Outcome(None, status=None)
        status = dict(prev)
        phase = status.get("phase")
        if candidate is None:  # the new model does not resolve (yet): hold everything
            return Outcome(served, status=status, requeue=None)
        if phase in (ro.PROGRESSING, ro.PAUSED) and candidate == (
            (prev.get("candidate") or {}).get("uri")
        ):
            # the served model is this rollout's candidate: we promoted it and the object we
            # read predates our own status write (not a revert: spec.model did not change)
            status.update(phase=ro.PROMOTED, weight=100, shadow=0, reason="",
                          message="promoted: the stable Deployment now serves the candidate's "
                          "model", finishedAt=status.get("finishedAt") or now)
            status.pop("stepStartedAt", None)
            phase = ro.PROMOTED
        elif phase in (ro.PROGRESSING, ro.PAUSED):
            # spec.model went back to the serving model in the middle of a rollout
            status.update(phase=ro.ROLLED_BACK, reason="ModelReverted", weight=0, shadow=0,
                          message="rolled back: spec.model is the stable model again",
                          finishedAt=now)
            status.pop("stepStartedAt", None)
            await events.post(self.kube, md, events.WARNING, "RolledBack", status["message"])
        if phase == ro.PROMOTED and not _rolled_out(stable):
            return Outcome(None, status=status, requeue=WAIT_SECONDS)  # candidate still helps
        await self._remove_candidate(key, md, cand_dep)
        self.windows.pop(key, None)
        return Outcome(None, status=status)

    async def _sync_route(
        self, key: Key, md: JSON, spec: ModelDeploymentSpec, out: Outcome, routed: bool
    ) -> None:
        """The HTTPRoute while rollout.gatewayRef is set and the Gateway API is installed;
        deleted when gatewayRef is dropped."""
        gateway = spec.rollout.gateway_ref
        mark = (key, "HTTPRoute")
        if gateway is not None and routed:
            route = rb.http_route(md, self.settings, gateway, out.route_weight)
            if self.applied.get(mark) != route.hash:
                try:
                    await self.kube.apply(route.manifest, parse=False)
                except ApiError as exc:
                    if not exc.not_found:  # the CRD went away
                        raise
                    self.gateway.invalidate()
                    return
                self.applied[mark] = route.hash
            return
        if mark not in self.applied:
            # never applied by this process: nothing to undo (a ModelDeployment without
            # gatewayRef costs no request; a route left from before a restart goes with its
            # ModelDeployment, or when gatewayRef is set and dropped again)
            return
        try:
            await self.kube.request(
                "DELETE", resource_path(rb.GATEWAY_GROUP_VERSION, "HTTPRoute", key[0], key[1]),
                resource="httproutes", parse=False,
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
        self.applied.pop(mark, None)

    async def _consume(self, key: Key, md: JSON) -> None:
        """Remove the one-shot kubeforge.io/rollout annotation once acted on."""
        try:
            await self.kube.patch(
                API_VERSION, KIND, key[0], key[1],
                {"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}}, parse=False,
            )
        except ApiError as exc:
            if not exc.not_found:
                raise


def _rolled_out(stable: JSON | None) -> bool:
    """The stable Deployment finished its rolling update (every replica new and ready)."""
    if stable is None:
        return False
    st = stable.get("status") or {}
    meta = stable.get("metadata") or {}
    want = int((stable.get("spec") or {}).get("replicas") or 0)
    return (
        int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(st.get("updatedReplicas") or 0) >= want
        and int(st.get("replicas") or 0) == int(st.get("updatedReplicas") or 0)
        and int(st.get("readyReplicas") or 0) >= want
    )
