"""What `make test` needs besides the venv and the binaries: prepared once, cached, with progress.

    python -m kubeforge_cluster.testdeps            # what `make test` runs (a warm run: seconds)
    python -m kubeforge_cluster.testdeps --status

1. **promtool + prometheus** (Debian's ``prometheus``; alert rules, a real scrape of the server),
   **debootstrap** (the Debian base of the images) and **shellcheck** (actionlint checks the
   workflows' scripts with it): ``apt-get install`` when root;
2. **helm 3** (``helm3``, beside helm 4: the chart is tested with both): ``cluster/build.py --helm3``;
3. the **kserve client's venv** (``~/.cache/kubeforge/bench-venv``: kserve pins core packages the
   project venv must not change, so it lives in a venv of its own);
4. where real pods run: **registry, crane, BuildKit** (``make ship-bins``) for the shipping e2e
   test; ``KUBEFORGE_SHIP_E2E=0`` (what ``.ci/run`` sets) leaves them out;
5. the **packed images** (``cluster/images/out``: operator and server, by ``make images``'s
   builder); the ~6 GB trainer only with ``KUBEFORGE_TEST_TRAINER_IMAGE=1``, built from its
   Dockerfile by BuildKit where step 4 built it (else by the packer).

Whatever this machine cannot do is said once, with its reason, and the tests that need it skip
with the same reason: no root (apt, debootstrap), no network to the package registries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import binaries

REPO = Path(__file__).resolve().parents[2]
APT_TOOLS = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "debootstrap": "debootstrap",
    # actionlint (make check) runs it on the workflows' `run:` scripts when it is on PATH
    "shellcheck": "shellcheck",
}
KSERVE_VERSION = "0.21.0"
BENCH_VENV = Path(
    os.environ.get("KUBEFORGE_BENCH_VENV", Path.home() / ".cache" / "kubeforge" / "bench-venv")
)
IMAGES_OUT = REPO / "cluster" / "images" / "out"


def log(msg: str) -> None:
    print(f"[test-deps] {msg}", flush=True)


def _pinned(name: str) -> str:
    """``name==version`` from constraints.txt (what the project venv has), else ``name``."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.strip()
    return name


def missing_apt_tools() -> list[str]:
    return [t for t in APT_TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def apt_tools() -> str:
    miss = missing_apt_tools()
    if not miss:
        return "present"
    pkgs = sorted({APT_TOOLS[t] for t in miss})
    if os.geteuid() != 0:
        return f"not installed (needs root: apt-get install {' '.join(pkgs)})"
    from .realnode.bins import apt_install

    apt_install(pkgs)
    still = missing_apt_tools()
    return "installed" if not still else f"still missing after apt: {', '.join(still)}"


def helm3() -> str:
    d = binaries.default_bin_dir()
    if binaries.find_binary("helm3", d) is not None:
        return "present"
    binaries.build(d, helm3=True)
    return "built"


def kserve_venv() -> str:
    stamp = BENCH_VENV / ".kubeforge-kserve"
    want = f"kserve=={KSERVE_VERSION} {_pinned('onnxruntime')} {_pinned('numpy')}"
    if stamp.is_file() and stamp.read_text().strip() == want:
        return "present"
    if not (BENCH_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run(
        [
            str(BENCH_VENV / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            *want.split(),
        ],
        check=True,
    )
    stamp.write_text(want + "\n")
    return "installed"


def packed_images() -> str:
    names = ["operator", "server"]
    trainer = os.environ.get("KUBEFORGE_TEST_TRAINER_IMAGE") == "1"
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        return "not built (the Debian base needs root and debootstrap)"
    # the builder rebuilds only what changed (cached layers): a warm run is seconds
    subprocess.run(
        [sys.executable, str(REPO / "cluster" / "images" / "build.py"), "--only", ",".join(names)],
        check=True,
    )
    if not trainer:
        return "built: " + ", ".join(names)
    from . import shipbins

    try:
        shipbins.require("registry", "crane", "buildkitd", "buildctl")
    except shipbins.MissingShipBinaries:
        # no BuildKit here: the packer makes the trainer from the same requirements
        subprocess.run(
            [sys.executable, str(REPO / "cluster" / "images" / "build.py"), "--only", "trainer"],
            check=True,
        )
        return "built: " + ", ".join(names) + ", trainer (packed: no BuildKit here)"
    from . import ship

    # the trainer the real-pod tests run is the one its Dockerfile builds (BuildKit), so the
    # image users pull is the image tested
    ship.build_archives(["trainer"], IMAGES_OUT)
    return "built: " + ", ".join(names) + ", trainer (its Dockerfile, by BuildKit)"


def ship_tools() -> str:
    """registry, crane, BuildKit for tests/e2e/realpods/test_registry_pull.py: only where real
    pods can run, and not with KUBEFORGE_SHIP_E2E=0 (.ci/run's default: ~10 min cold)."""
    if os.environ.get("KUBEFORGE_SHIP_E2E") == "0":
        return "skipped (KUBEFORGE_SHIP_E2E=0)"
    from .realnode.host import host_unsupported_reason

    reason = host_unsupported_reason()
    if reason:
        return f"not built: real pods cannot run here ({reason})"
    from . import shipbins

    built = shipbins.build(only=("registry", "crane", "buildkit"))
    return "built" if built else "present"


STEPS: dict[str, Callable[[], str]] = {
    "promtool/prometheus/debootstrap (apt)": apt_tools,
    "helm3": helm3,
    "kserve client venv": kserve_venv,
    # before the packed images: the trainer's (KUBEFORGE_TEST_TRAINER_IMAGE=1) is built by BuildKit
    "registry + crane + BuildKit (real-pod shipping e2e)": ship_tools,
    "packed images": packed_images,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubeforge_cluster.testdeps", description=__doc__)
    ap.add_argument("--status", action="store_true")
    a = ap.parse_args(argv)
    if a.status:
        print(f"apt tools missing: {missing_apt_tools() or 'none'}")
        print(f"helm3: {binaries.find_binary('helm3') or 'missing'}")
        print(f"kserve venv: {'ok' if (BENCH_VENV / '.kubeforge-kserve').is_file() else 'missing'}")
        print(f"packed images: {sorted(p.name for p in IMAGES_OUT.glob('*.oci.tar'))}")
        return 0
    t_all = time.monotonic()
    failed = []
    for i, (label, step) in enumerate(STEPS.items(), 1):
        t = time.monotonic()
        log(f"step {i}/{len(STEPS)}: {label} ...")
        try:
            result = step()
        except (subprocess.CalledProcessError, OSError, SystemExit) as e:
            # one missing piece must not stop the others: its tests skip and say why
            result = f"FAILED ({e}); the tests that need it will skip"
            failed.append(label)
        log(f"step {i}/{len(STEPS)}: {label}: {result} ({time.monotonic() - t:.1f}s)")
    log(f"done in {time.monotonic() - t_all:.1f}s")
    # CI (.ci/run sets CI=true) must have everything: a failed step fails the run there
    return 1 if failed and os.environ.get("CI") == "true" else 0


if __name__ == "__main__":
    raise SystemExit(main())
