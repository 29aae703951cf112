"""A progressive rollout of a ModelDeployment (strategy Canary), pure: the step state machine
and how status.rollout folds into the ModelDeployment's status (the objects it runs are built in
`rollout_build.py`).

Objects (all owned by the ModelDeployment, one owner each):
- the stable Deployment (named after the ModelDeployment, as always) keeps serving the model it
  ran before `spec.model` changed; while a step mirrors, its servers get `--shadow-url` pointing
  at the candidate Service (they mirror off the request path and count output agreement);
- the candidate Deployment and Service, `<name>-candidate`, serve the new model. The candidate
  pods carry the ModelDeployment's selector label only during weight steps: then the one Service
  selects stable and candidate pods, and the share is carried by replica counts (as Argo
  Rollouts does without a traffic router). During a shadow step no client reaches a candidate.

The step state machine (`plan`) is a pure function of the spec, the previous `status.rollout`, what
was observed and this round's analysis verdict; the reconcile does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeforge.api.rollout import ROLLOUT_COMMANDS, Rollout, RolloutStep
from kubeforge.conditions import set_condition
from kubeforge.modeldeployment.analysis import Decision, Verdict

JSON = dict[str, Any]

PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK = "Progressing", "Paused", "Promoted", "RolledBack"

# --- the state machine ---------------------------------------------------------------------


def seconds_since(stamp: str | None, now: str) -> float:
    if not stamp:
        return 0.0
    t0 = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    t1 = datetime.fromisoformat(now.replace("Z", "+00:00"))
    return max(0.0, (t1 - t0).total_seconds())


@dataclass(frozen=True)
class Observed:
    """What the reconcile saw this round."""

    stable_uri: str
    stable_sha256: str | None
    candidate_uri: str
    candidate_sha256: str | None
    candidate_ready: int
    candidate_problem: str | None = None
    """Why the candidate's pods fail (crash loop, load failure), when they do."""
    command: str | None = None
    """The kubeforge.io/rollout annotation's value."""
    decision: Decision | None = None
    """This round's analysis (None: not measured this round)."""


@dataclass(frozen=True)
class Plan:
    status: JSON
    """status.rollout (wire shape)."""
    step: RolloutStep | None
    """The step whose traffic applies (None: no candidate traffic, e.g. waiting or done)."""
    run_candidate: bool
    """Whether the candidate Deployment should run."""
    promote: bool
    """The stable Deployment takes the candidate's model now."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type Normal/Warning, reason, message)."""
    command_done: bool = False
    """The annotation's command was acted on (the reconcile removes the annotation)."""
    new_window: bool = False
    """A new step (or rollout) began: the analysis window restarts."""


def _figures_wire(d: Decision, now: str) -> JSON:
    f = d.figures
    out: JSON = {
        "requests": f.requests,
        "errors": f.errors,
        "mirrored": f.mirrored,
        "agreed": f.agreed,
        "dropped": f.dropped,
        "verdict": d.verdict.value,
        "message": d.message,
        "time": now,
    }
    for key, value, scale in (
        ("errorRate", f.error_rate, 1.0),
        ("agreement", f.agreement, 1.0),
        ("candidateP99Ms", f.candidate_p99, 1000.0),
        ("stableP99Ms", f.stable_p99, 1000.0),
        ("latencyRatio", f.latency_ratio, 1.0),
    ):
        if value is not None:
            out[key] = round(value * scale, 4)
    return out


def _model(uri: str, sha: str | None) -> JSON:
    out: JSON = {"uri": uri}
    if sha:
        out["sha256"] = sha
    return out


