"""The shipping pieces without running them: the loopback registry's config, containerd's
hosts.toml, BuildKit's registry config, the upload count read from the registry's access log,
the pinned tool versions, and the chart's image.registry rewrite (helm template)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from kubeforge_cluster import buildkit, registry, ship, shipbins
from kubeforge_cluster.helm import Helm, HelmError, find_helm, rendered_env
from kubeforge_cluster.realnode.components import containerd_config

REPO = Path(__file__).resolve().parents[3]

LOG = """\
127.0.0.1 - - [06/Dec/2026:10:01:16 +0000] "HEAD /v2/kubeforge/server/blobs/sha256:aa HTTP/1.1" 404 157 "" "buildkit/v0.34"
127.0.0.1 - - [06/Dec/2026:10:01:16 +0000] "POST /v2/kubeforge/server/blobs/uploads/ HTTP/1.1" 202 0 "" "buildkit/v0.34"
127.0.0.1 - - [06/Dec/2026:10:01:16 +0000] "PATCH /v2/kubeforge/server/blobs/uploads/u1?_state=x HTTP/1.1" 202 0 "" "buildkit/v0.34"
127.0.0.1 - - [06/Dec/2026:10:01:17 +0000] "PUT /v2/kubeforge/server/blobs/uploads/u1?_state=x&digest=sha256%3Aaa HTTP/1.1" 201 0 "" "buildkit/v0.34"
127.0.0.1 - - [06/Dec/2026:10:01:17 +0000] "PUT /v2/kubeforge/operator/blobs/uploads/u2?_state=y&digest=sha256%3Abb HTTP/1.1" 201 0 "" "crane/v0.22.1"
127.0.0.1 - - [06/Dec/2026:10:01:17 +0000] "PUT /v2/kubeforge/operator/blobs/uploads/u3?_state=z&digest=sha256%3Acc HTTP/1.1" 400 0 "" "crane/v0.22.1"
127.0.0.1 - - [06/Dec/2026:10:01:18 +0000] "PUT /v2/kubeforge/server/manifests/0.1.0 HTTP/1.1" 201 0 "" "buildkit/v0.34"
"""


def test_registry_listens_on_loopback_only(tmp_path: Path) -> None:
    cfg = yaml.safe_load(registry.config_yaml(tmp_path / "store", 5123))
    assert cfg["http"]["addr"] == "127.0.0.1:5123"
    assert "tls" not in cfg["http"] and "debug" not in cfg["http"]
    assert cfg["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "store")


def test_blob_uploads_count_completed_puts_only(tmp_path: Path) -> None:
    reg = registry.LocalRegistry(tmp_path, port=5123, storage=tmp_path / "s")
    assert reg.blob_uploads() == 0  # no log yet
    (tmp_path / "registry.log").write_text(LOG)
    # HEAD/POST/PATCH start or feed an upload, a 400 PUT failed, a manifest PUT is no blob
    assert reg.blob_uploads() == 2
    assert reg.blob_uploads("kubeforge/server") == 1
    assert reg.blob_uploads("kubeforge/operator") == 1


def test_containerd_hosts_toml_for_loopback_only(tmp_path: Path) -> None:
    f = registry.trust_on_node(tmp_path, "127.0.0.1:5123")
    assert f == tmp_path / "127.0.0.1:5123" / "hosts.toml"
    text = f.read_text()
    assert 'server = "http://127.0.0.1:5123"' in text
    assert 'capabilities = ["pull", "resolve"]' in text  # never push from the node
    with pytest.raises(ValueError, match="loopback"):
        registry.trust_on_node(tmp_path, "registry.example.com:5000")


def test_real_node_containerd_reads_the_hosts_dir(tmp_path: Path) -> None:
    hosts_dir = tmp_path / "containerd" / "certs.d"
    text = containerd_config(
        tmp_path, tmp_path / "root", tmp_path / "containerd.sock", hosts_dir, Path("/sbin/runc")
    )
    cfg = tomllib.loads(text)
    assert cfg["plugins"]["io.containerd.cri.v1.images"]["registry"] == {
        "config_path": str(hosts_dir)
    }


def test_buildkit_plain_http_only_for_the_named_registries() -> None:
    toml = buildkit.config_toml(["127.0.0.1:5123"])
    assert re.findall(r'\[registry\."([^"]+)"\]', toml) == ["127.0.0.1:5123"]
    assert "http = true" in toml
    assert "[registry" not in buildkit.config_toml([])


def test_buildkit_wrapper_module_pins_the_version_shipbins_names() -> None:
    gomod = (REPO / "cluster/go-buildkit/go.mod").read_text()
    assert re.search(
        rf"^\s*(require )?github.com/moby/buildkit {shipbins.BUILDKIT_VERSION}( // indirect)?$",
        gomod,
        re.M,
    )
    assert "github.com/moby/buildkit/cmd/buildkitd" in gomod  # tool block
    assert (REPO / "cluster/go-buildkit/go.sum").is_file()
    tool = shipbins.TOOLS_BY_NAME["buildkit"]
    assert tool.module_dir == REPO / "cluster" / "go-buildkit"
    for t in shipbins.TOOLS:
        assert t.version in shipbins.CACHE_KEY


def test_shipbins_requires_what_was_built_at_its_version(tmp_path: Path) -> None:
    with pytest.raises(shipbins.MissingShipBinaries, match="make ship-bins"):
        shipbins.require("registry", bin_dir=tmp_path)
    exe = tmp_path / "registry"
    exe.write_text("#!/bin/sh\necho registry v3.1.2\n")
    exe.chmod(0o755)
    # present but not recorded as built at this version: not used
    assert shipbins.find("registry", tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"registry": shipbins.REGISTRY_VERSION}))
    assert shipbins.find("registry", tmp_path) == exe


def test_wheelhouse_requirements_cover_the_build_backend() -> None:
    reqs = ship.requirements(ship.IMAGES["server"])
    assert any(r.startswith("setuptools") for r in reqs) and "wheel" in reqs
    assert any(r.startswith("onnxruntime") for r in reqs)
    assert not any(r.startswith("torch") for r in reqs), "the server image carries no torch"
    assert any(r.startswith("torch") for r in ship.requirements(ship.IMAGES["trainer"]))


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    path = find_helm("helm")
    if path is None:
        pytest.skip("no helm binary (make cluster-bins)")
    return Helm(path, home=tmp_path_factory.mktemp("helm"))


def _images(objs: list[dict[str, object]]) -> tuple[str, dict[str, str]]:
    dep = next(o for o in objs if o["kind"] == "Deployment")
    op = dep["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
    env = rendered_env(objs)
    return str(op), {k: v for k, v in env.items() if k.endswith("_IMAGE")}


def test_chart_image_registry_rewrites_every_image(helm: Helm) -> None:
    app = ship.app_version()
    op, env = _images(helm.template())
    assert op == f"ghcr.io/kubeforge/operator:{app}"
    assert all(v.startswith("ghcr.io/kubeforge/") for v in env.values()), env
    op, env = _images(helm.template("--set", "image.registry=127.0.0.1:5123"))
    assert op == f"127.0.0.1:5123/kubeforge/operator:{app}"
    assert env == {
        "KUBEFORGE_TRAINER_IMAGE": f"127.0.0.1:5123/kubeforge/trainer:{app}",
        "KUBEFORGE_TRAINER_GPU_IMAGE": f"127.0.0.1:5123/kubeforge/trainer-gpu:{app}",
        "KUBEFORGE_SERVER_IMAGE": f"127.0.0.1:5123/kubeforge/server:{app}",
        "KUBEFORGE_SERVER_GPU_IMAGE": f"127.0.0.1:5123/kubeforge/server-gpu:{app}",
    }
    # a reference without a registry gets it in front; a digest stays a digest
    digest = "sha256:" + "a" * 64
    op, env = _images(
        helm.template(
            "--set",
            "image.registry=mirror.example.com/team",
            "--set",
            "images.server=acme/server:7",
            "--set",
            f"image.digest={digest}",
        )
    )
    assert op == f"mirror.example.com/team/kubeforge/operator@{digest}"
    assert env["KUBEFORGE_SERVER_IMAGE"] == "mirror.example.com/team/acme/server:7"


def test_chart_schema_names_a_bad_registry(helm: Helm) -> None:
    with pytest.raises(HelmError, match="image/registry"):
        helm.template("--set", "image.registry=not a registry")


def test_packaged_chart_lints_and_renders(helm: Helm, tmp_path: Path) -> None:
    """What the release pushes is the packaged chart: lint and render the .tgz itself."""
    out = helm("package", str(REPO / "charts" / "kubeforge"), "-d", str(tmp_path)).stdout
    tgz = tmp_path / f"kubeforge-{ship.app_version()}.tgz"
    assert tgz.is_file(), out
    helm("lint", str(tgz), "--strict")
    objs = helm.template("--set", "image.registry=127.0.0.1:5123", chart=tgz)
    op, env = _images(objs)
    assert op == f"127.0.0.1:5123/kubeforge/operator:{ship.app_version()}"
    assert env["KUBEFORGE_SERVER_IMAGE"] == f"127.0.0.1:5123/kubeforge/server:{ship.app_version()}"
    import tarfile

    with tarfile.open(tgz) as t:
        names = t.getnames()
    # the CRDs travel with the chart (installed before anything else on a first install)
    crds = {n.rsplit("/", 1)[1] for n in names if n.startswith("kubeforge/crds/")}
    assert crds == {p.name for p in (REPO / "crds").glob("*.yaml")}
    assert "kubeforge/values.schema.json" in names


def test_a_machine_that_built_the_trainer_keeps_its_cache(tmp_path: Path) -> None:
    """BuildKit's GC threshold: 3 GB for the CPU images, 20 GB once the trainer was built in that
    root, also for later builds of the CPU images alone (their 3 GB GC evicted the trainer's
    venv layer, and the next trainer build pushed 3.4 GB of new digests again)."""
    root = tmp_path / "buildkit"
    assert ship.build_cache_mb(["operator", "server"], root) == ship.CPU_IMAGES_CACHE_MB
    assert ship.build_cache_mb(["trainer"], root) == ship.TRAINER_CACHE_MB
    assert ship.build_cache_mb(["operator", "server"], root) == ship.TRAINER_CACHE_MB
    assert ship.build_cache_mb(["server"], tmp_path / "other") == ship.CPU_IMAGES_CACHE_MB
