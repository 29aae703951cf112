"""URIs to files: fsspec for everything, ``pvc://CLAIM/PATH`` mapped to the claim's mount."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from typing import Any

PVC_MOUNT_ROOT = "/mnt/pvc"


def pvc_path(uri: str, root: str | None = None) -> str:
    """``pvc://CLAIM/PATH`` -> ``/mnt/pvc/CLAIM/PATH`` (where the operator mounts the claim).

    ``KUBEFORGE_PVC_ROOT`` overrides the root (tests, laptops).
    """
    if not uri.startswith("pvc://"):
        raise ValueError(f"not a pvc:// URI: {uri!r}")
    rest = uri[len("pvc://") :].lstrip("/")
    claim, _, path = rest.partition("/")
    if not claim:
        raise ValueError(f"pvc:// URI needs a claim name: {uri!r}")
    base = root or os.environ.get("KUBEFORGE_PVC_ROOT") or PVC_MOUNT_ROOT
    return os.path.join(base, claim, path) if path else os.path.join(base, claim)


def to_fsspec(uri: str) -> str:
    """A URI fsspec understands: pvc:// becomes a local path; a bare path stays a path."""
    if uri.startswith("pvc://"):
        return pvc_path(uri)
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        return os.path.abspath(path) if not path.startswith("/") else path
    return uri


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def fs_and_path(uri: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(to_fsspec(uri))
    return fs, path


def is_local(uri: str) -> bool:
    target = to_fsspec(uri)
    return "://" not in target


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    fs, path = fs_and_path(uri)
    try:
        if not fs.exists(path):
            return None
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically where the store allows (temp name, then rename)."""
    fs, path = fs_and_path(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        with contextlib.suppress(Exception):  # object stores have no folders
            fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(tmp, data)
    try:
        if is_local(uri):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except Exception:
        fs.pipe_file(path, data)
        with contextlib.suppress(Exception):
            fs.rm(tmp)


def upload_file(local: str, uri: str) -> None:
    with open(local, "rb") as fh:
        write_bytes(uri, fh.read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
