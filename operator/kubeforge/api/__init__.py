"""The kubeforge API (group kubeforge.io, version v1alpha1): one pydantic model per spec and
status, the single source of truth for the CRDs, the operator, the trainer and the server.
Imports only pydantic and the standard library."""

from kubeforge.api._autoscaling import Autoscaling
from kubeforge.api._base import API_VERSION, GROUP, VERSION, KubeModel
from kubeforge.api._conditions import Condition, ConditionStatus
from kubeforge.api._pod import EnvVar, PodSettings, Volume
from kubeforge.api._reserved import hp_env_name, hp_env_value
from kubeforge.api._resources import ComputeResources
from kubeforge.api._scheduling import Scheduling, Toleration, TrainingScheduling
from kubeforge.api._tuning_settings import PRUNER_SETTINGS, SAMPLER_SETTINGS
from kubeforge.api._tuning_space import SearchParameter
from kubeforge.api._tuning_status import BestTrial, TrialCounts, TuningPhase, TuningStudyStatus
from kubeforge.api.modeldeployment import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
    ServingPhase,
    ServingResources,
)
from kubeforge.api.trainingjob import (
    EXIT_BAD_CONFIG,
    EXIT_STOPPED,
    RECIPES,
    Artifacts,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
    TrainingPhase,
    TrainingResources,
)
from kubeforge.api.tuningstudy import TuningStudy, TuningStudySpec

KINDS = {"TrainingJob": TrainingJob, "TuningStudy": TuningStudy, "ModelDeployment": ModelDeployment}

__all__ = [
    "API_VERSION",
    "EXIT_BAD_CONFIG",
    "EXIT_STOPPED",
    "GROUP",
    "KINDS",
    "PRUNER_SETTINGS",
    "RECIPES",
    "SAMPLER_SETTINGS",
    "VERSION",
    "Artifacts",
    "Autoscaling",
    "BestTrial",
    "ComputeResources",
    "Condition",
    "ConditionStatus",
    "EnvVar",
    "KubeModel",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSource",
    "PodSettings",
    "Scheduling",
    "SearchParameter",
    "ServingPhase",
    "ServingResources",
    "Toleration",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "TrainingPhase",
    "TrainingResources",
    "TrainingScheduling",
    "TrialCounts",
    "TuningPhase",
    "TuningStudy",
    "TuningStudySpec",
    "TuningStudyStatus",
    "Volume",
    "hp_env_name",
    "hp_env_value",
]
