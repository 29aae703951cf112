"""The base of every API model: camelCase on the wire, snake_case in Python, strict keys."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
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


QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]i?)?$"
"""A non-negative Kubernetes quantity (no sign: nothing kubeforge sizes can be negative)."""

_QUANTITY_CEL = (
    "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) >= 0"
)


def _parseable_quantity(value: object) -> object:
    if isinstance(value, str) and value:
        parse_quantity(value)  # raises ValueError naming the text
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    AfterValidator(_parseable_quantity),
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {"rule": _QUANTITY_CEL,
                 "message": "must be a non-negative Kubernetes quantity such as 500m, 2 or 4Gi"}
            ],
        },
    ),
]
"""A non-negative Kubernetes resource quantity such as `500m`, `2`, `4Gi`."""

OptionalQuantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    AfterValidator(_parseable_quantity),
    Field(
        pattern=r"^$|" + QUANTITY_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {"rule": "string(self) == '' || (" + _QUANTITY_CEL + ")",
                 "message": "must be empty or a non-negative Kubernetes quantity such as 500m, "
                 "2 or 4Gi"}
            ],
        },
    ),
]
"""A quantity, or the empty string for "the same as the request"."""

# --- Kubernetes name patterns (what the API server checks on the children we make) ----------

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label (≤ 63): names of volumes, ports, most objects."""
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1035 label (≤ 63, starts with a letter): Service names."""
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""RFC 1123 subdomain (≤ 253): ServiceAccount, Secret, ConfigMap, claim names."""
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label or annotation key: optional DNS-subdomain prefix and `/`, a name of ≤ 63 characters."""
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
"""A label value (≤ 63 characters; may be empty)."""

DnsSubdomainName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
OptionalDnsSubdomainName = Annotated[str, Field(pattern=r"^$|" + DNS_SUBDOMAIN, max_length=253)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]


def cel_pattern(pattern: str) -> str:
    """A regular expression as a CEL string literal (single-quoted, backslashes doubled)."""
    return "'" + pattern.replace("\\", "\\\\") + "'"


def qualified_keys_rule(what: str) -> dict[str, str]:
    """CEL: every key of a map is a qualified name (label/annotation key)."""
    return rule(
        f"self.all(k, k.matches({cel_pattern(QUALIFIED_NAME)}) && "
        "(!k.contains('/') || k.indexOf('/') <= 253))",
        f"{what} keys must be qualified names: an optional DNS-subdomain prefix and '/', then "
        "at most 63 characters [A-Za-z0-9-_.] starting and ending alphanumeric",
    )


def check_qualified_keys(keys: Any, what: str) -> None:
    """The pydantic twin of `qualified_keys_rule`."""
    import re

    for key in keys:
        if not re.match(QUALIFIED_NAME, key) or ("/" in key and key.index("/") > 253):
            raise ValueError(f"{what} key {key!r} is not a qualified name (prefix/name, name at "
                             "most 63 characters [A-Za-z0-9-_.] starting and ending alphanumeric)")


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

    match = re.fullmatch(
        r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][-+]?[0-9]+)|([numkMGTPE]i?)?)",
        text.strip(),
    )
    if not match or (match.group(3) or "") not in _SUFFIX:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = float(match.group(1) + (match.group(2) or ""))
    return number * _SUFFIX[match.group(3) or ""]


def object_name_rule(limit: int) -> dict[str, str]:
    """CEL at the root of a CRD: `metadata.name` is an RFC 1035 label of at most `limit`
    characters, so that every child name derived from it (Job, Service, pod hostnames, labels)
    is valid too."""
    return rule(
        f"self.metadata.name.size() <= {limit} && "
        f"self.metadata.name.matches({cel_pattern(DNS_1035_LABEL)})",
        f"metadata.name must be at most {limit} characters of a-z, 0-9 and '-', starting with a "
        "letter and ending alphanumeric (names of the objects made for it derive from it)",
    )


def check_object_name(metadata: dict[str, Any], limit: int) -> dict[str, Any]:
    """The pydantic twin of `object_name_rule` (a missing name is left to the API server)."""
    import re

    name = metadata.get("name")
    if isinstance(name, str) and (len(name) > limit or not re.match(DNS_1035_LABEL, name)):
        raise ValueError(
            f"metadata.name {name!r} must be at most {limit} characters of a-z, 0-9 and '-', "
            "starting with a letter and ending alphanumeric"
        )
    return metadata
