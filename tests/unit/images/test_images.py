"""The Docker-less image builder: deterministic streamed layers, and images that agree with
the Dockerfiles on entry point, user and environment."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest
from kubeforge_cluster.realnode import oci

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "cluster" / "images"))

import build as images  # noqa: E402


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc" / "conf").write_text("x=1\n")
    return root


def test_layers_are_deterministic_and_streamed(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    a = store.layer_from_dir(_tree(tmp_path / "a"), force_root=True)
    b = store.layer_from_dir(_tree(tmp_path / "b"), force_root=True)
    assert a == b  # same content, other place and mtimes -> same digest
    with tarfile.open(store.path(a.digest)) as t:
        names = t.getnames()
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uname == "" for m in t.getmembers())
        assert t.getmember("bin/alias").issym()
    cached = store.layer_from_dir(tmp_path / "a", key="k1")
    assert store.cached("k1") == cached


def test_archive_has_config_and_normalized_name(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    layer = store.layer_from_entries([(_tree(tmp_path / "r") / "bin", "/opt/x/bin")])
    cfg = oci.ImageConfig(entrypoint=["tool"], user="1000", env=["PATH=/opt/x/bin"])
    out = tmp_path / "img.oci.tar"
    digest = oci.write_archive(out, store, [layer], cfg, "local/x:1")
    from kubeforge_cluster.realnode.images import archive_ref

    assert archive_ref(out) == ("docker.io/local/x:1", digest)
    c = oci.read_archive_config(out)
    assert c["config"]["Entrypoint"] == ["tool"]
    assert c["config"]["User"] == "1000"
    assert c["rootfs"]["diff_ids"] == [layer.digest]
    assert oci.image_ref("busybox") == "docker.io/library/busybox:latest"
    assert oci.image_ref("registry.local:5000/a/b:2") == "registry.local:5000/a/b:2"


@pytest.mark.parametrize("name", sorted(images.SPECS))
def test_builder_config_agrees_with_dockerfile(name: str) -> None:
    spec = images.SPECS[name]
    if not spec.dockerfile.is_file():
        pytest.skip(f"{spec.dockerfile.relative_to(REPO)} does not exist (yet)")
    want = images.dockerfile_config(spec.dockerfile)
    got = images.image_config(spec).to_json([])["config"]
    assert got.get("Entrypoint") == want.get("Entrypoint")
    assert got.get("User", "0") == (want["User"] or "0")
    env = dict(e.split("=", 1) for e in got["Env"])
    for k, v in want["Env"].items():  # type: ignore[union-attr]
        assert env[k] == v, k
    assert got["WorkingDir"] == want["WorkingDir"]


@pytest.mark.parametrize("name", sorted(images.SPECS))
def test_packed_image_agrees_with_dockerfile(name: str) -> None:
    spec = images.SPECS[name]
    archive = REPO / "cluster" / "images" / "out" / f"kubeforge-{name}.oci.tar"
    if not spec.dockerfile.is_file():
        pytest.skip(f"{spec.dockerfile.relative_to(REPO)} does not exist (yet)")
    if not archive.is_file():
        pytest.skip(f"{archive.relative_to(REPO)} not built (run `make images`)")
    want = images.dockerfile_config(spec.dockerfile)
    got = oci.read_archive_config(archive)["config"]
    assert got.get("Entrypoint") == want.get("Entrypoint")
    assert got.get("User") == want["User"]
    env = dict(e.split("=", 1) for e in got["Env"])
    for k, v in want["Env"].items():  # type: ignore[union-attr]
        assert env[k] == v, k


def test_dockerfile_parser_reads_the_final_stage(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text(
        "FROM python:3.11-slim AS build\nENV X=build\nUSER 5\n"
        "FROM python:3.11-slim\nENV PATH=/opt/v/bin:$PATH \\\n    A=1\n"
        'USER 1000\nWORKDIR /w\nENTRYPOINT ["run"]\n'
    )
    c = images.dockerfile_config(df)
    assert c["Env"] == {"PATH": f"/opt/v/bin:{images.BASE_PATH}", "A": "1"}
    assert c["User"] == "1000"
    assert c["Entrypoint"] == ["run"]
    assert c["WorkingDir"] == "/w"


def test_dockerfile_parser_expands_arg_defaults(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text(
        "ARG BASE=python:3.11-slim\nARG G=global\nFROM ${BASE}\nARG G\nARG V=cpu\n"
        'LABEL a="${V}" b="$G" c="${UNSET}"\n'
    )
    assert images.dockerfile_config(df)["Labels"] == {"a": "cpu", "b": "global", "c": ""}
