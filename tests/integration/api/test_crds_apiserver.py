"""The generated CRDs on the real API server: they install, examples pass a server-side dry
run, invalid specs are refused by the API server itself naming the field, kubectl explains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import ADMISSION, BASE, INVALID_NAMES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def _objects(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_pass_server_side_dry_run(
    path: Path, kubeforge_crds: list[str], kubectl: Any, namespace: str
) -> None:
    out = kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert "serverside-applied (server dry run)" in out


@pytest.mark.parametrize(("case", "kind", "spec", "field"), ADMISSION, ids=[c[0] for c in ADMISSION])
def test_invalid_specs_refused_by_the_api_server(
    case: str, kind: str, spec: dict[str, Any], field: str,
    kubeforge_crds: list[str], kubectl: Any, namespace: str,
) -> None:
    obj = {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind,
           "metadata": {"name": case, "namespace": namespace}, "spec": spec}
    result = kubectl.result("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    assert result.returncode != 0, f"{case}: the API server accepted it"
    # The API server names the field: "spec.resources.nodes: Invalid value ..." or, for
    # unknown fields, '.spec.resources.gpu: field not declared in schema'.
    assert field in result.stderr, f"{case}: {field!r} not in {result.stderr!r}"


def test_at_least_25_invalid_specs_checked_at_admission() -> None:
    assert len(ADMISSION) >= 25


def test_immutable_spec_fields_refused_on_update(
    kubeforge_crds: list[str], kubectl: Any, namespace: str
) -> None:
    doc = _objects(ROOT / "examples" / "trainingjob.yaml")[0]
    doc["metadata"]["namespace"] = namespace
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))
    doc["spec"]["hyperparameters"]["lr"] = 0.5
    result = kubectl.result("apply", "--server-side", "-f", "-", input=json.dumps(doc))
    assert result.returncode != 0
    assert "spec.hyperparameters" in result.stderr and "immutable" in result.stderr
    # suspend and runPolicy may change.
    doc["spec"]["hyperparameters"]["lr"] = 0.01
    doc["spec"]["suspend"] = True
    doc["spec"]["runPolicy"] = {"backoffLimit": 1}
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))


def test_defaults_are_applied_by_the_api_server(
    kubeforge_crds: list[str], kubectl: Any, namespace: str
) -> None:
    doc = _objects(ROOT / "examples" / "trainingjob.yaml")[0]
    doc["metadata"]["namespace"] = namespace
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))
    stored = kubectl.json("get", "trainingjob", doc["metadata"]["name"], "-n", namespace)
    assert stored["spec"]["resources"]["nodes"] == 1
    assert stored["spec"]["resources"]["gpuResource"] == "nvidia.com/gpu"
    assert stored["spec"]["pod"]["runAsUser"] == 1000
    assert stored["spec"]["output"]["onnx"] == {"opset": 17, "dynamicBatch": True}


def test_kubectl_explain_teaches_the_api(kubeforge_crds: list[str], kubectl: Any) -> None:
    out = kubectl("explain", "trainingjob.spec.resources")
    assert "gpusPerNode" in out and "GPUs per pod." in out
    assert "procsPerNode" in out and "torchrun" in out
    out = kubectl("explain", "tuningstudy.spec.algorithm")
    assert "Optuna" in out


def test_category_lists_all_three_kinds(
    kubeforge_crds: list[str], kubectl: Any, namespace: str
) -> None:
    for path in ("trainingjob.yaml", "tuningstudy.yaml", "modeldeployment.yaml"):
        kubectl("apply", "--server-side", "-n", namespace, "-f", str(ROOT / "examples" / path))
    out = kubectl("get", "kubeforge", "-n", namespace)
    assert "trainingjob.kubeforge.io/digits-mlp" in out
    assert "tuningstudy.kubeforge.io/digits-search" in out
    assert "modeldeployment.kubeforge.io/digits-mlp" in out
    short = kubectl("get", "tj,ts,md", "-n", namespace, "-o", "name")
    assert len(short.split()) == 3


@pytest.mark.parametrize(("case", "kind", "name"), INVALID_NAMES, ids=[c[0] for c in INVALID_NAMES])
def test_names_that_children_cannot_take_are_refused(
    case: str, kind: str, name: str, kubeforge_crds: list[str], kubectl: Any, namespace: str,
) -> None:
    obj = {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": namespace}, "spec": BASE[kind]}
    result = kubectl.result("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    assert result.returncode != 0, f"{case}: the API server accepted it"
    assert "metadata.name" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["TrainingJob", "TuningStudy", "ModelDeployment"])
def test_longest_names_are_accepted(
    kind: str, kubeforge_crds: list[str], kubectl: Any, namespace: str,
) -> None:
    limit = {"TrainingJob": 52, "TuningStudy": 63, "ModelDeployment": 63}[kind]
    obj = {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind,
           "metadata": {"name": "a" * limit, "namespace": namespace}, "spec": BASE[kind]}
    kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(obj))


def test_crds_read_back_as_written_so_a_second_applier_has_no_conflict(
    kubeforge_crds: list[str], kubectl: Any
) -> None:
    # The session applied crds/ as "kubectl"; Helm (or Argo CD) applies the same files under its
    # own field manager. A value the API server stores differently (2**62 came back rounded)
    # makes that a server-side-apply conflict on .spec.versions, and `helm install` fails.
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        result = kubectl.result(
            "apply", "--server-side", "--dry-run=server", "--field-manager=second-applier",
            "-f", str(path),
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
