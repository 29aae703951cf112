"""Compute resources of one pod: CPU, memory, their limits, GPUs and other extended resources."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeforge.api._base import (
    KubeModel,
    OptionalQuantity,
    Quantity,
    cel,
    cel_pattern,
    parse_quantity,
    rule,
)

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