def plan(rollout: Rollout, prev: JSON | None, obs: Observed, now: str) -> Plan:
    """The next status.rollout and what to run, for a rollout of `obs.candidate_uri` over
    `obs.stable_uri` (the reconcile calls this only while the two differ)."""
    steps = rollout.canary_steps()
    events: list[tuple[str, str, str]] = []
    command = obs.command if obs.command in ROLLOUT_COMMANDS else None
    same = prev is not None and (prev.get("candidate") or {}).get("uri") == obs.candidate_uri
    base: JSON = {
        "steps": len(steps),
        "stable": _model(obs.stable_uri, obs.stable_sha256),
        "candidate": _model(obs.candidate_uri, obs.candidate_sha256),
    }

    if same and prev is not None and prev.get("phase") == ROLLED_BACK:
        if command == "retry":
            events.append(("Normal", "RolloutRetried", f"retrying the rollout of {obs.candidate_uri}"))
            return _start(base, steps, now, events, command_done=True)
        # a rolled-back candidate stays rolled back until spec.model changes (or retry)
        return Plan({**prev, **base}, None, False, False, events, command_done=command is not None)

    if not same or prev is None or prev.get("phase") == PROMOTED:
        if same and prev is not None and prev.get("phase") == PROMOTED:
            # promoted: the stable Deployment is taking the candidate's model
            return Plan({**prev, **base}, None, True, True, [], command_done=command is not None)
        events.append((
            "Normal", "RolloutStarted",
            f"canary rollout of {obs.candidate_uri} over {obs.stable_uri}: {len(steps)} steps",
        ))
        started = _start(base, steps, now, events, command_done=command is not None)
        prev = started.status
        events = []
        if command is None:
            return _with_candidate(started, rollout, steps, obs, now)

    status: JSON = {**prev, **base}
    index = min(int(status.get("step", 0)), len(steps) - 1)
    step = steps[index]

    if command == "promote":
        return _promoted(status, now, [("Normal", "RolloutPromoted",
                                        f"promoted {obs.candidate_uri} by the annotation")])
    if command == "abort":
        return _rolled_back(status, "Aborted", "aborted by the kubeforge.io/rollout annotation",
                            now, command_done=True)

    if obs.candidate_problem:
        return _rolled_back(status, "CandidateFailed", obs.candidate_problem, now)
    if obs.candidate_ready == 0 and not status.get("stepStartedAt"):
        # before the first step: no traffic until a candidate replica is ready (mid-step a
        # replica that is briefly not ready changes nothing: the step's traffic stays)
        status.update(phase=PAUSED if rollout.paused else PROGRESSING,
                      message="waiting for a candidate replica to be ready")
        return Plan(status, None, True, False, events, command_done=command is not None)
    if not status.get("stepStartedAt"):
        status["stepStartedAt"] = now
        events.append(("Normal", "RolloutStep", _step_text(index, steps)))
        return _with_step(status, step, events, rollout, new_window=True,
                          command_done=command is not None)

    d = obs.decision
    if d is not None:
        status["analysis"] = _figures_wire(d, now)
        if d.verdict is Verdict.ROLLBACK:
            if rollout.auto_rollback:
                return _rolled_back(status, d.reason, d.message, now)
            status.update(phase=PAUSED, reason=d.reason,
                          message=f"{d.message}; autoRollback is off: annotate "
                          "kubeforge.io/rollout=promote or =abort")
            if prev.get("reason") != d.reason:
                events.append(("Warning", d.reason, status["message"]))
            return _with_step(status, step, events, rollout, command_done=command is not None)
        if d.verdict is Verdict.PROMOTE and not rollout.paused:
            if index + 1 >= len(steps):
                events.append(("Normal", "RolloutPromoted",
                               f"every step passed; promoting {obs.candidate_uri}"))
                return _promoted(status, now, events)
            index += 1
            status.update(step=index, stepStartedAt=now)
            status.pop("analysis", None)
            events.append(("Normal", "RolloutStep", _step_text(index, steps)))
            return _with_step(status, steps[index], events, rollout, new_window=True,
                              command_done=command is not None)
    if rollout.paused:
        status.update(phase=PAUSED, message="paused (spec.rollout.paused)")
    elif status.get("phase") != PAUSED or not status.get("reason"):
        status.update(phase=PROGRESSING,
                      message=(d.message if d is not None else status.get("message", "")))
    return _with_step(status, step, events, rollout, command_done=command is not None)


