"""The node's own images (pause, busybox) as cached OCI archives, and an archive's name and digest."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import bins, oci
from .runstate import cache_root

BUSYBOX_IMAGE = "local/busybox:1"
PAUSE_IMAGE = "local/pause:1"


def build_base_images(pause_bin: Path) -> list[Path]:
    """pause (the sandbox) and busybox (tests) as OCI archives, cached by content."""
    store = oci.BlobStore(cache_root() / "images" / "blobs")
    out_dir = cache_root() / "images"
    with _tmpdir(out_dir) as tmp:
        pr = tmp / "pause-root"
        pr.mkdir()
        shutil.copy2(pause_bin, pr / "pause")
        pause_layer = store.layer_from_dir(pr, force_root=True)
        pause = out_dir / "pause.oci.tar"
        oci.write_archive(
            pause, store, [pause_layer], oci.ImageConfig(entrypoint=["/pause"]), PAUSE_IMAGE
        )
        archives = [pause]
        bb_path = bins.static_busybox()
        if bb_path is not None:
            bb = str(bb_path)
            r = tmp / "bb-root"
            for d in ("bin", "etc", "tmp", "root", "www", "proc", "sys", "dev"):
                (r / d).mkdir(parents=True)
            shutil.copy2(bb, r / "bin" / "busybox")
            applets = subprocess.run([bb, "--list"], capture_output=True, text=True).stdout
            for a in applets.split():
                if a != "busybox":
                    (r / "bin" / a).symlink_to("busybox")
            (r / "etc" / "passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
            )
            (r / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            (r / "tmp").chmod(0o1777)
            (r / "www" / "index.html").write_text("<h1>hello from a real pod</h1>\n")
            layer = store.layer_from_dir(r, force_root=True)
            busybox = out_dir / "busybox.oci.tar"
            oci.write_archive(
                busybox,
                store,
                [layer],
                oci.ImageConfig(cmd=["sh"], env=["PATH=/bin"]),
                BUSYBOX_IMAGE,
            )
            archives.append(busybox)
    return archives


@contextlib.contextmanager
def _tmpdir(parent: Path) -> Any:
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def archive_ref(archive: Path) -> tuple[str, str]:
    """(image name, manifest digest) of a single-image OCI archive."""
    import tarfile

    with tarfile.open(archive) as t:
        idx = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
    m = idx["manifests"][0]
    return m["annotations"]["io.containerd.image.name"], m["digest"]
