"""Warm start: earlier results, inline or from other studies, that the sampler starts from."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from kubeforge.api._base import DNS_1035_LABEL, FREE_FORM, KubeModel, cel, rule

TUNINGSTUDY_NAME_MAX = 63
"""A study's name is the prefix of its trials' names (hashed to fit) and a label value."""

MAX_WARM_TRIALS = 1000


class WarmTrial(KubeModel):
    """An earlier result: parameters and the objective values they gave."""

    params: dict[str, Any] = Field(
        description="Values of the search space's parameters (every one, within its range).",
        json_schema_extra={**FREE_FORM, "maxProperties": 32},
    )
    values: dict[str, float] = Field(
        description="The objective metric's value (every objective's, with spec.objectives), "
        "by metric.",
        json_schema_extra={"maxProperties": 4},
    )


MAX_WARM_STUDIES = 16


class WarmStart(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("!has(self.fromStudies) || self.fromStudies.all(n, "
             "self.fromStudies.filter(m, m == n).size() == 1)",
             "fromStudies must name different studies", field_path=".fromStudies"))}

    trials: list[WarmTrial] = Field(
        default_factory=list,
        description="Earlier results the sampler starts from: they enter the rebuilt study as "
        "completed trials (they are not trials of this study: not counted, never bestTrial).",
        max_length=MAX_WARM_TRIALS,
    )
    from_studies: list[str] = Field(
        default_factory=list,
        description="TuningStudies in this namespace whose trials that had completed when this "
        "study was created enter the rebuilt study as completed trials, after `trials` "
        "(parameters not in this searchSpace are ignored; a trial outside its ranges or "
        "lacking an objective metric is skipped; the WarmStarted condition says what was used).",
        max_length=MAX_WARM_STUDIES,
        json_schema_extra={"items": {"type": "string", "pattern": DNS_1035_LABEL,
                                     "maxLength": TUNINGSTUDY_NAME_MAX}},
    )

    @field_validator("from_studies")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if len(name) > TUNINGSTUDY_NAME_MAX or not re.match(DNS_1035_LABEL, name):
                raise ValueError(f"fromStudies[{i}]: {name!r} is not a TuningStudy name")
        if len(set(value)) != len(value):
            raise ValueError("fromStudies must name different studies")
        return value
