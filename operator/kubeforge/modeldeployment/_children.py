"""What every child of a ModelDeployment shares: the Child and Desired records, labels,
selector, owner reference, spec hash, the server's ports and its in-cluster URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeforge.apply import manifest_hash
from kubeforge.settings import Settings

JSON = dict[str, Any]

KIND = "ModelDeployment"
API_VERSION = "kubeforge.io/v1alpha1"
HTTP_PORT = 8080
GRPC_PORT = 8081
SPEC_HASH = "spec-hash"


@dataclass(frozen=True)
class Child:
    """One desired child: its apply configuration and the hash stored on it."""

    manifest: JSON
    hash: str

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def api_version(self) -> str:
        return str(self.manifest["apiVersion"])


@dataclass(frozen=True)
class Desired:
    """What a ModelDeployment should have. `deployment` is None while no model can be served."""

    service: Child
    deployment: Child | None = None
    hpa: Child | None = None
    scaled_object: Child | None = None
    pdb: Child | None = None
    service_monitor: Child | None = None
    prometheus_rule: Child | None = None
    absent: list[tuple[str, str]] = field(default_factory=list)
    """(apiVersion, kind) of optional children that must not exist (to delete if present)."""

    def children(self) -> list[Child]:
        """Every child to apply, Service first (the URL is stable from the start)."""
        return [
            c
            for c in (
                self.service,
                self.deployment,
                self.scaled_object,  # before the HPA's deletion (in absent): never neither
                self.hpa,
                self.pdb,
                self.service_monitor,
                self.prometheus_rule,
            )
            if c is not None
        ]


def labels(settings: Settings, name: str) -> dict[str, str]:
    """kubeforge's labels on every child of ModelDeployment `name` (and on its pods)."""
    return {
        settings.label("modeldeployment"): name,
        settings.label("kind"): KIND,
        "app.kubernetes.io/managed-by": settings.field_manager,
    }


def selector(settings: Settings, name: str) -> dict[str, str]:
    """The pods' selector (immutable on a Deployment: never add keys to it)."""
    return {settings.label("modeldeployment"): name, settings.label("kind"): KIND}


def owner_reference(md: JSON) -> JSON:
    meta = md["metadata"]
    return {
        "apiVersion": md.get("apiVersion", API_VERSION),
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def url(name: str, namespace: str) -> str:
    """The in-cluster inference URL (KServe v2 paths below it: /infer, /ready, metadata)."""
    return f"http://{name}.{namespace}.svc.cluster.local:{HTTP_PORT}/v2/models/{name}"


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def hashed_child(manifest: JSON, settings: Settings) -> Child:
    digest = manifest_hash(manifest)
    manifest["metadata"].setdefault("annotations", {})[settings.label(SPEC_HASH)] = digest
    return Child(manifest, digest)


def child_meta(md: JSON, settings: Settings) -> JSON:
    meta = md["metadata"]
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels(settings, meta["name"]),
        "ownerReferences": [owner_reference(md)],
    }
