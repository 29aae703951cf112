"""OCI image archives without Docker: deterministic layers streamed to disk (stdlib only).

A layer is an uncompressed tar written straight to a file in a blob store while it is hashed, so
a multi-GB layer (torch) never sits in memory. Layers are deterministic (entries sorted, mtime 0,
no user/group names, numeric owners kept or forced to 0), so rebuilding an unchanged layer gives
the same digest and containerd stores it once. Layers can be cached under a key (e.g. a hash of
a requirement set) and reused without re-reading their source.

    store = BlobStore(Path("~/.cache/kubeforge/images/blobs"))
    base = store.layer_from_dir(rootfs, key="python-base-bookworm")
    app = store.layer_from_entries([(Path("app"), "app")])
    write_archive(out, store, [base, app], ImageConfig(entrypoint=["/app/run"]), "local/x:1")

``ctr -n k8s.io images import FILE`` (or ``-`` with the archive on stdin) loads the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20


class _HashingWriter(io.RawIOBase):
    """File-like sink: writes to ``f`` and feeds sha256 with every byte."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b)
        self.h.update(mv)
        self.f.write(mv)
        self.size += len(mv)
        return len(mv)


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int
    media_type: str = LAYER_MEDIA

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def image_ref(name: str) -> str:
    """The normalized name the kubelet asks containerd for (``local/x:1`` -> docker.io/...)."""
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    first = repo.split("/")[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        full = name
    elif "/" in repo:
        full = "docker.io/" + name
    else:
        full = "docker.io/library/" + name
    if ":" not in full.rsplit("/", 1)[-1] and "@" not in full:
        full += ":latest"
    return full


class BlobStore:
    """Content-addressed blobs on disk (``<root>/sha256/<hex>``) plus a key -> blob index."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "keys").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest.split(":", 1)[1]

    def cached(self, key: str) -> Blob | None:
        f = self.root / "keys" / (key + ".json")
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        b = Blob(d["digest"], int(d["size"]), d.get("mediaType", LAYER_MEDIA))
        p = self.path(b.digest)
        return b if p.is_file() and p.stat().st_size == b.size else None

    def _remember(self, key: str | None, b: Blob) -> None:
        if key:
            f = self.root / "keys" / (key + ".json")
            f.write_text(
                json.dumps({"digest": b.digest, "size": b.size, "mediaType": b.media_type})
            )

    @contextlib.contextmanager
    def _writer(self) -> Iterator[_HashingWriter]:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".ingest-")
        ok = False
        try:
            with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
                w = _HashingWriter(f)
                yield w
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        dst = self.path("sha256:" + w.h.hexdigest())
        os.replace(tmp, dst)

    def put_bytes(self, data: bytes, media_type: str) -> Blob:
        with self._writer() as w:
            w.write(data)
        return Blob("sha256:" + w.h.hexdigest(), w.size, media_type)

    def layer_from_entries(
        self,
        entries: Iterable[tuple[Path, str]],
        *,
        key: str | None = None,
        force_root: bool = False,
        exclude: Iterable[str] = (),
    ) -> Blob:
        """One layer: each ``(source on disk, path in image)``; directories are walked sorted."""
        if key and (b := self.cached(key)) is not None:
            return b
        excl = tuple(e.strip("/") for e in exclude)
        with self._writer() as w:  # noqa: SIM117
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as t:
                done: set[str] = set()
                for src, dst in entries:
                    _add_tree(t, Path(src), dst.strip("/"), done, force_root, excl)
        b = Blob("sha256:" + w.h.hexdigest(), w.size)
        self._remember(key, b)
        return b

    def layer_from_dir(self, rootfs: Path, **kw: Any) -> Blob:
        """The contents of ``rootfs`` become ``/`` of the layer."""
        rootfs = Path(rootfs)
        return self.layer_from_entries([(rootfs / n, n) for n in sorted(os.listdir(rootfs))], **kw)


def _tarinfo(path: Path, arcname: str, st: os.stat_result, force_root: bool) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(arcname)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.mtime = 0
    ti.uid, ti.gid = (0, 0) if force_root else (st.st_uid, st.st_gid)
    ti.uname = ti.gname = ""
    if stat.S_ISLNK(st.st_mode):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        ti.type = tarfile.REGTYPE
        ti.size = st.st_size
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(st.st_mode):
        ti.type = tarfile.FIFOTYPE
    else:
        raise ValueError(f"unsupported file type: {path}")
    return ti


def _add_tree(
    t: tarfile.TarFile,
    src: Path,
    arc: str,
    done: set[str],
    force_root: bool,
    exclude: tuple[str, ...],
) -> None:
    # parent directories of the destination (so `--add file:/a/b/c` works in a bare layer)
    parts = arc.split("/")[:-1]
    for i in range(len(parts)):
        p = "/".join(parts[: i + 1])
        if p and p not in done:
            ti = tarfile.TarInfo(p)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            t.addfile(ti)
            done.add(p)
    stack = [(src, arc)]
    while stack:
        path, name = stack.pop()
        if name in done or any(name == e or name.startswith(e + "/") for e in exclude):
            continue
        st = os.lstat(path)
        ti = _tarinfo(path, name, st, force_root)
        if ti.type == tarfile.REGTYPE:
            with open(path, "rb") as f:
                t.addfile(ti, f)
        else:
            t.addfile(ti)
        done.add(name)
        if ti.type == tarfile.DIRTYPE:
            kids = sorted(os.listdir(path), reverse=True)  # popped in sorted order
            stack.extend((path / k, f"{name}/{k}") for k in kids)


@dataclass
class ImageConfig:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    workdir: str = "/"
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)

    def to_json(self, diff_ids: list[str]) -> dict[str, Any]:
        c: dict[str, Any] = {"Env": list(self.env), "WorkingDir": self.workdir}
        if self.entrypoint is not None:
            c["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            c["Cmd"] = list(self.cmd)
        if self.user:
            c["User"] = self.user
        if self.labels:
            c["Labels"] = dict(sorted(self.labels.items()))
        if self.exposed_ports:
            c["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        return {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": c,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }


def write_archive(
    out: Path | IO[bytes],
    store: BlobStore,
    layers: list[Blob],
    config: ImageConfig,
    name: str,
) -> str:
    """Write an OCI image archive (file path or binary stream); return the manifest digest.

    Layer blobs are copied from the store in chunks (never read whole into memory)."""
    cfg = json.dumps(config.to_json([b.digest for b in layers]), sort_keys=True).encode()
    cfg_blob = store.put_bytes(cfg, CONFIG_MEDIA)
    man = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "config": cfg_blob.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    man_bytes = json.dumps(man, sort_keys=True).encode()
    man_blob = store.put_bytes(man_bytes, MANIFEST_MEDIA)
    full = image_ref(name)
    md = man_blob.descriptor()
    md["annotations"] = {
        "io.containerd.image.name": full,
        "org.opencontainers.image.ref.name": full.rsplit(":", 1)[-1],
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [md]}).encode()

    def put(t: tarfile.TarFile, n: str, b: bytes) -> None:
        ti = tarfile.TarInfo(n)
        ti.size, ti.mtime = len(b), 0
        t.addfile(ti, io.BytesIO(b))

    tf = (
        tarfile.open(out, "w")  # noqa: SIM115
        if isinstance(out, (str, Path))
        else tarfile.open(fileobj=out, mode="w|")  # noqa: SIM115
    )
    with tf as t:
        put(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put(t, "index.json", index)
        seen: set[str] = set()
        for b in [cfg_blob, man_blob, *layers]:
            if b.digest in seen:
                continue
            seen.add(b.digest)
            ti = tarfile.TarInfo("blobs/sha256/" + b.digest.split(":", 1)[1])
            ti.size, ti.mtime = b.size, 0
            with open(store.path(b.digest), "rb") as f:
                t.addfile(ti, f)
    return man_blob.digest


def read_archive_config(path: Path) -> dict[str, Any]:
    """The image config of a single-image OCI archive (for tests and checks)."""
    with tarfile.open(path) as t:
        index = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
        md = index["manifests"][0]["digest"].split(":", 1)[1]
        man = json.load(t.extractfile(f"blobs/sha256/{md}"))  # type: ignore[arg-type]
        cd = man["config"]["digest"].split(":", 1)[1]
        cfg: dict[str, Any] = json.load(t.extractfile(f"blobs/sha256/{cd}"))  # type: ignore[arg-type]
        return cfg
