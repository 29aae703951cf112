"""Storage references: the URI schemes models and data come from, and the credentials Secret."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubeforge.api._base import rule

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
