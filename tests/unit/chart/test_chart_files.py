"""The chart's static files: CRDs, the progress policy, values.schema.json, Argo CD scripts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubeforge"


def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def test_chart_crds_are_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "crds/ is empty"
    assert sorted(chart) == sorted(top), "charts/kubeforge/crds/ and crds/ hold different files"
    stale = [n for n in top if chart[n] != top[n]]
    assert not stale, f"stale chart CRDs {stale}: run `make crds` (it copies them)"


def test_values_schema_is_valid_draft7() -> None:
    jsonschema.Draft7Validator.check_schema(schema())


@pytest.mark.parametrize("name", ["values.yaml", "ci/sample-values.yaml"])
def test_values_files_pass_the_schema(name: str) -> None:
    values = yaml.safe_load((CHART / name).read_text())
    if name != "values.yaml":  # helm validates the merged values
        base = yaml.safe_load((CHART / "values.yaml").read_text())
        values = _merge(base, values)
    jsonschema.Draft7Validator(schema()).validate(values)


def test_every_default_value_is_described_by_the_schema() -> None:
    """additionalProperties: false all the way down, so a typo in a values file fails."""
    props = schema()["properties"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(props)
    free_form = {"affinity"}  # core/v1 Affinity: checked by the API server
    for key, value in values.items():
        if key not in free_form and isinstance(value, dict) and props[key].get("type") == "object":
            assert props[key].get("additionalProperties") is False, key


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_argocd_health_scripts_exist_for_each_kind() -> None:
    for kind in ("TrainingJob", "TuningStudy", "ModelDeployment"):
        assert (CHART / "argocd" / "health" / f"{kind}.lua").is_file()
        readme = (CHART / "README.md").read_text()
        assert f"resource.customizations.health.kubeforge.io_{kind}" in readme


def test_readme_documents_the_crd_upgrade_path() -> None:
    readme = (CHART / "README.md").read_text()
    assert "kubectl apply --server-side --force-conflicts -f charts/kubeforge/crds/" in readme
