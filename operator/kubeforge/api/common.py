"""Pieces shared by the three kinds, defined once: conditions, pod settings, scheduling,
resources and storage references."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeforge.api._base import (
    FREE_FORM,
    KubeModel,
    OptionalQuantity,
    Quantity,
    cel,
    parse_quantity,
    rule,
)

# --- names ---------------------------------------------------------------------------------

RESERVED_ENV_PREFIXES = ("KUBEFORGE_", "HP_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "JOB_COMPLETION_INDEX",
)
RESERVED_LABEL_PREFIX = "kubeforge.io/"
RESERVED_MOUNT_PATHS = ("/kubeforge", "/dev/shm", "/mnt/pvc")

HYPERPARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"
"""Hyperparameter names: anything that still makes a valid `HP_<NAME>` variable."""


def hp_env_name(name: str) -> str:
    """`HP_<NAME>`: upper case, every non-alphanumeric character becomes `_` (DESIGN.md)."""
    return "HP_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def hp_env_value(value: Any) -> str:
    """Scalars as text (booleans as `true`/`false`), anything else as JSON."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# The CEL twin of hp_env_name over the allowed characters ([A-Za-z0-9_.-]).
_CEL_HP = "{v}.upperAscii().replace('-', '_').replace('.', '_')"


def hp_collision_rule(field: str = "") -> dict[str, str]:
    """CEL: no two keys of a map may map to the same HP_ variable."""
    a, b = _CEL_HP.format(v="a"), _CEL_HP.format(v="b")
    return rule(
        f"self.all(a, self.all(b, a == b || {a} != {b}))",
        "two hyperparameter names map to the same HP_ environment variable "
        "(upper case, '-' and '.' become '_')",
    )


