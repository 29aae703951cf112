"""Pod settings (`spec.pod`): environment, envFrom, volumes, labels, annotations, identity."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DnsSubdomainName,
    KubeModel,
    LabelValue,
    OptionalQuantity,
    cel,
    check_qualified_keys,
    qualified_keys_rule,
    rule,
)
from kubeforge.api._reserved import (
    _CEL_ENV_RESERVED,
    ANNOTATION_VALUE_MAX,
    RESERVED_LABEL_PREFIX,
    RESERVED_MOUNT_PATHS,
    _env_reserved,
)


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
