"""Build the images from their Dockerfiles with BuildKit and push them (and the chart) to a registry.

    python -m kubeforge_cluster.ship images            # operator + server (+ --trainer): a
                                                       # loopback registry for the run, or
                                                       # --registry HOST:PORT of a running one
    python -m kubeforge_cluster.ship chart --registry 127.0.0.1:PORT   # helm package + push

What it does, in order (each step cached; a warm run rebuilds nothing):

1. the **base image** ``<registry>/kubeforge/python:3.11-bookworm`` (``baseimage.py``: the
   project's Debian base, pushed with ``crane``); the Dockerfiles get it as
   ``--build-arg PYTHON_IMAGE``;
2. a **wheelhouse** per image (``pip download`` of the project's requirements for CPython 3.11
   / manylinux x86_64, pinned by constraints.txt), passed as the Dockerfile's ``wheels`` build
   context with ``PIP_NO_INDEX=1``: the RUN steps reach no network at all;
3. ``buildctl build`` of each Dockerfile (BuildKit, rootful, Debian's runc) and push of
   ``<registry>/kubeforge/<name>:<appVersion>``; sizes read back from the registry.

The trainer (torch from PyPI bundles CUDA: a ~6 GB image) is opt-in (``--trainer``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import buildkit, shipbins
from .baseimage import crane, push_base
from .registry import LocalRegistry

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "kubeforge"
PLATFORMS = [f"manylinux_2_{i}_x86_64" for i in range(36, 16, -1)] + ["manylinux2014_x86_64"]


def log(msg: str) -> None:
    print(f"[ship] {msg}", flush=True)


def cache_dir() -> Path:
    return shipbins.default_bin_dir().parent.parent / "ship"


def app_version() -> str:
    return str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])


@dataclass(frozen=True)
class ImageSpec:
    name: str  # kubeforge/<name>
    dockerfile: Path
    extras: tuple[str, ...]
    #: requirement files the Dockerfile installs besides the project (``-r``)
    requirement_files: tuple[Path, ...] = ()
    #: requirements the Dockerfile names on its pip line (not in a file)
    extra_requirements: tuple[str, ...] = ()


IMAGES = {
    "operator": ImageSpec("operator", REPO / "operator" / "Dockerfile", ("operator",)),
    "server": ImageSpec(
        "server",
        REPO / "server-image" / "Dockerfile",
        ("server",),
        (REPO / "server-image" / "requirements-remote.txt",),
    ),
    "trainer": ImageSpec(
        "trainer",
        REPO / "trainer-image" / "Dockerfile",
        ("trainer",),
        (REPO / "trainer-image" / "requirements-remote.txt",),
        ("torch>=2.15",),
    ),
}


#: BuildKit cache kept (MB) on a machine that builds the trainer, and on one that builds only
#: the CPU images
TRAINER_CACHE_MB = 20000
CPU_IMAGES_CACHE_MB = 3000
#: in BuildKit's root once the trainer was built there: later builds of the CPU images alone
#: keep the trainer's cache too (at 3 GB their GC dropped it, and the next trainer build, whose
#: layers are not byte-reproducible, made new digests and pushed 3.4 GB again)
TRAINER_MARKER = ".kubeforge-trainer-cache"


def build_cache_mb(names: list[str], root: Path | None = None) -> int:
    """How much build cache BuildKit keeps for a build of ``names``; a build that includes the
    trainer also leaves the marker in ``root``, so the limit stays for later builds."""
    marker = Path(root or buildkit.default_root()) / TRAINER_MARKER
    if "trainer" in names:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("the trainer is built here: keep its cache (kubeforge_cluster.ship)\n")
        return TRAINER_CACHE_MB
    return TRAINER_CACHE_MB if marker.is_file() else CPU_IMAGES_CACHE_MB


def image_ref(registry: str, name: str, tag: str | None = None) -> str:
    return f"{registry}/kubeforge/{name}:{tag or app_version()}"


# ------------------------------------------------------------------------------------------
# 2. wheelhouses


def requirements(spec: ImageSpec) -> list[str]:
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(py["project"].get("dependencies", []))
    for e in spec.extras:
        reqs += py["project"]["optional-dependencies"][e]
    reqs += list(py["build-system"]["requires"])  # pip builds the project's wheel offline
    return sorted({*reqs, *spec.extra_requirements})


def wheelhouse(spec: ImageSpec) -> Path:
    reqs = requirements(spec)
    files = [REPO / "constraints.txt", *spec.requirement_files]
    key = hashlib.sha256(
        json.dumps(
            {"reqs": reqs, "files": [f.read_text() for f in files], "plat": PLATFORMS}
        ).encode()
    ).hexdigest()[:16]
    out = cache_dir() / "wheelhouse" / f"{spec.name}-{key}"
    if (out / ".complete").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "-d",
        str(tmp),
    ]
    for p in PLATFORMS:
        args += ["--platform", p]
    t = time.monotonic()
    log(f"{spec.name}: pip download {len(reqs)} requirements (+ files) into a wheelhouse ...")
    # the host's own find-links dir would leak other wheels in: only PyPI here
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    # as the Dockerfile installs: the project with constraints.txt, then each file on its own
    subprocess.run([*args, "-c", str(REPO / "constraints.txt"), *reqs], check=True, env=env)
    for f in spec.requirement_files:
        subprocess.run([*args, "-r", str(f)], check=True, env=env)
    size = sum(f.stat().st_size for f in tmp.iterdir())
    (tmp / ".complete").write_text(f"{len(list(tmp.iterdir()))} wheels\n")
    tmp.rename(out)
    log(f"{spec.name}: wheelhouse {size / 1e6:.0f} MB ({time.monotonic() - t:.0f}s)")
    return out


# ------------------------------------------------------------------------------------------
# 3. build + push


@dataclass
class Pushed:
    name: str
    ref: str
    digest: str
    build_seconds: float
    compressed_bytes: int  # config + layers as stored in the registry
    layers: int


def manifest_size(registry: str, ref: str) -> tuple[int, int]:
    """(bytes of config + layers, number of layers) of a pushed single-platform image."""
    man = json.loads(crane("manifest", "--insecure", ref))
    if "manifests" in man:  # an index: take the linux/amd64 one
        d = next(
            m["digest"]
            for m in man["manifests"]
            if m.get("platform", {}).get("architecture") == "amd64"
        )
        man = json.loads(crane("manifest", "--insecure", f"{ref.rsplit(':', 1)[0]}@{d}"))
    layers = man["layers"]
    return int(man["config"]["size"]) + sum(int(x["size"]) for x in layers), len(layers)


def build_and_push(
    registry: str,
    names: list[str],
    *,
    tag: str | None = None,
    run_dir: Path | None = None,
    context: Path = REPO,
) -> list[Pushed]:
    """Build each image's Dockerfile (build context ``context``: the repository, or a copy of
    it) and push it to ``registry``; the base image is pushed first."""
    base = push_base(registry)
    out: list[Pushed] = []
    # The trainer's build cache holds its wheels context (3.2 GB), the venv layer (~6.5 GB) and
    # that layer compressed (3.4 GB); below ~16 GB the GC evicted the venv layer during the next
    # build (a new session sends the wheels again), so an unchanged trainer was rebuilt, with
    # new layer digests, and pushed again.
    keep = build_cache_mb(names)
    with buildkit.BuildKitDaemon(
        run_dir, insecure_registries=[registry], keep_storage_mb=keep
    ) as bk:
        for n in names:
            spec = IMAGES[n]
            wh = wheelhouse(spec)
            ref = image_ref(registry, n, tag)
            log(f"{n}: buildctl build {spec.dockerfile.relative_to(REPO)} -> {ref} ...")
            res = bk.build(
                spec.dockerfile,
                ref,
                context=context,
                build_args={"PYTHON_IMAGE": base, "PIP_NO_INDEX": "1"},
                named_contexts={"wheels": wh},
            )
            size, nlayers = manifest_size(registry, ref)
            log(
                f"{n}: {ref} {res.digest[:19]} built+pushed in {res.seconds:.0f}s; "
                f"{size / 1e6:.0f} MB compressed, {nlayers} layers"
            )
            out.append(Pushed(n, ref, res.digest, res.seconds, size, nlayers))
        log(f"build cache: {bk.prune() or 'pruned'} (kept up to {keep} MB)")
    return out


def build_archives(names: list[str], out_dir: Path, *, run_dir: Path | None = None) -> list[Path]:
    """Build each image's Dockerfile into ``out_dir/kubeforge-<name>.oci.tar``, its image named
    ``docker.io/local/kubeforge-<name>:dev``: the archives the real-pod tests import
    (``KUBEFORGE_TEST_TRAINER_IMAGE=1`` makes the trainer's this way). The base image still
    comes from a registry, so one runs on loopback for the build (storage kept)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    with LocalRegistry() as reg:
        base = push_base(reg.host)
        keep = build_cache_mb(names)
        with buildkit.BuildKitDaemon(
            run_dir, insecure_registries=[reg.host], keep_storage_mb=keep
        ) as bk:
            for n in names:
                spec = IMAGES[n]
                archive = out_dir / f"kubeforge-{n}.oci.tar"
                tmp = archive.with_name(archive.name + ".tmp")
                log(f"{n}: buildctl build {spec.dockerfile.relative_to(REPO)} -> {archive} ...")
                res = bk.build(
                    spec.dockerfile,
                    f"docker.io/local/kubeforge-{n}:dev",
                    context=REPO,
                    build_args={"PYTHON_IMAGE": base, "PIP_NO_INDEX": "1"},
                    named_contexts={"wheels": wheelhouse(spec)},
                    archive=tmp,
                )
                tmp.chmod(0o644)  # buildctl writes it 0666
                tmp.replace(archive)  # never a half-written archive under the real name
                log(
                    f"{n}: {archive.name} {res.digest[:19]} in {res.seconds:.0f}s, "
                    f"{archive.stat().st_size / 1e6:.0f} MB"
                )
                out.append(archive)
    return out


def push_chart(registry: str, out_dir: Path | None = None) -> str:
    """``helm package`` + ``helm push`` to ``oci://<registry>/charts``; return the chart's URL."""
    from . import binaries

    helm = binaries.require_binaries(("helm",))["helm"]
    d = out_dir or cache_dir() / "chart"
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [str(helm), "package", str(CHART_DIR), "-d", str(d)],
        capture_output=True,
        text=True,
        check=True,
    )
    tgz = Path(r.stdout.strip().rsplit(": ", 1)[-1])
    subprocess.run(
        [str(helm), "push", str(tgz), f"oci://{registry}/charts", "--plain-http"],
        capture_output=True,
        text=True,
        check=True,
    )
    return f"oci://{registry}/charts/kubeforge"


