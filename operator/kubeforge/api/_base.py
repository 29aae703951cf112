"""The base of every API model: camelCase on the wire, snake_case in Python, strict keys."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubeforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class KubeModel(BaseModel):
    """Wire names are camelCase (Kubernetes style); unknown keys are refused, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _quantity_text(value: object) -> object:
    # YAML turns `cpu: 1` into an int; Kubernetes accepts both, so do we.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {"rule": "isQuantity(string(self))",
                 "message": "must be a Kubernetes quantity such as 500m, 2 or 4Gi"}
            ],
        },
    ),
]
"""A Kubernetes resource quantity such as `500m`, `2`, `4Gi`."""

OptionalQuantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    Field(
        pattern=r"^$|" + QUANTITY_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {"rule": "string(self) == '' || isQuantity(string(self))",
                 "message": "must be empty or a Kubernetes quantity such as 500m, 2 or 4Gi"}
            ],
        },
    ),
]
"""A quantity, or the empty string for "the same as the request"."""

FREE_FORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
"""Schema of a value of any JSON type (kept as written)."""



def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One CEL `x-kubernetes-validations` entry."""
    out = {"rule": expr, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def cel(*rules: dict[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules for a model or field."""
    return {"x-kubernetes-validations": list(rules)}


_SUFFIX = {
    "": 1, "n": 10**-9, "u": 10**-6, "m": 10**-3, "k": 10**3, "M": 10**6, "G": 10**9,
    "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str) -> float:
    """The value of a Kubernetes quantity (`500m` → 0.5, `2Gi` → 2147483648.0)."""
    import re

    match = re.fullmatch(r"([+-]?[0-9.]+)(?:([eE][-+]?[0-9]+)|([numkMGTPE]i?)?)", text.strip())
    if not match or (match.group(3) or "") not in _SUFFIX:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = float(match.group(1) + (match.group(2) or ""))
    return number * _SUFFIX[match.group(3) or ""]
