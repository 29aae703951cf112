"""Tools that build, push and lint what the project ships (built once, cached outside the repo).

- ``registry``: CNCF distribution v3, the OCI registry ``make images-push`` pushes to (loopback);
- ``crane`` (go-containerregistry): pushes the Debian base image, reads manifests and digests;
- ``buildkitd`` + ``buildctl`` (BuildKit): builds the Dockerfiles, rootful with Debian's runc;
- ``actionlint``: lints ``.github/workflows`` in ``make check``.

All come from Go modules (``go install pkg@version``, CGO off) into
``~/.cache/kubeforge/bin/ship-<versions>/`` next to the control plane's cache; a warm run only
checks the manifest and runs each binary once.

    python -m kubeforge_cluster.shipbins            # build what is missing
    python -m kubeforge_cluster.shipbins --status
    python -m kubeforge_cluster.shipbins --only actionlint   # what `make check` needs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import binaries as cp_binaries

REGISTRY_VERSION = "v3.1.2"
CRANE_VERSION = "v0.22.1"
BUILDKIT_VERSION = "v0.34.2"
ACTIONLINT_VERSION = "v1.7.12"

WRAPPER_DIR = Path(__file__).resolve().parent.parent

CACHE_KEY = (
    f"ship-registry-{REGISTRY_VERSION}-crane-{CRANE_VERSION}-buildkit-{BUILDKIT_VERSION}"
    f"-actionlint-{ACTIONLINT_VERSION}"
)


@dataclass(frozen=True)
class Tool:
    """One ``go install`` (one or more binaries of one module at one version)."""

    name: str
    binaries: tuple[str, ...]
    packages: tuple[str, ...]
    version: str
    ldflags: str
    #: argv (after the binary) that prints the version, to prove the binary runs.
    version_args: tuple[str, ...]
    #: A wrapper module (``go build`` there) for modules ``go install pkg@version`` refuses.
    module_dir: Path | None = None


TOOLS = (
    Tool(
        "registry",
        ("registry",),
        ("github.com/distribution/distribution/v3/cmd/registry",),
        REGISTRY_VERSION,
        f"-s -w -X github.com/distribution/distribution/v3/version.version={REGISTRY_VERSION}",
        ("--version",),
    ),
    Tool(
        "crane",
        ("crane",),
        ("github.com/google/go-containerregistry/cmd/crane",),
        CRANE_VERSION,
        "-s -w",
        ("version",),
    ),
    Tool(
        "buildkit",
        ("buildkitd", "buildctl"),
        ("github.com/moby/buildkit/cmd/buildkitd", "github.com/moby/buildkit/cmd/buildctl"),
        BUILDKIT_VERSION,
        f"-s -w -X github.com/moby/buildkit/version.Version={BUILDKIT_VERSION}",
        ("--version",),
        # buildkit's go.mod has `exclude` directives: built from a wrapper module
        WRAPPER_DIR / "go-buildkit",
    ),
    Tool(
        "actionlint",
        ("actionlint",),
        ("github.com/rhysd/actionlint/cmd/actionlint",),
        ACTIONLINT_VERSION,
        "-s -w",
        ("-version",),
    ),
)
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def default_bin_dir() -> Path:
    env = os.environ.get("KUBEFORGE_SHIP_BIN_DIR")
    if env:
        return Path(env).expanduser()
    return cp_binaries.default_bin_dir().parent / CACHE_KEY


def _log(msg: str) -> None:
    print(f"[ship-bins] {msg}", flush=True)


def _manifest(d: Path) -> dict[str, object]:
    try:
        return dict(json.loads((d / "manifest.json").read_text()))
    except (OSError, ValueError):
        return {}


def tool_ok(tool: Tool, d: Path) -> bool:
    """Built by this module at this version (manifest) and every binary runs."""
    if _manifest(d).get(tool.name) != tool.version:
        return False
    for b in tool.binaries:
        p = d / b
        if not (p.is_file() and os.access(p, os.X_OK)):
            return False
        if not cp_binaries._run_out([str(p), *tool.version_args]).strip():
            return False
    return True


def find(binary: str, bin_dir: Path | None = None) -> Path | None:
    """Path of a built binary (``registry``, ``crane``, ``buildkitd``, ``buildctl``, ...)."""
    d = bin_dir or default_bin_dir()
    for tool in TOOLS:
        if binary in tool.binaries and tool_ok(tool, d):
            return d / binary
    return None


class MissingShipBinaries(RuntimeError):
    def __init__(self, missing: list[str], bin_dir: Path) -> None:
        self.missing = missing
        super().__init__(
            f"missing in {bin_dir}: {', '.join(missing)}. Run `make ship-bins` "
            "(`python -m kubeforge_cluster.shipbins`; built once, then cached)."
        )


def require(*binaries: str, bin_dir: Path | None = None) -> dict[str, Path]:
    d = bin_dir or default_bin_dir()
    found = {b: find(b, d) for b in binaries}
    missing = [b for b, p in found.items() if p is None]
    if missing:
        raise MissingShipBinaries(missing, d)
    return {b: p for b, p in found.items() if p is not None}


def status(bin_dir: Path | None = None) -> dict[str, str]:
    d = bin_dir or default_bin_dir()
    return {t.name: ("ok " + t.version if tool_ok(t, d) else "missing") for t in TOOLS}


def build(
    bin_dir: Path | None = None, *, only: tuple[str, ...] = (), force: bool = False
) -> dict[str, float]:
    """Build the tools that are missing (all, or ``only`` these names); return seconds each."""
    t_start = time.monotonic()
    d = bin_dir or default_bin_dir()
    wanted = [TOOLS_BY_NAME[n] for n in only] if only else list(TOOLS)
    todo = [t for t in wanted if force or not tool_ok(t, d)]
    if not todo:
        _log(f"{', '.join(t.name for t in wanted)} present in {d}: nothing to do")
        return {}
    times: dict[str, float] = {}
    with cp_binaries._locked(d):
        go = cp_binaries._go()
        for i, t in enumerate(todo, 1):
            if not force and tool_ok(t, d):  # another process built it while we waited
                continue
            _log(f"step {i}/{len(todo)}: go install {t.name} {t.version} (once; cached after)")
            t0 = time.monotonic()
            if t.module_dir is not None:
                cmd = ["build", "-v", "-ldflags", t.ldflags, "-o", f"{d}/", *t.packages]
                cwd, env = t.module_dir, cp_binaries._go_env()
            else:
                pkgs = [f"{p}@{t.version}" for p in t.packages]
                cmd = ["install", "-v", "-ldflags", t.ldflags, *pkgs]
                cwd, env = Path("/"), cp_binaries._go_env({"GOBIN": str(d)})
            cp_binaries._run_with_progress(
                ["nice", "-n", "19", go, *cmd], cwd, env, f"go {cmd[0]} ({t.name})"
            )
            times[t.name] = round(time.monotonic() - t0, 1)
            m = _manifest(d)
            m[t.name] = t.version
            m.setdefault("build_seconds", {})
            m["build_seconds"][t.name] = times[t.name]  # type: ignore[index]
            (d / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
            if not tool_ok(t, d):
                raise SystemExit(f"[ship-bins] {t.name} built but does not run")
    _log(f"done in {time.monotonic() - t_start:.0f}s: {d}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubeforge_cluster.shipbins", description=__doc__)
    ap.add_argument(
        "--only", default="", help="comma-separated: registry,crane,buildkit,actionlint"
    )
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--path", metavar="BINARY", help="print the path of BINARY (built if missing)")
    a = ap.parse_args(argv)
    if a.path:
        tool = next((t for t in TOOLS if a.path in t.binaries), None)
        if tool is None:
            ap.error(f"--path: unknown binary {a.path}")
        build(only=(tool.name,))
        print(require(a.path)[a.path])
        return 0
    if a.status:
        for k, v in status().items():
            print(f"  {k:12} {v}")
        return 0
    only = tuple(n.strip() for n in a.only.split(",") if n.strip())
    unknown = [n for n in only if n not in TOOLS_BY_NAME]
    if unknown:
        ap.error(f"--only: unknown tool(s) {unknown}; known: {', '.join(TOOLS_BY_NAME)}")
    build(only=only, force=a.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