def _env_reserved(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES


_CEL_ENV_RESERVED = (
    "!("
    + " || ".join(f"self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    + " || self.name in ["
    + ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    + "])"
)


# --- conditions ------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Type of the condition, e.g. Running, Succeeded, Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", description="A CamelCase machine-readable reason for the last transition."
    )
    message: str = Field(default="", description="A human-readable message with details.")
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        description="The latest available observations of the object's state.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


# --- environment, volumes, pod settings -------------------------------------------------------


class EnvVar(KubeModel):
    """An environment variable (the core/v1 EnvVar shape)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(_CEL_ENV_RESERVED, "this environment variable name is reserved by kubeforge "
             "(KUBEFORGE_*, HP_*, TORCHELASTIC_*, RANK, WORLD_SIZE, MASTER_ADDR, ...)",
             reason="FieldValueForbidden"),
    )}

    name: str = Field(
        description="Name of the variable.",
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        max_length=253,
    )
    value: str | None = Field(default=None, description="Literal value; $(VAR) references expand.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A source for the value (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef), as in core/v1.",
        json_schema_extra=FREE_FORM,
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if _env_reserved(name):
            raise ValueError(f"environment variable name {name!r} is reserved by kubeforge")
        return name


class LocalObjectReference(KubeModel):
    name: str = Field(description="Name of the referenced object in the same namespace.")
    optional: bool | None = Field(default=None, description="Whether it may be absent.")


class EnvFromSource(KubeModel):
    """Environment variables from a whole ConfigMap or Secret (the core/v1 EnvFromSource shape)."""

    prefix: str | None = Field(default=None, description="Prefix added to every variable name.")
    config_map_ref: LocalObjectReference | None = Field(
        default=None, description="The ConfigMap to take variables from."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None, description="The Secret to take variables from."
    )


class EmptyDir(KubeModel):
    size_limit: OptionalQuantity = Field(
        default="", description="Limit on the volume's size (e.g. 10Gi); empty for none."
    )


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Volume(KubeModel):
    """A volume mounted into the main container: exactly one source, never hostPath."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(
            "[has(self.claimName), has(self.secretName), has(self.configMapName), "
            "has(self.emptyDir)].filter(x, x).size() == 1",
            "a volume needs exactly one source: claimName, secretName, configMapName or emptyDir",
        ),
        rule(
            "!self.name.startsWith('kubeforge-')",
            "volume names starting with 'kubeforge-' are reserved",
            field_path=".name",
        ),
        rule(
            "!(" + " || ".join(
                f"self.mountPath == '{p}' || self.mountPath.startsWith('{p}/')"
                for p in RESERVED_MOUNT_PATHS
            ) + ")",
            "this mount path is reserved by kubeforge (/kubeforge, /dev/shm, /mnt/pvc)",
            field_path=".mountPath",
        ),
    )}

    name: str = Field(description="Volume name (a DNS label).", pattern=_DNS_LABEL, max_length=63)
    mount_path: str = Field(
        description="Absolute path in the container.", pattern=r"^/.*", max_length=1024
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    claim_name: str | None = Field(default=None, description="A PersistentVolumeClaim to mount.")
    secret_name: str | None = Field(default=None, description="A Secret to mount as files.")
    config_map_name: str | None = Field(default=None, description="A ConfigMap to mount as files.")
    empty_dir: EmptyDir | None = Field(default=None, description="A scratch directory.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = [self.claim_name, self.secret_name, self.config_map_name, self.empty_dir]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "a volume needs exactly one source: claimName, secretName, configMapName or emptyDir"
            )
        if self.name.startswith("kubeforge-"):
            raise ValueError("volume names starting with 'kubeforge-' are reserved")
        for p in RESERVED_MOUNT_PATHS:
            if self.mount_path == p or self.mount_path.startswith(p + "/"):
                raise ValueError(f"mountPath {self.mount_path!r} is reserved by kubeforge")
        return self


def _reserved_keys_rule(what: str) -> dict[str, str]:
    return rule(
        f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
        f"{what} keys under '{RESERVED_LABEL_PREFIX}' are reserved by kubeforge",
    )


class PodSettings(KubeModel):
    """Pod settings shared by TrainingJob and ModelDeployment (`spec.pod`)."""

    service_account_name: str = Field(
        default="",
        description="The pods' ServiceAccount (identity for s3://, gs://, az:// through IRSA or "
        "Workload Identity). Empty: kubeforge's own narrow account.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables (core/v1 shape). Reserved names are refused.",
        max_length=128,
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        description="Environment from whole ConfigMaps or Secrets (core/v1 shape).",
        max_length=32,
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        description="Volumes mounted into the main container; exactly one source each, no hostPath.",
        max_length=32,
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels added to the pods; keys under kubeforge.io/ are reserved.",
        json_schema_extra={"maxProperties": 64, **cel(_reserved_keys_rule("label"))},
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations added to the pods (e.g. sidecar.istio.io/inject: \"false\"); "
        "keys under kubeforge.io/ are reserved.",
        json_schema_extra={"maxProperties": 64, **cel(_reserved_keys_rule("annotation"))},
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of Secrets used to pull the image.", max_length=16
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    run_as_user: int = Field(
        default=1000, ge=1, description="UID the containers run as (never 0: Pod Security restricted)."
    )
    run_as_group: int = Field(default=1000, ge=1, description="GID the containers run as (never 0).")
    fs_group: int = Field(default=1000, ge=1, description="Group owning mounted volumes (never 0).")

    @field_validator("labels", "annotations")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if k.startswith(RESERVED_LABEL_PREFIX)]
        if bad:
            raise ValueError(f"keys under {RESERVED_LABEL_PREFIX} are reserved: {bad}")
        return value

    @model_validator(mode="after")
    def _unique_volume_names(self) -> PodSettings:
        names = [v.name for v in self.volumes]
        if len(names) != len(set(names)):
            raise ValueError("volumes: names must be unique")
        return self


# --- scheduling -----------------------------------------------------------------------------


class Toleration(KubeModel):
    """A toleration (core/v1 shape)."""

    key: str | None = Field(default=None, description="The taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="The taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class Scheduling(KubeModel):
    """Where the pods may run."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Taints the pods tolerate (the GPU taint is tolerated automatically when GPUs "
        "are requested).",
        max_length=32,
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Pod affinity rules (the core/v1 Affinity shape).",
        json_schema_extra=FREE_FORM,
    )
    priority_class_name: str = Field(default="", description="PriorityClass of the pods.")


class TrainingScheduling(Scheduling):
    """Where training pods may run, and through which Kueue queue."""

    queue_name: str = Field(
        default="",
        description="Kueue LocalQueue: the Job is created suspended and Kueue admits it as one gang.",
    )


# --- resources --------------------------------------------------------------------------------

_LIMIT_RULES = cel(
    rule(
        "self.cpuLimit == '' || quantity(string(self.cpuLimit)).compareTo(quantity(string(self.cpu))) >= 0",
        "cpuLimit must not be below cpu",
        field_path=".cpuLimit",
    ),
    rule(
        "self.memoryLimit == '' || "
        "quantity(string(self.memoryLimit)).compareTo(quantity(string(self.memory))) >= 0",
        "memoryLimit must not be below memory",
        field_path=".memoryLimit",
    ),
)


class ComputeResources(KubeModel):
    """CPU, memory and extended resources of one pod. Limits default to the requests."""

    cpu: Quantity = Field(default="1", description="CPU request per pod.")
    memory: Quantity = Field(default="1Gi", description="Memory request per pod.")
    cpu_limit: OptionalQuantity = Field(
        default="", description="CPU limit per pod; empty: the same as the request."
    )
    memory_limit: OptionalQuantity = Field(
        default="", description="Memory limit per pod; empty: the same as the request."
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        description="The extended resource name that GPUs are requested as.",
        pattern=r"^([a-z0-9.-]+/)?[a-zA-Z0-9._-]+$",
    )
    extended: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Other extended resources per pod, e.g. {vpc.amazonaws.com/efa: 4}.",
        json_schema_extra={"maxProperties": 16},
    )

    @model_validator(mode="after")
    def _limits_not_below_requests(self) -> ComputeResources:
        for limit, request in (("cpu_limit", "cpu"), ("memory_limit", "memory")):
            value = getattr(self, limit)
            if value and parse_quantity(value) < parse_quantity(getattr(self, request)):
                raise ValueError(f"{to_camel(limit)} must not be below {request}")
        return self


# --- storage --------------------------------------------------------------------------------

STORAGE_SCHEMES = ("file", "pvc", "s3", "gs", "az", "abfs", "hf", "http", "https")


def storage_uri_rule(schemes: tuple[str, ...], field: str = ".uri") -> dict[str, str]:
    alts = "|".join(schemes)
    return rule(
        f"self.uri == '' || self.uri.matches('^({alts})://')",
        f"uri must start with one of: {', '.join(s + '://' for s in schemes)}",
        field_path=field,
    )


def check_uri(uri: str, schemes: tuple[str, ...]) -> str:
    if uri and not any(uri.startswith(s + "://") for s in schemes):
        raise ValueError(f"uri must start with one of: {', '.join(s + '://' for s in schemes)}")
    return uri


SecretName = Annotated[
    str,
    Field(
        default="",
        description="A Secret in the same namespace whose keys become the container's environment "
        "(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, HF_TOKEN, ...). The kubelet reads it; the "
        "operator never does.",
    ),
]
