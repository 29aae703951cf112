"""Pieces shared by the three kinds, defined once: conditions, pod settings, scheduling,
resources and storage references."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeforge.api._base import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    QUALIFIED_NAME,
    DnsSubdomainName,
    KubeModel,
    LabelValue,
    OptionalDnsSubdomainName,
    OptionalQuantity,
    Quantity,
    cel,
    cel_pattern,
    check_qualified_keys,
    parse_quantity,
    qualified_keys_rule,
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
ANNOTATION_VALUE_MAX = 3072
"""Characters of one pod annotation value from spec.pod: 64 of them stay well inside the API
server's 256 KiB for all annotations, with room for kubeforge's own."""

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


class KeySelector(KubeModel):
    """One key of a Secret or ConfigMap (core/v1 SecretKeySelector / ConfigMapKeySelector)."""

    name: DnsSubdomainName = Field(description="The Secret or ConfigMap, in the same namespace.")
    key: str = Field(
        description="The key to read.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253
    )
    optional: bool | None = Field(default=None, description="Whether it may be absent.")


_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
    "spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
)
_FIELD_PATH = (
    r"^(" + "|".join(re.escape(f) for f in _FIELD_PATHS)
    + r"|metadata\.(labels|annotations)\['[^']+'\])$"
)


class FieldSelector(KubeModel):
    """A field of the pod (core/v1 ObjectFieldSelector)."""

    api_version: Literal["v1"] | None = Field(default=None, description="Always v1.")
    field_path: str = Field(
        description="One of " + ", ".join(_FIELD_PATHS) + ", metadata.labels['KEY'] or "
        "metadata.annotations['KEY'].",
        pattern=_FIELD_PATH,
        max_length=320,
    )


_DIVISORS = ("1", "1m", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi",
             "1Ei")


class ResourceFieldSelector(KubeModel):
    """A resource of the main container (core/v1 ResourceFieldSelector)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("!self.resource.endsWith('.cpu') || !has(self.divisor) || "
             "self.divisor in ['1', '1m']",
             "divisor of a cpu resource must be 1 or 1m", field_path=".divisor"),
    )}

    resource: str = Field(
        description="limits.cpu, limits.memory, limits.ephemeral-storage, requests.cpu, "
        "requests.memory or requests.ephemeral-storage.",
        pattern=r"^(limits|requests)\.(cpu|memory|ephemeral-storage)$",
    )
    divisor: Literal[_DIVISORS] | None = Field(  # type: ignore[valid-type]
        default=None, description="Unit of the value: " + ", ".join(_DIVISORS) + "."
    )

    @model_validator(mode="after")
    def _cpu_divisor(self) -> ResourceFieldSelector:
        if self.resource.endswith(".cpu") and self.divisor not in (None, "1", "1m"):
            raise ValueError("divisor of a cpu resource must be 1 or 1m")
        return self


