"""A progressive rollout's objects (pure builders): the candidate's names, Deployment and
Service, the stable Deployment's shadow flags and replica split, and the HTTPRoute that carries
the weight through the Gateway API (`rollout.gatewayRef`). The step state machine is in
`rollout.py`; docs/rollout.md tells the whole story.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.api.rollout import GatewayRef, RolloutStep
from kubeforge.apply import manifest_hash
from kubeforge.modeldeployment import _children as mdchildren
from kubeforge.modeldeployment import _deployment as mddeployment
from kubeforge.modeldeployment import _scaling as mdscaling
from kubeforge.settings import Settings

JSON = dict[str, Any]

CANDIDATE_SUFFIX = "-candidate"
NAME_MAX = 63
CANDIDATE_OF = "candidate-of"
"""Label (under the operator's prefix) on the candidate's Deployment, Service and pods."""



def candidate_name(name: str) -> str:
    """`<name>-candidate`, shortened with a hash when that passes 63 characters (a Service name
    is an RFC 1035 label)."""
    full = name + CANDIDATE_SUFFIX
    if len(full) <= NAME_MAX:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: NAME_MAX - len(CANDIDATE_SUFFIX) - 9]}-{digest}{CANDIDATE_SUFFIX}"


def candidate_url(name: str, namespace: str) -> str:
    """The candidate Service's in-cluster base URL (the stable servers' --shadow-url)."""
    return f"http://{candidate_name(name)}.{namespace}.svc.cluster.local:{mdchildren.HTTP_PORT}"


def candidate_labels(settings: Settings, name: str) -> dict[str, str]:
    return {
        settings.label(CANDIDATE_OF): name,
        settings.label("kind"): mdchildren.KIND,
        "app.kubernetes.io/managed-by": settings.field_manager,
    }


def candidate_selector(settings: Settings, name: str) -> dict[str, str]:
    return {settings.label(CANDIDATE_OF): name, settings.label("kind"): mdchildren.KIND}


# --- traffic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    stable: int | None
    """Stable replicas to set (None: leave them to spec.replicas / the HPA)."""
    candidate: int
    weight: int
    """The effective percent of requests the candidate answers (replica share)."""
    shadow: int
    """Percent of the stable servers' answers mirrored to the candidate."""
    answering: bool
    """Whether the candidate pods join the Service (a weight step)."""


def split(
    step: RolloutStep, stable_replicas: int, autoscaled: bool, *, routed: bool = False
) -> Split:
    """Replicas for a step: the candidate gets its share of the stable count (at least one);
    in a weight step the stable count gives up as many (never below one) unless an HPA owns it.
    `routed` (an HTTPRoute carries the weight): the stable count stays, the weight is exact, and
    the candidate pods never join the ModelDeployment's Service."""
    n = max(1, stable_replicas)
    # a weight step sizes the candidate by its weight; a shadow step by the mirrored share
    share = step.weight or step.shadow or 0
    cand = max(1, math.ceil(n * share / 100))
    if not step.weight:
        return Split(None, cand, 0, step.shadow or 0, False)
    if routed:
        return Split(None, cand, step.weight, step.shadow or 0, False)
    stable = n if autoscaled else max(1, n - cand)
    weight = round(100 * cand / (cand + stable))
    return Split(None if autoscaled else stable, cand, weight, step.shadow or 0, True)


# --- builders ------------------------------------------------------------------------------


def _rehash(manifest: JSON, settings: Settings) -> mdchildren.Child:
    key = settings.label(mdchildren.SPEC_HASH)
    manifest["metadata"].setdefault("annotations", {}).pop(key, None)
    digest = manifest_hash(manifest)
    manifest["metadata"]["annotations"][key] = digest
    return mdchildren.Child(manifest, digest)


def shadow_args(spec: ModelDeploymentSpec, name: str, namespace: str, percent: int) -> list[str]:
    a = spec.rollout.analysis
    return [
        "--shadow-url", candidate_url(name, namespace),
        "--shadow-percent", str(percent),
        "--shadow-tolerance", repr(float(a.agreement_tolerance)),
    ]


def stable_deployment(
    child: mdchildren.Child, settings: Settings, *, extra_args: list[str], replicas: int | None
) -> mdchildren.Child:
    """The stable Deployment during a step: its usual manifest plus the shadow flags and the
    replica split."""
    if not extra_args and replicas is None:
        return child
    manifest = copy.deepcopy(child.manifest)
    spec = manifest["spec"]
    container = spec["template"]["spec"]["containers"][0]
    container["args"] = [*container["args"], *extra_args]
    if replicas is not None:
        spec["replicas"] = replicas
    return _rehash(manifest, settings)


def candidate_deployment(
    md: JSON,
    spec: ModelDeploymentSpec,
    settings: Settings,
    candidate_uri: str,
    *,
    replicas: int,
    answering: bool,
) -> mdchildren.Child:
    """The candidate Deployment: the stable one's pod template with the new model, its own name
    and selector; its pods carry the ModelDeployment's selector label only when `answering`."""
    name = md["metadata"]["name"]
    base = mddeployment.build_deployment(md, spec, settings, candidate_uri)
    manifest = copy.deepcopy(base.manifest)
    meta = manifest["metadata"]
    meta["name"] = candidate_name(name)
    meta["labels"] = candidate_labels(settings, name)
    dep = manifest["spec"]
    dep["selector"] = {"matchLabels": candidate_selector(settings, name)}
    pod_labels = dep["template"]["metadata"]["labels"]
    pod_labels.pop(settings.label("modeldeployment"), None)
    pod_labels.update(candidate_labels(settings, name))
    if answering:
        pod_labels[settings.label("modeldeployment")] = name
    dep["replicas"] = replicas
    return _rehash(manifest, settings)


def candidate_service(md: JSON, settings: Settings) -> mdchildren.Child:
    """The candidate's own Service: the stable servers mirror to it."""
    name = md["metadata"]["name"]
    manifest = copy.deepcopy(mdscaling.build_service(md, settings).manifest)
    manifest["metadata"]["name"] = candidate_name(name)
    manifest["metadata"]["labels"] = candidate_labels(settings, name)
    manifest["spec"]["selector"] = candidate_selector(settings, name)
    return _rehash(manifest, settings)


GATEWAY_GROUP_VERSION = "gateway.networking.k8s.io/v1"


def http_route(
    md: JSON, settings: Settings, gateway: GatewayRef, candidate_weight: int
) -> mdchildren.Child:
    """The ModelDeployment's HTTPRoute (named after it): all requests to its Service, or, in a
    weight step, `candidate_weight` percent to the candidate's Service."""
    name = md["metadata"]["name"]
    parent: JSON = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    backends: list[JSON] = [
        {"name": name, "port": mdchildren.HTTP_PORT, "weight": 100 - candidate_weight}
    ]
    if candidate_weight:
        backends.append(
            {"name": candidate_name(name), "port": mdchildren.HTTP_PORT, "weight": candidate_weight}
        )
    manifest: JSON = {
        "apiVersion": GATEWAY_GROUP_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": md["metadata"]["namespace"],
            "labels": mdchildren.labels(settings, name),
            "ownerReferences": [mdchildren.owner_reference(md)],
        },
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": backends,
                }
            ],
        },
    }
    return _rehash(manifest, settings)
