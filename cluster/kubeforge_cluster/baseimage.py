"""The project's Debian base image, for the Dockerfiles' ``PYTHON_IMAGE`` build arg.

Debian bookworm ``minbase`` + python3, python3-venv, python-is-python3, ca-certificates: what
``python:3.11-slim-bookworm`` offers the Dockerfiles (``python``, ``python -m venv``,
``useradd``). Made once with ``debootstrap`` (cached under ``~/.cache/kubeforge/ship/rootfs``),
packed as one deterministic gzip layer in an OCI image layout, pushed with ``crane`` to
``<registry>/kubeforge/python:3.11-bookworm`` (a registry that has it uploads nothing).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import shipbins
from .realnode import oci

SUITE = "bookworm"
MIRROR = os.environ.get("KUBEFORGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_REPO = "kubeforge/python"
BASE_TAG = f"3.11-{SUITE}"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GZIP_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg: str) -> None:
    print(f"[ship] {msg}", flush=True)


def cache_dir() -> Path:
    return shipbins.default_bin_dir().parent.parent / "ship"


#: What a minbase rootfs carries that no image needs: apt's downloads and lists, docs, locales.
APT_LEFTOVERS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/locale/*",
    "usr/share/info/*",
)


def debootstrap_minbase(
    target: Path, packages: Sequence[str], suite: str = SUITE, mirror: str = MIRROR
) -> None:
    """``debootstrap --variant=minbase`` of ``suite`` + ``packages`` into ``target`` (at nice 10:
    it shares the machine), then drop :data:`APT_LEFTOVERS`. Output is discarded; a failure
    raises ``CalledProcessError``."""
    subprocess.run(
        [
            "nice",
            "-n",
            "10",
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(target),
            mirror,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for pat in APT_LEFTOVERS:
        for p in target.glob(pat):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def base_rootfs() -> Path:
    root = cache_dir() / "rootfs" / f"python-{SUITE}-venv"
    stamp = root / ".complete"
    want = f"{SUITE} {MIRROR} {','.join(BASE_PACKAGES)}"
    if stamp.is_file() and stamp.read_text().startswith(want):
        return root
    if shutil.which("debootstrap") is None:
        raise SystemExit("[ship] debootstrap not found: apt-get install debootstrap")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    log(f"debootstrap {SUITE} minbase + {' '.join(BASE_PACKAGES)} (once, ~1-2 min) ...")
    debootstrap_minbase(tmp, BASE_PACKAGES)
    tmp.rename(root)
    stamp.write_text(f"{want} {time.time()}\n")
    log(f"debootstrap done in {time.monotonic() - t:.0f}s")
    return root


def base_layout() -> Path:
    """An OCI image layout (``crane push DIR``) of the base: one gzip layer, deterministic."""
    root = base_rootfs()
    key = hashlib.sha256((root / ".complete").read_bytes()).hexdigest()[:16]
    out = cache_dir() / f"base-layout-{key}"
    if (out / "index.json").is_file():
        return out
    store = oci.BlobStore(cache_dir() / "blobs")
    t = time.monotonic()
    tar = store.layer_from_dir(root, key=f"base-{key}", exclude=[".complete"])
    gz_tmp = store.root / f".gz-{key}"
    h = hashlib.sha256()
    with (
        open(store.path(tar.digest), "rb") as src,
        open(gz_tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0, filename="") as gz,
    ):
        while chunk := src.read(1 << 20):
            gz.write(chunk)
    with open(gz_tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    gz_blob = oci.Blob("sha256:" + h.hexdigest(), gz_tmp.stat().st_size, GZIP_MEDIA)
    os.replace(gz_tmp, store.path(gz_blob.digest))
    cfg = oci.ImageConfig(cmd=["python3"], env=[f"PATH={BASE_PATH}", "LANG=C.UTF-8"]).to_json(
        [tar.digest]
    )  # diff_id: the digest of the uncompressed tar
    cfg_blob = store.put_bytes(json.dumps(cfg, sort_keys=True).encode(), oci.CONFIG_MEDIA)
    man = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST_MEDIA,
        "config": cfg_blob.descriptor(),
        "layers": [gz_blob.descriptor()],
    }
    man_blob = store.put_bytes(json.dumps(man, sort_keys=True).encode(), oci.MANIFEST_MEDIA)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    for b in (cfg_blob, man_blob, gz_blob):
        os.link(store.path(b.digest), tmp / "blobs" / "sha256" / b.digest.split(":", 1)[1])
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [man_blob.descriptor()]})
    )
    tmp.rename(out)
    log(
        f"base layout: {tar.size / 1e6:.0f} MB tar -> {gz_blob.size / 1e6:.0f} MB gzip "
        f"({time.monotonic() - t:.0f}s)"
    )
    return out


def crane(*args: str) -> str:
    exe = shipbins.require("crane")["crane"]
    r = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"crane {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def push_base(registry: str) -> str:
    ref = f"{registry}/{BASE_REPO}:{BASE_TAG}"
    layout = base_layout()
    t = time.monotonic()
    crane("push", "--insecure", str(layout), ref)
    log(f"base image {ref} pushed ({time.monotonic() - t:.1f}s)")
    return ref