def _step_text(index: int, steps: list[RolloutStep]) -> str:
    s = steps[index]
    what = []
    if s.weight:
        what.append(f"weight {s.weight}%")
    if s.shadow:
        what.append(f"shadow {s.shadow}%")
    return f"step {index + 1}/{len(steps)}: {', '.join(what)} for at least {s.pause}"


def _start(
    base: JSON, steps: list[RolloutStep], now: str, events: list[tuple[str, str, str]],
    *, command_done: bool,
) -> Plan:
    status: JSON = {**base, "phase": PROGRESSING, "step": 0, "weight": 0, "shadow": 0,
                    "reason": "", "message": "waiting for a candidate replica to be ready",
                    "startedAt": now}
    return Plan(status, None, True, False, events, command_done=command_done, new_window=True)


def _with_candidate(
    started: Plan, rollout: Rollout, steps: list[RolloutStep], obs: Observed, now: str
) -> Plan:
    """A new rollout whose candidate may already be ready (its first step starts at once)."""
    if obs.candidate_ready > 0 and not obs.candidate_problem:
        status = {**started.status, "stepStartedAt": now}
        events = [*started.events, ("Normal", "RolloutStep", _step_text(0, steps))]
        return _with_step(status, steps[0], events, rollout, new_window=True,
                          command_done=started.command_done)
    return started


def _with_step(
    status: JSON, step: RolloutStep, events: list[tuple[str, str, str]], rollout: Rollout,
    *, new_window: bool = False, command_done: bool = False,
) -> Plan:
    status.setdefault("phase", PROGRESSING)
    if rollout.paused and status["phase"] == PROGRESSING:
        status.update(phase=PAUSED, message="paused (spec.rollout.paused)")
    status["shadow"] = step.shadow or 0
    return Plan(status, step, True, False, events, command_done=command_done,
                new_window=new_window)


def _promoted(status: JSON, now: str, events: list[tuple[str, str, str]]) -> Plan:
    status.update(phase=PROMOTED, weight=100, shadow=0, reason="",
                  message="promoted: the stable Deployment now serves the candidate's model",
                  finishedAt=now)
    status.pop("stepStartedAt", None)
    return Plan(status, None, True, True, events, command_done=True)


def _rolled_back(
    status: JSON, reason: str, message: str, now: str, *, command_done: bool = False
) -> Plan:
    status.update(phase=ROLLED_BACK, weight=0, shadow=0, reason=reason,
                  message=f"rolled back: {message}", finishedAt=now)
    status.pop("stepStartedAt", None)
    return Plan(status, None, False, False,
                [("Warning", "RolledBack", f"{reason}: {message}")], command_done=command_done)


def with_rollout(status: JSON, rollout: JSON | None, now: str, *, degraded: bool) -> None:
    """Fold status.rollout into the ModelDeployment's status (in place): a rollout under way
    shows as phase Progressing (Argo CD: Progressing), a rolled-back candidate that spec.model
    still names as Degraded (the spec's model is not served), a promotion as the usual Ready."""
    if rollout is None:
        return
    status["rollout"] = rollout
    phase = rollout.get("phase")
    gen = status.get("observedGeneration")
    conds = status.setdefault("conditions", [])
    if phase in (PROGRESSING, PAUSED):
        if status.get("phase") == "Ready":
            status["phase"] = "Progressing"
            status["message"] = f"canary: {rollout.get('message', '')}"[:1024]
        set_condition(
            conds, "Progressing", True, "RolloutPaused" if phase == PAUSED else "CanaryRollout",
            f"step {int(rollout.get('step', 0)) + 1}/{rollout.get('steps')}: "
            f"{rollout.get('message', '')}"[:1024],
            now=now, observed_generation=gen,
        )
    elif phase == ROLLED_BACK and degraded:
        if status.get("phase") in ("Ready", "Progressing"):
            status["phase"] = "Degraded"
            status["message"] = (
                f"rollout of {rollout.get('candidate', {}).get('uri')} {rollout.get('message')}"
            )[:1024]
        set_condition(
            conds, "Progressing", False, "RolledBack", str(rollout.get("message", ""))[:1024],
            now=now, observed_generation=gen,
        )
