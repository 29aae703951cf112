"""The Debian rootfs step both image builders share (ship's base image and
cluster/images/build.py): the debootstrap command, then apt's leftovers dropped."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubeforge_cluster import baseimage


def test_debootstrap_minbase_command_and_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "rootfs.tmp"
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def fake_run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append((args, kw))
        # what debootstrap leaves: kept files and the leftovers the step drops
        for rel in (
            "usr/bin/python3",
            "etc/apt/sources.list",
            "var/cache/apt/archives/python3_3.11.deb",
            "var/cache/apt/pkgcache.bin",
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "usr/share/doc/python3/copyright",
            "usr/share/man/man1/python3.1.gz",
            "usr/share/locale/de/LC_MESSAGES/x.mo",
            "usr/share/info/dir",
        ):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_text("x")
        (target / "usr/share/doc/libc6").symlink_to("python3")  # a link is unlinked, not followed
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(baseimage.subprocess, "run", fake_run)
    baseimage.debootstrap_minbase(target, ("python3", "ca-certificates"), "bookworm", "http://m/d")
    [(args, kw)] = calls
    assert args == [
        "nice", "-n", "10", "debootstrap", "--variant=minbase",
        "--include=python3,ca-certificates", "bookworm", str(target), "http://m/d",
    ]  # fmt: skip
    assert kw == {"check": True, "stdout": subprocess.DEVNULL}
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == ["etc/apt/sources.list", "usr/bin/python3"]
    for d in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        assert (target / d).is_dir() and not any((target / d).iterdir()), d
