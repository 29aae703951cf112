"""Where pods may run: node selector, tolerations, affinity, priority class, Kueue queue."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import (
    DNS_LABEL,
    QUALIFIED_NAME,
    KubeModel,
    LabelValue,
    OptionalDnsSubdomainName,
    cel,
    check_qualified_keys,
    qualified_keys_rule,
    rule,
)


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