class EnvVarSource(KubeModel):
    """Where a variable's value comes from: exactly one source (core/v1 EnvVarSource)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
             "has(self.resourceFieldRef)].filter(x, x).size() == 1",
             "valueFrom needs exactly one of secretKeyRef, configMapKeyRef, fieldRef, "
             "resourceFieldRef"),
    )}

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(
        default=None, description="A key of a ConfigMap."
    )
    field_ref: FieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="A resource of the main container."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        sources = [self.secret_key_ref, self.config_map_key_ref, self.field_ref,
                   self.resource_field_ref]
        if sum(s is not None for s in sources) != 1:
            raise ValueError("valueFrom needs exactly one of secretKeyRef, configMapKeyRef, "
                             "fieldRef, resourceFieldRef")
        return self


class EnvVar(KubeModel):
    """An environment variable (the core/v1 EnvVar shape)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(_CEL_ENV_RESERVED, "this environment variable name is reserved by kubeforge "
             "(KUBEFORGE_*, HP_*, TORCHELASTIC_*, RANK, WORLD_SIZE, MASTER_ADDR, ...)",
             reason="FieldValueForbidden"),
        rule("!has(self.valueFrom) || !has(self.value) || self.value == ''",
             "value and valueFrom cannot both be set", field_path=".valueFrom"),
    )}

    name: str = Field(
        description="Name of the variable.",
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        max_length=253,
    )
    value: str | None = Field(default=None, description="Literal value; $(VAR) references expand.")
    value_from: EnvVarSource | None = Field(
        default=None,
        description="A source for the value (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef), as in core/v1.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if _env_reserved(name):
            raise ValueError(f"environment variable name {name!r} is reserved by kubeforge")
        return name

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError("value and valueFrom cannot both be set")
        return self


class LocalObjectReference(KubeModel):
    name: DnsSubdomainName = Field(description="Name of the referenced object in the same namespace.")
    optional: bool | None = Field(default=None, description="Whether it may be absent.")


class EnvFromSource(KubeModel):
    """Environment variables from a whole ConfigMap or Secret (the core/v1 EnvFromSource shape)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.configMapRef) != has(self.secretRef)",
             "envFrom needs exactly one of configMapRef or secretRef"),
    )}

    prefix: str | None = Field(
        default=None, description="Prefix added to every variable name.",
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=253,
    )
    config_map_ref: LocalObjectReference | None = Field(
        default=None, description="The ConfigMap to take variables from."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None, description="The Secret to take variables from."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("envFrom needs exactly one of configMapRef or secretRef")
        return self


class EmptyDir(KubeModel):
    size_limit: OptionalQuantity = Field(
        default="", description="Limit on the volume's size (e.g. 10Gi); empty for none."
    )


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

    name: str = Field(description="Volume name (a DNS label).", pattern=DNS_LABEL, max_length=63)
    mount_path: str = Field(
        description="Absolute path in the container.", pattern=r"^/.*", max_length=1024
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    claim_name: DnsSubdomainName | None = Field(
        default=None, description="A PersistentVolumeClaim to mount."
    )
    secret_name: DnsSubdomainName | None = Field(
        default=None, description="A Secret to mount as files."
    )
    config_map_name: DnsSubdomainName | None = Field(
        default=None, description="A ConfigMap to mount as files."
    )
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
        pattern=r"^$|" + DNS_SUBDOMAIN,
        max_length=253,
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
        description="Volumes mounted into the main container; exactly one source each, no hostPath; "
        "names and mount paths unique.",
        max_length=32,
        json_schema_extra=cel(
            rule("self.all(a, self.filter(b, b.name == a.name).size() == 1)",
                 "volume names must be unique"),
            rule("self.all(a, self.filter(b, b.mountPath == a.mountPath).size() == 1)",
                 "volume mount paths must be unique"),
        ),
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Labels added to the pods; keys are qualified names (those under kubeforge.io/ "
        "are reserved), values label values (at most 63 characters [A-Za-z0-9-_.]).",
        json_schema_extra={"maxProperties": 64, **cel(
            _reserved_keys_rule("label"), qualified_keys_rule("label"))},
    )
    annotations: dict[str, Annotated[str, Field(max_length=ANNOTATION_VALUE_MAX)]] = Field(
        default_factory=dict,
        description="Annotations added to the pods (e.g. sidecar.istio.io/inject: \"false\"); "
        "keys are qualified names (those under kubeforge.io/ are reserved), values at most "
        "3072 characters (the API server allows 256 KiB of annotations in all).",
        json_schema_extra={"maxProperties": 64, **cel(
            _reserved_keys_rule("annotation"), qualified_keys_rule("annotation"))},
    )
    image_pull_secrets: list[DnsSubdomainName] = Field(
        default_factory=list, description="Names of Secrets used to pull the image.", max_length=16
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    run_as_user: int = Field(
        default=1000, ge=1, le=2147483647, description="UID the containers run as (never 0: Pod Security restricted)."
    )
    run_as_group: int = Field(default=1000, ge=1, le=2147483647, description="GID the containers run as (never 0).")
    fs_group: int = Field(default=1000, ge=1, le=2147483647, description="Group owning mounted volumes (never 0).")

    @field_validator("labels", "annotations")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if k.startswith(RESERVED_LABEL_PREFIX)]
        if bad:
            raise ValueError(f"keys under {RESERVED_LABEL_PREFIX} are reserved: {bad}")
        check_qualified_keys(value, "label or annotation")
        return value

    @model_validator(mode="after")
    def _unique_volume_names(self) -> PodSettings:
        names = [v.name for v in self.volumes]
        if len(names) != len(set(names)):
            raise ValueError("volumes: names must be unique")
        paths = [v.mount_path for v in self.volumes]
        if len(paths) != len(set(paths)):
            raise ValueError("volumes: mount paths must be unique")
        return self


# --- scheduling -----------------------------------------------------------------------------


class Toleration(KubeModel):
    """A toleration (core/v1 shape)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.key) && self.key != '' || self.operator == 'Exists'",
             "a toleration without a key needs operator Exists", field_path=".operator"),
        rule("self.operator != 'Exists' || !has(self.value) || self.value == ''",
             "a toleration with operator Exists takes no value", field_path=".value"),
        rule("!has(self.tolerationSeconds) || self.effect == 'NoExecute'",
             "tolerationSeconds needs effect NoExecute", field_path=".tolerationSeconds"),
    )}

    key: str | None = Field(
        default=None, description="The taint key; empty matches all keys (with operator Exists).",
        pattern=r"^$|" + QUALIFIED_NAME, max_length=317,
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: LabelValue | None = Field(default=None, description="The taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None,
        # +-(2**53 - 1): read back exactly by every JSON client (2**62 came back rounded from
        # the API server, a server-side-apply conflict on the CRD for its next applier)
        ge=-(2**53 - 1),
        le=2**53 - 1,
        description="How long a NoExecute taint is tolerated.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


QualifiedName = Annotated[str, Field(pattern=QUALIFIED_NAME, max_length=317)]

_SET_OPS = ("In", "NotIn")
_EXISTS_OPS = ("Exists", "DoesNotExist")


def _requirement_rules(numeric: bool) -> dict[str, Any]:
    rules = [
        rule("!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
             "operators In and NotIn need values", field_path=".values"),
        rule("!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || "
             "size(self.values) == 0",
             "operators Exists and DoesNotExist take no values", field_path=".values"),
    ]
    if numeric:
        rules.append(rule(
            "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && "
            "self.values[0].matches('^-?[0-9]+$'))",
            "operators Gt and Lt need exactly one integer value", field_path=".values"))
    return cel(*rules)


def _check_requirement(operator: str, values: list[str]) -> None:
    if operator in _SET_OPS and not values:
        raise ValueError(f"operator {operator} needs values")
    if operator in _EXISTS_OPS and values:
        raise ValueError(f"operator {operator} takes no values")
    if operator in ("Gt", "Lt") and (len(values) != 1 or not re.fullmatch(r"-?[0-9]+", values[0])):
        raise ValueError(f"operator {operator} needs exactly one integer value")


class NodeSelectorRequirement(KubeModel):
    """A node label (or field) requirement (core/v1 NodeSelectorRequirement)."""

    model_config = {**KubeModel.model_config, "json_schema_extra": _requirement_rules(True)}

    key: QualifiedName = Field(description="The node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[LabelValue] = Field(
        default_factory=list, description="Values (In, NotIn; one integer for Gt, Lt).",
        max_length=64,
    )

    @model_validator(mode="after")
    def _consistent(self) -> NodeSelectorRequirement:
        _check_requirement(self.operator, self.values)
        return self


class NodeSelectorTerm(KubeModel):
    """Requirements that must all hold (core/v1 NodeSelectorTerm)."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, description="Requirements on node labels.", max_length=32
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, description="Requirements on node fields (metadata.name).",
        max_length=32,
    )


class NodeSelector(KubeModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(
        description="Terms, any of which must hold.", min_length=1, max_length=32
    )


class PreferredSchedulingTerm(KubeModel):
    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(KubeModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, description="Nodes the pods prefer.", max_length=32
    )


class LabelSelectorRequirement(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": _requirement_rules(False)}

    key: QualifiedName = Field(description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list, description="Values (In, NotIn).", max_length=64
    )

    @model_validator(mode="after")
    def _consistent(self) -> LabelSelectorRequirement:
        _check_requirement(self.operator, self.values)
        return self


class LabelSelector(KubeModel):
    """A label selector (meta/v1 LabelSelector)."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, description="Labels that must be equal.",
        json_schema_extra={"maxProperties": 32, **cel(qualified_keys_rule("matchLabels"))},
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Label requirements.", max_length=32
    )

    @field_validator("match_labels")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        check_qualified_keys(value, "matchLabels")
        return value


class PodAffinityTerm(KubeModel):
    label_selector: LabelSelector | None = Field(default=None, description="The pods to match.")
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of the pods to match."
    )
    namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list, description="Namespaces of the pods to match.", max_length=32
    )
    topology_key: QualifiedName = Field(description="Node label that defines co-location.")


