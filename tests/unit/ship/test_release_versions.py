"""One version everywhere: the chart's version and appVersion, the Python package, the image tags
in values.yaml, the image names the release workflow pushes, and the tags `make images-push`
gives the images it builds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from kubeforge_cluster import ship

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubeforge"
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _chart() -> dict[str, str]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def _values() -> dict[str, object]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_chart_version_app_version_and_package_version_agree() -> None:
    chart = _chart()
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == chart["version"] == py, (chart, py)


def test_values_image_tags_are_the_app_version() -> None:
    app = _chart()["appVersion"]
    values = _values()
    image = values["image"]
    assert isinstance(image, dict)
    assert image["tag"] == "", "image.tag empty: the operator image follows appVersion"
    images = values["images"]
    assert isinstance(images, dict)
    for key, ref in images.items():
        assert ref.rsplit(":", 1)[1] == app, f"images.{key}={ref}: tag is not appVersion {app}"


def test_release_workflow_pushes_the_images_values_yaml_names() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    prefix = wf["env"]["IMAGE_PREFIX"]
    matrix = wf["jobs"]["images"]["strategy"]["matrix"]["include"]
    pushed = {f"{prefix}/{m['image']}" for m in matrix}
    values = _values()
    image = values["image"]
    images = values["images"]
    assert isinstance(image, dict) and isinstance(images, dict)
    named = {image["repository"], *(ref.rsplit(":", 1)[0] for ref in images.values())}
    assert pushed == named, f"workflow pushes {sorted(pushed)}, values.yaml names {sorted(named)}"
    # every Dockerfile the workflow builds exists, and the tag comes from the checked version
    for m in matrix:
        assert (REPO / m["dockerfile"]).is_file(), m
    build = next(
        s
        for s in wf["jobs"]["images"]["steps"]
        if s.get("uses", "").startswith("docker/build-push")
    )
    assert build["with"]["tags"].endswith(":${{ needs.version.outputs.version }}")
    assert build["with"]["platforms"] == "${{ matrix.platforms }}"
    assert any("linux/arm64" in m["platforms"] for m in matrix)
    assert all("linux/amd64" in m["platforms"] for m in matrix)


def test_release_workflow_checks_the_tag_against_the_chart() -> None:
    text = WORKFLOW.read_text()
    assert re.search(r"yq -r \.appVersion charts/kubeforge/Chart\.yaml", text)
    assert "cosign sign" in text and "helm push" in text and "spdx" in text


def test_local_pushes_use_app_version_and_the_same_paths() -> None:
    app = _chart()["appVersion"]
    for name in ("operator", "server", "trainer"):
        ref = ship.image_ref("127.0.0.1:5000", name)
        assert ref == f"127.0.0.1:5000/kubeforge/{name}:{app}"
    # with image.registry=127.0.0.1:5000 the chart asks for exactly these (test_ship_config)
    values = _values()
    images = values["images"]
    assert isinstance(images, dict)
    assert images["server"].split("/", 1)[1] == f"kubeforge/server:{app}"
