"""Who may report progress for which TrainingJob: the decisions, as pure functions.

A report is allowed when
1. the API server's TokenReview says the bearer token is valid for kubeforge's audience (an
   expired token, a token for another audience, a forged one: 401), and
2. the token is a ServiceAccount token bound to a Pod (`authentication.kubernetes.io/pod-name`
   and `pod-uid` in `user.extra`; a plain or Secret-based token: 403), of the namespace the
   report names, and
3. that very Pod (same uid: a recreated pod of the same name does not inherit it) is a pod of the
   TrainingJob's own Job: its controller is the Job, and the Job's controller is the TrainingJob
   (same uids all the way; labels alone are not trusted). Otherwise 403.

Each refusal has a short `reason`, the label of the metric `kubeforge_progress_refusals_total`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"

# refusal reasons (metric labels; docs/security.md lists them)
NO_TOKEN = "no-token"
EXPIRED = "expired-token"
WRONG_AUDIENCE = "wrong-audience"
INVALID_TOKEN = "invalid-token"
NOT_A_POD_TOKEN = "not-a-pod-token"
OTHER_NAMESPACE = "other-namespace"
POD_GONE = "pod-gone"
OTHER_TRAININGJOB = "other-trainingjob"
UNKNOWN_TRAININGJOB = "unknown-trainingjob"


@dataclass(frozen=True)
class Caller:
    """The pod a valid token speaks for."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


@dataclass(frozen=True)
class Refusal:
    status: int
    """401 (not authenticated) or 403 (authenticated, not allowed)."""
    reason: str
    message: str


def review_request(token: str, audience: str) -> JSON:
    """The TokenReview to send for `token` (the audience is checked by the API server)."""
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _first(extra: JSON, key: str) -> str:
    values = extra.get(key) or []
    return str(values[0]) if isinstance(values, list) and values else ""


def caller_of(review_status: JSON, audience: str) -> Caller | Refusal:
    """A TokenReview's `status` → the pod the token speaks for, or why not."""
    if not review_status.get("authenticated"):
        error = str(review_status.get("error") or "token not valid")
        low = error.lower()
        if "expired" in low:
            reason = EXPIRED
        elif "audience" in low:
            reason = WRONG_AUDIENCE
        else:
            reason = INVALID_TOKEN
        return Refusal(401, reason, f"token refused by the API server: {error}")
    audiences = review_status.get("audiences")
    if isinstance(audiences, list) and audiences and audience not in audiences:
        return Refusal(401, WRONG_AUDIENCE, f"token is not meant for audience {audience}")
    user = review_status.get("user") or {}
    username = str(user.get("username") or "")
    extra = user.get("extra") or {}
    pod_name, pod_uid = _first(extra, POD_NAME_CLAIM), _first(extra, POD_UID_CLAIM)
    parts = username[len(SA_PREFIX) :].split(":") if username.startswith(SA_PREFIX) else []
    if len(parts) != 2 or not pod_name or not pod_uid:
        return Refusal(
            403,
            NOT_A_POD_TOKEN,
            f"{username or 'this identity'} is not a ServiceAccount token bound to a pod "
            "(use the projected token the operator mounts into training pods)",
        )
    return Caller(namespace=parts[0], service_account=parts[1], pod_name=pod_name, pod_uid=pod_uid)


def _controller(obj: JSON) -> JSON | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def authorize(
    caller: Caller,
    namespace: str,
    trainingjob: str,
    tj: JSON | None,
    job: JSON | None,
    pod: JSON | None,
) -> Refusal | None:
    """Whether `caller` may report for TrainingJob `namespace/trainingjob` (None: yes).

    `tj`, `job`, `pod`: the TrainingJob, its Job and the caller's Pod as the operator sees them
    (None when it knows none)."""
    where = f"TrainingJob {namespace}/{trainingjob}"
    if caller.namespace != namespace:
        return Refusal(
            403, OTHER_NAMESPACE, f"a pod of namespace {caller.namespace} may not report for {where}"
        )
    if tj is None or job is None:
        return Refusal(403, UNKNOWN_TRAININGJOB, f"{where} has no Job the operator knows")
    pod_meta = (pod or {}).get("metadata") or {}
    if pod is None or pod_meta.get("uid") != caller.pod_uid or pod_meta.get("deletionTimestamp"):
        return Refusal(403, POD_GONE, f"pod {caller.pod_name} (of this token) no longer runs")
    tj_uid = (tj.get("metadata") or {}).get("uid")
    job_meta = job.get("metadata") or {}
    job_owner, pod_owner = _controller(job), _controller(pod)
    if (
        job_owner is None
        or job_owner.get("uid") != tj_uid
        or pod_owner is None
        or pod_owner.get("kind") != "Job"
        or pod_owner.get("uid") != job_meta.get("uid")
    ):
        return Refusal(
            403, OTHER_TRAININGJOB, f"pod {caller.pod_name} is not a pod of {where}"
        )
    return None