def _registry_up(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubeforge_cluster.ship",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", choices=["images", "chart", "base"])
    ap.add_argument(
        "--registry",
        default=os.environ.get("KUBEFORGE_REGISTRY", ""),
        help="HOST:PORT of a running registry (default: start one on loopback for this run)",
    )
    ap.add_argument("--only", default="operator,server")
    ap.add_argument("--trainer", action="store_true", help="also the trainer (~6 GB, torch)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    if a.trainer and "trainer" not in names:
        names.append("trainer")
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        ap.error(f"--only: unknown image(s) {unknown}; known: {', '.join(IMAGES)}")
    reg: LocalRegistry | None = None
    host = a.registry
    if host and not _registry_up(host):
        ap.error(f"--registry {host}: no registry answers on http://{host}/v2/")
    if not host:
        reg = LocalRegistry().start()
        host = reg.host
        log(f"registry on {host} for this run (storage {reg.storage})")
    try:
        t = time.monotonic()
        if a.command == "base":
            push_base(host)
        elif a.command == "images":
            for p in build_and_push(host, names):
                print(
                    f"{p.name:9} {p.ref}  {p.compressed_bytes / 1e6:7.1f} MB  "
                    f"{p.layers} layers  build+push {p.build_seconds:.0f}s"
                )
        else:
            print(push_chart(host))
        log(f"done in {time.monotonic() - t:.0f}s")
    finally:
        if reg is not None:
            reg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
