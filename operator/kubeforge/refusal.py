"""Can this refusal heal? What the operator does when the API server says no.

Every kind's reconcile runs under one `RefusalGuard`, so the three kinds answer the same way:

- a child (or a status) the API server refuses with a 4xx that no retry can fix (422 Invalid,
  400, a 403 from admission (not a full quota), 413, ...) ends the object: phase Failed, reason
  `InvalidSpec` (422: the spec holds a value the child cannot take) or `ChildRejected`
  (anything else), a message naming the field (mapped back from the child's path to the
  parent's spec) with the API server's own words, one Event (the handlers' status writer posts
  it on the phase change), and no retry until the spec changes (a new generation);
- a namespace that is terminating (or gone) stops all work in it at once, quietly: no retry
  of that object for a while, no traceback;
- 5xx, 429, a full quota, the operator's own RBAC denying a request, timeouts and lost
  connections may heal: they propagate, the controller retries with backoff, and after
  `attempts_before_condition` failures in a row the object shows a `Synced=False` condition
  (reason `OperatorForbidden` for RBAC, else `ApiServerError`) until a reconcile succeeds;
- a status write that fails shows in the log and in `kubeforge_status_write_failures`.

`classify`, `parent_field` and `refused_status` are pure; the guard holds only per-object
counters and the (uid, generation) of the last refusal.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

from kubeforge.apply import ApiError
from kubeforge.conditions import copy_conditions, now_rfc3339, set_condition
from kubeforge.metrics import LoopCounter

JSON = dict[str, Any]
Key = tuple[str, str]
T = TypeVar("T")

log = logging.getLogger("kubeforge.refusal")

REFUSALS = LoopCounter(
    "kubeforge_api_refusals",
    "API server answers that stopped a reconcile, by kind, HTTP status and verdict "
    "(permanent, transient, namespace-gone).",
    ["kind", "code", "verdict"],
)
STATUS_WRITE_FAILURES = LoopCounter(
    "kubeforge_status_write_failures",
    "Status writes of kubeforge objects the API server refused or that failed, by kind and "
    "HTTP status (0: no answer).",
    ["kind", "code"],
)

NAMESPACE_PAUSE_SECONDS = 30.0
"""How long work in a terminating namespace stays stopped before one more try."""
SYNCED = "Synced"
"""Condition shown after repeated transient API errors (False), cleared by the next success."""


class InvalidSpecError(ValueError):
    """A spec the models accepted but the operator finds it cannot carry out (e.g. settings an
    Optuna constructor refuses): as permanent as a 422, naming `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Verdict(StrEnum):
    PERMANENT = "permanent"
    """No retry can fix it: fail the object."""
    TRANSIENT = "transient"
    """May heal: retry with backoff."""
    NAMESPACE_GONE = "namespace-gone"
    """The namespace is terminating or deleted: stop working in it."""


def _causes(exc: ApiError) -> list[JSON]:
    details = exc.body.get("details") if isinstance(exc.body, dict) else None
    causes = (details or {}).get("causes") if isinstance(details, dict) else None
    return [c for c in causes or [] if isinstance(c, dict)]


def _message(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.reason or "")


_RBAC_DENIED = re.compile(r'is forbidden: User "[^"]+" cannot [a-z]+ resource ')


def operator_forbidden(exc: BaseException) -> bool:
    """Whether a 403 is the authorizer denying the operator's own request (RBAC: `User "..."
    cannot create resource "jobs" ...`), not an admission rule refusing the child (PodSecurity,
    a policy, a webhook). Not the spec's fault, and it heals: when the platform team mends the
    operator's RBAC, and by itself seconds after an API server restart (its authorizer answers
    403 until its caches have filled). So it is retried, never the object's end."""
    return (
        isinstance(exc, ApiError) and exc.status == 403 and bool(_RBAC_DENIED.search(_message(exc)))
    )


def classify(exc: BaseException) -> Verdict | None:
    """The verdict on an exception out of a reconcile; None: not an API server answer or a
    transport failure (a bug: the caller lets it propagate as before)."""
    if isinstance(exc, InvalidSpecError):
        return Verdict.PERMANENT
    if isinstance(exc, ApiError):
        status = exc.status
        message = _message(exc)
        if any(c.get("reason") == "NamespaceTerminating" or c.get("type") == "NamespaceTerminating"
               for c in _causes(exc)) or "because it is being terminated" in message:
            return Verdict.NAMESPACE_GONE
        if status == 404 and re.search(r'namespaces? "[^"]*" not found', message):
            return Verdict.NAMESPACE_GONE
        if "request is too large" in message:
            return Verdict.PERMANENT  # etcd's limit (a 500): the same object never fits
        if status >= 500 or status in (401, 408, 409, 410, 429):
            # 409: a conflict the handlers did not resolve (an object of an older owner being
            # deleted); 401: credentials being rotated
            return Verdict.TRANSIENT
        if status == 403 and "exceeded quota" in message:
            return Verdict.TRANSIENT  # frees up when other work finishes
        if status == 403 and operator_forbidden(exc):
            return Verdict.TRANSIENT
        if 400 <= status < 500:
            return Verdict.PERMANENT
        return Verdict.TRANSIENT
    if isinstance(exc, TimeoutError | ConnectionError | OSError):
        return Verdict.TRANSIENT
    return None


# Where a child's field comes from in the parent's spec (first match wins). The child paths are
# what the API server names in its causes (`spec.template.spec.containers[0].resources...`).
_CHILD_TO_SPEC: list[tuple[str, str]] = [
    (r"^metadata\.name$", "metadata.name"),
    (r"^metadata\.labels\[kueue\.x-k8s\.io/queue-name\]", "spec.scheduling.queueName"),
    (r"^spec\.template\.metadata\.labels", "spec.pod.labels"),
    (r"^spec\.template\.metadata\.annotations", "spec.pod.annotations"),
    (r"^spec\.template\.spec\.(init)?[cC]ontainers\[\d+\]\.resources", "spec.resources"),
    (r"^spec\.template\.spec\.(init)?[cC]ontainers\[\d+\]\.env(From)?", "spec.pod.env"),
    (r"^spec\.template\.spec\.(init)?[cC]ontainers\[\d+\]\.volumeMounts", "spec.pod.volumes"),
    (r"^spec\.template\.spec\.(init)?[cC]ontainers\[\d+\]\.image", "spec.image"),
    (r"^spec\.template\.spec\.(init)?[cC]ontainers\[\d+\]\.(command|args)", "spec.command"),
    (r"^spec\.template\.spec\.volumes", "spec.pod.volumes"),
    (r"^spec\.template\.spec\.nodeSelector", "spec.scheduling.nodeSelector"),
    (r"^spec\.template\.spec\.affinity", "spec.scheduling.affinity"),
    (r"^spec\.template\.spec\.tolerations", "spec.scheduling.tolerations"),
    (r"^spec\.template\.spec\.priorityClassName", "spec.scheduling.priorityClassName"),
    (r"^spec\.template\.spec\.serviceAccountName", "spec.pod.serviceAccountName"),
    (r"^spec\.template\.spec\.imagePullSecrets", "spec.pod.imagePullSecrets"),
    (r"^spec\.template\.spec\.securityContext", "spec.pod"),
    (r"^spec\.(activeDeadlineSeconds|backoffLimit|ttlSecondsAfterFinished)", "spec.runPolicy"),
    (r"^subjects\[\d+\]\.name", "spec.pod.serviceAccountName"),
]


def _child_kind(exc: ApiError) -> str:
    details = exc.body.get("details") if isinstance(exc.body, dict) else None
    if isinstance(details, dict) and details.get("kind"):
        name = details.get("name")
        return f"{details['kind']} {name!r}" if name else str(details["kind"])
    return "a child object"


def parent_field(exc: ApiError, parent_kind: str) -> str:
    """The parent's field a child's refusal points at (best effort; `spec` when unknown).

    A TuningStudy's children are TrainingJobs made from `spec.trialTemplate.spec`; for the
    others the child's pod template comes from `spec.pod`, `spec.scheduling`, `spec.resources`.
    """
    fields = [str(c.get("field") or "") for c in _causes(exc)]
    fields = [f for f in fields if f]
    if not fields:
        found = re.search(r"(spec(\.[A-Za-z0-9_\[\]/.-]+)?|metadata\.[A-Za-z]+)(?=: )",
                          _message(exc))
        fields = [found.group(1)] if found else []
    for child in fields:
        if parent_kind == "TuningStudy" and child.startswith("spec."):
            return "spec.trialTemplate." + child
        for pattern, parent in _CHILD_TO_SPEC:
            if re.match(pattern, child):
                return parent
    if parent_kind == "TuningStudy":
        return "spec.trialTemplate.spec"
    return "spec"


def refusal_reason(exc: ApiError) -> str:
    """InvalidSpec for 422 (the spec holds a value the child cannot take), else ChildRejected."""
    return "InvalidSpec" if exc.status == 422 else "ChildRejected"


def refused_status(
    obj: JSON, exc: ApiError | InvalidSpecError, parent_kind: str, now: str, *,
    condition: str = "Failed",
) -> JSON:
    """The status of an object whose child the API server refused for good: phase Failed,
    `condition` (Failed: True; Ready: False) with reason InvalidSpec or ChildRejected, the
    parent's field and the API server's own words (or the operator's, for InvalidSpecError)."""
    base: JSON = obj.get("status") or {}
    if isinstance(exc, InvalidSpecError):
        message, reason = f"invalid spec: {exc}"[:1024], "InvalidSpec"
    else:
        field = parent_field(exc, parent_kind)
        message = (
            f"{field}: the API server refused {_child_kind(exc)} ({exc.status} {exc.reason}): "
            f"{_message(exc)}"
        )[:1024]
        reason = refusal_reason(exc)
    gen = (obj.get("metadata") or {}).get("generation")
    conds = copy_conditions(base.get("conditions"))
    set_condition(conds, condition, condition != "Ready", reason, message, now=now,
                  observed_generation=gen)
    status: JSON = {**base, "phase": "Failed", "message": message, "conditions": conds}
    if gen is not None:
        status["observedGeneration"] = gen
    return status


def retrying_status(obj: JSON, exc: BaseException, attempts: int, now: str) -> JSON:
    """The status with `Synced=False` (reason OperatorForbidden when the operator's own RBAC
    denied the request, else ApiServerError): the operator keeps retrying."""
    base: JSON = obj.get("status") or {}
    conds = copy_conditions(base.get("conditions"))
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ApiError) else str(exc)
    reason = "OperatorForbidden" if operator_forbidden(exc) else "ApiServerError"
    set_condition(conds, SYNCED, False, reason,
                  f"retrying with backoff after {attempts} failed attempts: {text}"[:1024],
                  now=now)
    return {**base, "conditions": conds}


def synced_status(obj: JSON, now: str) -> JSON:
    """The status with `Synced` back to True (after a transient error healed)."""
    base: JSON = obj.get("status") or {}
    conds = copy_conditions(base.get("conditions"))
    set_condition(conds, SYNCED, True, "Synced", "", now=now)
    return {**base, "conditions": conds}


def _about_itself(exc: ApiError, kind: str, key: Key) -> bool:
    details = exc.body.get("details") if isinstance(exc.body, dict) else None
    if not isinstance(details, dict):
        return False
    return (
        details.get("group") == "kubeforge.io"
        and str(details.get("kind", "")).lower() in (kind.lower(), kind.lower() + "s",
                                                     kind.lower().rstrip("y") + "ies")
        and details.get("name") == key[1]
    )


StatusAmend = Callable[[Callable[[JSON], JSON]], Awaitable[None]]
"""Writes the object's status through the handler's own writer: given a function from the
current status to the new one (so the handler's memory of what it wrote stays right)."""


class RefusalGuard:
    """Runs one kind's reconciles and answers API server refusals the same way for all kinds."""

    def __init__(self, kind: str, *, condition: str = "Failed",
                 attempts_before_condition: int = 3) -> None:
        self.kind = kind
        self.condition = condition
        self.attempts_before_condition = attempts_before_condition
        self.refused: dict[Key, tuple[Any, Any]] = {}
        self.failures: dict[Key, int] = {}
        self.paused_namespaces: dict[str, float] = {}

    def forget(self, key: Key) -> None:
        self.refused.pop(key, None)
        self.failures.pop(key, None)

    def holds(self, key: Key, obj: JSON) -> bool:
        """Whether to leave `obj` alone: its current generation was refused for good, or its
        namespace is terminating."""
        until = self.paused_namespaces.get(key[0])
        if until is not None:
            if time.monotonic() < until:
                return True
            del self.paused_namespaces[key[0]]
        meta = obj.get("metadata") or {}
        return self.refused.get(key) == (meta.get("uid"), meta.get("generation"))

    async def run(self, key: Key, obj: JSON, reconcile: Callable[[], Awaitable[T]],
                  amend: StatusAmend) -> T | None:
        """`reconcile()`, answering what the API server refuses (see the module's doc)."""
        try:
            result = await reconcile()
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None:
                raise
            code = str(exc.status) if isinstance(exc, ApiError) else "0"
            REFUSALS.labels(self.kind, code, verdict.value).inc()
            if verdict is Verdict.NAMESPACE_GONE:
                if key[0] not in self.paused_namespaces:
                    log.info("namespace %s is terminating: work in it stops (%s %s: %s)",
                             key[0], self.kind, key[1], exc)
                self.paused_namespaces[key[0]] = time.monotonic() + NAMESPACE_PAUSE_SECONDS
                return None
            if verdict is Verdict.TRANSIENT:
                await self._transient(key, obj, exc, amend)
                raise
            assert isinstance(exc, ApiError | InvalidSpecError)
            await self._permanent(key, obj, exc, amend)
            return None
        if self.failures.pop(key, 0) >= self.attempts_before_condition:
            await self._write(key, amend, lambda st: synced_status({"status": st}, now_rfc3339()))
        return result

    async def _transient(self, key: Key, obj: JSON, exc: Exception, amend: StatusAmend) -> None:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        if isinstance(exc, ApiError) and _about_itself(exc, self.kind, key):
            STATUS_WRITE_FAILURES.labels(self.kind, str(exc.status)).inc()
        if n == self.attempts_before_condition:
            await self._write(
                key, amend, lambda st: retrying_status({"status": st}, exc, n, now_rfc3339())
            )

    async def _permanent(self, key: Key, obj: JSON, exc: ApiError | InvalidSpecError,
                         amend: StatusAmend) -> None:
        meta = obj.get("metadata") or {}
        self.refused[key] = (meta.get("uid"), meta.get("generation"))
        self.failures.pop(key, None)
        if isinstance(exc, InvalidSpecError):
            log.warning("%s %s/%s: %s", self.kind, *key, exc)
        elif _about_itself(exc, self.kind, key):
            # our own status write was refused: say so; the Failed status below is smaller and
            # may pass (if not, it is logged and counted again, and nothing retries)
            STATUS_WRITE_FAILURES.labels(self.kind, str(exc.status)).inc()
            log.error("status of %s %s/%s refused by the API server: %s", self.kind, *key, exc)
        else:
            log.warning("%s %s/%s: a child was refused for good (%s); the object fails",
                        self.kind, *key, exc)
        await self._write(
            key, amend,
            lambda st: refused_status({**obj, "status": st}, exc, self.kind, now_rfc3339(),
                                      condition=self.condition),
        )

    async def _write(self, key: Key, amend: StatusAmend, change: Callable[[JSON], JSON]) -> None:
        try:
            await amend(change)
        except Exception as exc:  # a failing status write must not loop: log and count it
            code = str(exc.status) if isinstance(exc, ApiError) else "0"
            STATUS_WRITE_FAILURES.labels(self.kind, code).inc()
            log.error("status of %s %s/%s not written: %s", self.kind, *key, exc)
