"""Generate the CustomResourceDefinitions in `crds/` from the pydantic API models.

`python -m kubeforge.crdgen [OUT_DIR]` (what `make crds` runs). The models are the one source of
truth; a unit test fails when the checked-in files differ from what this prints.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kubeforge.api import GROUP, VERSION
from kubeforge.api._base import object_name_rule
from kubeforge.api.modeldeployment import (
    MODELDEPLOYMENT_NAME_MAX,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from kubeforge.api.trainingjob import TRAININGJOB_NAME_MAX, TrainingJobSpec, TrainingJobStatus
from kubeforge.api.tuningstudy import TUNINGSTUDY_NAME_MAX, TuningStudySpec, TuningStudyStatus

# Keys an OpenAPI v3 structural schema keeps; everything else pydantic emits is dropped.
_KEEP = {
    "type", "description", "default", "enum", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "items", "properties", "required",
    "additionalProperties", "minItems", "maxItems", "minProperties", "maxProperties", "format",
    "nullable", "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "anyOf", "not",
}


class _Converter:
    """Turns pydantic's JSON schema (draft 2020-12 with $defs) into a structural schema."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        typed = node.pop("x-kubeforge-properties", None)
        if typed is not None:
            # A free-form dict in Python, a typed object in the CRD (CEL can read it).
            node.pop("additionalProperties", None)
            node["type"] = "object"
            node["properties"] = typed
        junctors = node.pop("x-kubeforge-any-of", None)
        if junctors is not None:
            out = self.convert(node)
            out["anyOf"] = junctors
            return out
        if "$ref" in node:
            target = self.defs[node.pop("$ref").split("/")[-1]]
            merged = {**copy.deepcopy(target), **node}
            if "x-kubernetes-validations" in target and "x-kubernetes-validations" in node:
                merged["x-kubernetes-validations"] = (
                    target["x-kubernetes-validations"] + node["x-kubernetes-validations"]
                )
            return self.convert(merged)
        if "allOf" in node and len(node["allOf"]) == 1:
            inner = node.pop("allOf")[0]
            return self.convert({**inner, **node})
        if "anyOf" in node:
            options = node.pop("anyOf")
            non_null = [o for o in options if o.get("type") != "null"]
            nullable = len(non_null) != len(options)
            if len(non_null) == 1:
                out = self.convert({**non_null[0], **node})
                if nullable and node.get("default", "absent") is None:
                    out["nullable"] = True
                out.pop("default", None) if out.get("default", 0) is None else None
                return out
            raise ValueError(f"cannot make a structural schema of anyOf {options}")
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.pop("pattern", None)
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            node["minimum"] = node.pop("exclusiveMinimum")
            node["exclusiveMinimum"] = True
        if node.get("type") == "object" or "properties" in node:
            node["type"] = "object"
            extra = node.get("additionalProperties")
            if extra is True or extra == {}:
                node.pop("additionalProperties")
                node["x-kubernetes-preserve-unknown-fields"] = True
            if node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" in node:
                node.pop("additionalProperties")
            if extra is False:
                node.pop("additionalProperties")
        if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") == "object":
            node.pop("additionalProperties", None)
        if "properties" in node:
            node["properties"] = {k: self.convert(v) for k, v in node["properties"].items()}
        if isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = self.convert(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            node["items"] = self.convert(node["items"])
        if node.get("default") is None:
            node.pop("default", None)
        if "enum" in node and "type" not in node:
            node["type"] = "string"
        return {k: v for k, v in node.items() if k in _KEEP}


def _container_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give lists, maps and sub-objects built by default_factory a `default` (the defaulted
    value), so CEL can read every field without has()."""
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in props:
            continue
        prop = props[key]
        if info.default_factory is not None:
            made = info.default_factory()  # type: ignore[call-arg]
            # The whole defaulted object, not {}: the API server checks a default against the
            # CEL rules without filling the nested defaults first.
            if isinstance(made, BaseModel):
                prop["default"] = made.model_dump(by_alias=True, exclude_none=True, mode="json")
            else:
                prop["default"] = made
        sub = _submodel(info)
        if sub is not None:
            target = prop.get("items") if prop.get("type") == "array" else prop
            if target is not None and prop.get("type") != "array":
                if isinstance(prop.get("additionalProperties"), dict):
                    _container_defaults(sub, prop["additionalProperties"])
                else:
                    _container_defaults(sub, prop)
            elif target is not None:
                _container_defaults(sub, target)


def _submodel(info: FieldInfo) -> type[BaseModel] | None:
    import typing

    def find(tp: Any) -> type[BaseModel] | None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        for arg in typing.get_args(tp):
            found = find(arg)
            if found is not None:
                return found
        return None

    return find(info.annotation)


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model, defaults and CEL rules included."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    out = _Converter(defs).convert(raw)
    _container_defaults(model, out)
    normalised: dict[str, Any] = _whole_floats_as_ints(out)
    return normalised


def _whole_floats_as_ints(node: Any) -> Any:
    """65.0 → 65 everywhere (defaults included). The API server keeps a number as JSON: a CRD
    applied first as 65 (kubectl decodes whole numbers to integers) and then as 65.0 (Helm keeps
    the float) is a server-side-apply conflict on the CRD. Integers in the file read the same to
    every client; the schema type (`number`) still takes both."""
    if isinstance(node, dict):
        return {k: _whole_floats_as_ints(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_whole_floats_as_ints(v) for v in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)
    return node


_KINDS: list[dict[str, Any]] = [
    {
        "kind": "TrainingJob",
        "plural": "trainingjobs",
        "short": ["tj", "tjob"],
        "spec": TrainingJobSpec,
        "status": TrainingJobStatus,
        "doc": "TrainingJob trains one model on one or many (GPU) nodes with PyTorch, "
        "and writes model.onnx, checkpoints and metrics.",
        "columns": [
            ("Phase", "string", ".status.phase", "The job's phase."),
            ("Nodes", "integer", ".spec.resources.nodes", "Pods in the job."),
            ("Epoch", "integer", ".status.progress.epoch", "Latest epoch reported."),
            ("Message", "string", ".status.message", "Why it is in this phase.", 1),
        ],
    },
    {
        "kind": "TuningStudy",
        "plural": "tuningstudies",
        "short": ["ts", "study"],
        "spec": TuningStudySpec,
        "status": TuningStudyStatus,
        "doc": "TuningStudy searches hyperparameters with Optuna, running each trial as a "
        "TrainingJob.",
        "columns": [
            ("Phase", "string", ".status.phase", "The study's phase."),
            ("Trials", "string", ".status.progress", "Finished trials / maxTrials."),
            ("Best", "number", ".status.bestTrial.value", "The best objective value so far."),
            ("Metric", "string", ".spec.objective.metric", "The objective metric.", 1),
        ],
    },
    {
        "kind": "ModelDeployment",
        "plural": "modeldeployments",
        "short": ["md", "mdep"],
        "spec": ModelDeploymentSpec,
        "status": ModelDeploymentStatus,
        "doc": "ModelDeployment serves an ONNX model with ONNX Runtime over the Open Inference "
        "Protocol (KServe v2), with autoscaling and Prometheus monitoring.",
        "columns": [
            ("Phase", "string", ".status.phase", "The deployment's phase."),
            ("Ready", "integer", ".status.replicas.ready", "Ready replicas."),
            ("Scaling", "string", ".status.autoscaling.summary",
             "Autoscaler: metric current/target per replica, replicas current->desired."),
            ("URL", "string", ".status.url", "In-cluster inference URL."),
            ("Rollout", "string", ".status.rollout.phase",
             "Progressive rollout: Progressing, Paused, Promoted or RolledBack."),
            ("Step", "integer", ".status.rollout.step", "Current rollout step (0-based).", 1),
            ("Weight", "integer", ".status.rollout.weight",
             "Percent of requests the candidate answers."),
        ],
    },
]


_NAME_MAX = {
    "TrainingJob": TRAININGJOB_NAME_MAX,
    "TuningStudy": TUNINGSTUDY_NAME_MAX,
    "ModelDeployment": MODELDEPLOYMENT_NAME_MAX,
}
"""Longest metadata.name of each kind (every child name derived from it must fit)."""


def crd(kind: dict[str, Any]) -> dict[str, Any]:
    spec_schema = structural(kind["spec"])
    spec_schema["description"] = kind["spec"].__doc__.strip().splitlines()[0] if kind[
        "spec"
    ].__doc__ else f"Spec of the {kind['kind']}."
    status_schema = structural(kind["status"])
    status_schema["description"] = f"Status of the {kind['kind']}, written by the operator."
    columns = []
    for col in kind["columns"]:
        entry: dict[str, Any] = {
            "name": col[0], "type": col[1], "jsonPath": col[2], "description": col[3],
        }
        if len(col) > 4:
            entry["priority"] = col[4]
        columns.append(entry)
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind['plural']}.{GROUP}",
            "annotations": {"kubeforge.io/generated-by": "python -m kubeforge.crdgen"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind["kind"],
                "listKind": kind["kind"] + "List",
                "plural": kind["plural"],
                "singular": kind["kind"].lower(),
                "shortNames": kind["short"],
                "categories": ["kubeforge"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind["doc"],
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                object_name_rule(_NAME_MAX[kind["kind"]])
                            ],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(kind: dict[str, Any]) -> str:
    header = "# Generated by `make crds` (python -m kubeforge.crdgen) from kubeforge.api; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def files() -> dict[str, str]:
    """File name → content of every CRD."""
    return {f"{GROUP}_{k['plural']}.yaml": render(k) for k in _KINDS}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
