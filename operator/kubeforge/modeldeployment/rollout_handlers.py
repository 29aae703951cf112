"""The kopf wiring of a progressive rollout: indexes of the candidate's Deployment and pods
(label kubeforge.io/candidate-of), whose events queue their ModelDeployment's reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from kubeforge.context import OperatorContext
from kubeforge.controller import Controller, Key
from kubeforge.modeldeployment.indexed import (
    IDX_CAND_DEPLOY,
    IDX_CAND_PODS,
    Snapshot,
    slim_deployment,
    slim_pod,
)
from kubeforge.modeldeployment.rollout_build import CANDIDATE_OF


def register_rollout(ctx: OperatorContext, ctl: Controller[Snapshot]) -> None:
    s = ctx.settings
    label = s.label(CANDIDATE_OF)
    selector = {label: kopf.PRESENT}

    def parent(namespace: str | None, labels: Any) -> Key:
        return (namespace or "", labels[label])

    @ctx.index_handler("apps", "v1", "deployments", id=IDX_CAND_DEPLOY, labels=selector)
    async def index_candidate(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_deployment(kw["body"], s.field_manager)}

    @ctx.index_handler("", "v1", "pods", id=IDX_CAND_PODS, labels=selector)
    async def index_candidate_pods(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_pod(kw["body"])}

    for group, resource in (("apps", "deployments"), ("", "pods")):

        async def on_candidate(**kw: Any) -> None:
            ctl.enqueue(parent(kw["namespace"], kw["labels"]))

        ctx.event_handler(
            group, "v1", resource, id=f"kubeforge-modeldeployment-candidate-{resource}-event",
            labels=selector,
        )(on_candidate)