class WeightedPodAffinityTerm(KubeModel):
    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(KubeModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, description="Terms that must hold.", max_length=32
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, description="Terms that are preferred.", max_length=32
    )


class Affinity(KubeModel):
    """Pod affinity rules (the core/v1 Affinity shape)."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class Scheduling(KubeModel):
    """Where the pods may run."""

    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Node labels the pods require (keys qualified names, values label values).",
        json_schema_extra={"maxProperties": 32, **cel(qualified_keys_rule("nodeSelector"))},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Taints the pods tolerate (the GPU taint is tolerated automatically when GPUs "
        "are requested).",
        max_length=32,
    )
    affinity: Affinity = Field(
        default_factory=Affinity,
        description="Pod affinity rules (the core/v1 Affinity shape).",
    )
    priority_class_name: OptionalDnsSubdomainName = Field(
        default="", description="PriorityClass of the pods."
    )

    @field_validator("node_selector")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        check_qualified_keys(value, "nodeSelector")
        return value


class TrainingScheduling(Scheduling):
    """Where training pods may run, and through which Kueue queue."""

    queue_name: LabelValue = Field(
        default="",
        description="Kueue LocalQueue: the Job is created suspended and Kueue admits it as one "
        "gang (a label value: at most 63 characters [A-Za-z0-9-_.]).",
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


EXTENDED_RESOURCE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""An extended resource name: a DNS-subdomain domain, '/', a name (≤ 63); never under
kubernetes.io (checked apart: RE2 has no look-ahead)."""


def _extended_name_ok(name: str) -> bool:
    return bool(re.match(EXTENDED_RESOURCE, name)) and "kubernetes.io/" not in name


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
        description="The extended resource name that GPUs are requested as (domain/name, not "
        "under kubernetes.io).",
        pattern=EXTENDED_RESOURCE,
        max_length=317,
        json_schema_extra=cel(rule("!self.contains('kubernetes.io/')",
                                   "gpuResource must not be under kubernetes.io")),
    )
    extended: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Other extended resources per pod, e.g. {vpc.amazonaws.com/efa: 4}: names "
        "domain/name (not under kubernetes.io), whole numbers.",
        json_schema_extra={"maxProperties": 16, **cel(
            rule(f"self.all(k, k.matches({cel_pattern(EXTENDED_RESOURCE)}) && "
                 "!k.contains('kubernetes.io/'))",
                 "extended resource names must be domain/name, not under kubernetes.io"),
            rule("self.all(k, quantity(string(self[k])).isInteger())",
                 "extended resources must be whole numbers"),
        )},
    )

    @field_validator("gpu_resource")
    @classmethod
    def _gpu_resource(cls, value: str) -> str:
        if not _extended_name_ok(value):
            raise ValueError("gpuResource must be domain/name, not under kubernetes.io")
        return value

    @field_validator("extended")
    @classmethod
    def _extended(cls, value: dict[str, str]) -> dict[str, str]:
        for key, qty in value.items():
            if not _extended_name_ok(key):
                raise ValueError(f"extended resource name {key!r} must be domain/name, not under "
                                 "kubernetes.io")
            if not float(parse_quantity(qty)).is_integer():
                raise ValueError(f"extended resource {key!r} must be a whole number, not {qty!r}")
        return value

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
