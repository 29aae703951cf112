#!/usr/bin/env python3
"""Build the operator, trainer and server images without Docker (``make images``).

Each image is three layers, every one deterministic and cached on disk (never held in memory):

1. **base**: Debian bookworm ``minbase`` + python3 (3.11), made once with ``debootstrap``
   (cached under ``~/.cache/kubeforge/images/rootfs``; ~1 min cold, network bound);
2. **deps**: the image's requirement set installed by the host's pip for CPython 3.11 /
   manylinux (``--only-binary``) into ``/opt/kubeforge/venv``; keyed by a hash of the
   requirement set and platform tags, so it is rebuilt only when they change;
3. **app**: the project's wheel, console-script wrappers for every entry point, the venv
   skeleton, the image's user and directories (seconds).

The image config (entrypoint, user, env, workdir, labels) is read from the image's Dockerfile
when there is one, so both ways of building agree (``tests/unit/images`` checks it).

    python cluster/images/build.py                       # all three -> cluster/images/out/*.oci.tar
    python cluster/images/build.py --only trainer --import   # and load into the running real node
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "cluster"))

from kubeforge_cluster.baseimage import debootstrap_minbase  # noqa: E402
from kubeforge_cluster.realnode import oci  # noqa: E402

VENV = "/opt/kubeforge/venv"
PYVER = "3.11"
SUITE = "bookworm"
MIRROR = os.environ.get("KUBEFORGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: glibc of bookworm is 2.36: any manylinux tag up to that runs there.
PLATFORMS = [f"manylinux_2_{i}_x86_64" for i in range(36, 16, -1)] + ["manylinux2014_x86_64"]
#: What `python:3.11-slim` sets and our Debian base must match for the Dockerfile's $PATH.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    c = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("KUBEFORGE_IMAGE_CACHE") or c / "kubeforge" / "images")


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


@dataclass
class Spec:
    name: str  # image name (local/kubeforge-<x>:dev)
    dockerfile: Path
    extras: list[str]
    extra_requirements: list[str] = field(default_factory=list)
    # defaults when there is no Dockerfile
    entrypoint: list[str] = field(default_factory=list)
    user: str = "1000"
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    dirs: dict[str, str] = field(default_factory=dict)  # path -> "uid:gid:mode"
    report_zipapp: bool = False


SPECS = {
    "operator": Spec(
        "local/kubeforge-operator:dev",
        REPO / "operator" / "Dockerfile",
        ["operator"],
        entrypoint=["kubeforge-operator"],
        env={"PATH": f"{VENV}/bin:$PATH", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
    ),
    "trainer": Spec(
        "local/kubeforge-trainer:dev",
        REPO / "trainer-image" / "Dockerfile",
        ["trainer"],
        entrypoint=["kubeforge-trainer"],
        env={"PATH": f"{VENV}/bin:$PATH", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
        workdir="/workspace",
        dirs={"workspace": "1000:0:775", "mnt/pvc": "0:0:755"},
        report_zipapp=True,
    ),
    "server": Spec(
        "local/kubeforge-server:dev",
        REPO / "server-image" / "Dockerfile",
        ["server"],
        entrypoint=["kubeforge-server"],
        env={"PATH": f"{VENV}/bin:$PATH", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
    ),
}


# ------------------------------------------------------------------------------------------
# Dockerfile -> image config (final stage only)


def _logical_lines(text: str) -> list[str]:
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _kv_pairs(rest: str) -> dict[str, str]:
    import shlex

    toks = shlex.split(rest)
    if toks and "=" not in toks[0]:  # legacy `ENV KEY value`
        return {toks[0]: " ".join(toks[1:])}
    return dict(t.split("=", 1) for t in toks)


def dockerfile_config(path: Path) -> dict[str, object]:
    """Entrypoint, Cmd, User, Env (as set by the Dockerfile), WorkingDir, Labels of the final
    stage. ``$VAR`` in ENV values is expanded against the values set so far (PATH starts as
    the base image's)."""
    lines = _logical_lines(path.read_text())
    starts = [i for i, ln in enumerate(lines) if ln.split(None, 1)[0].upper() == "FROM"]
    stage = lines[starts[-1] + 1 :] if starts else lines
    env: dict[str, str] = {}
    known = {"PATH": BASE_PATH}
    cfg: dict[str, object] = {"Env": env, "Labels": {}, "WorkingDir": "/", "User": ""}
    # ARG defaults expand like Docker's: a stage sees an ARG only once it declares it there
    # (`ARG X` takes the global default from before the first FROM, `ARG X=v` sets v)
    global_args: dict[str, str] = {}
    for ln in lines[: starts[0]] if starts else []:
        if ln.split(None, 1)[0].upper() == "ARG":
            k, _, v = ln.split(None, 1)[1].strip().partition("=")
            global_args[k] = v.strip('"')
    args: dict[str, str] = {}

    def expand(v: str) -> str:
        return re.sub(
            r"\$\{?(\w+)\}?",
            lambda m: known.get(m.group(1), env.get(m.group(1), args.get(m.group(1), ""))),
            v,
        )

    for ln in stage:
        instr, _, rest = ln.partition(" ")
        instr = instr.upper()
        if instr == "ARG":
            k, _, v = rest.strip().partition("=")
            args[k] = v.strip('"') if v else global_args.get(k, "")
            continue
        if instr == "ENV":
            for k, v in _kv_pairs(rest).items():
                v = expand(v)
                env[k] = v
                known[k] = v
        elif instr in ("ENTRYPOINT", "CMD"):
            key = "Entrypoint" if instr == "ENTRYPOINT" else "Cmd"
            cfg[key] = json.loads(rest) if rest.strip().startswith("[") else ["/bin/sh", "-c", rest]
        elif instr == "USER":
            cfg["User"] = rest.strip()
        elif instr == "WORKDIR":
            cfg["WorkingDir"] = rest.strip()
        elif instr == "LABEL":
            labels = {k: expand(v) for k, v in _kv_pairs(rest).items()}
            cfg["Labels"].update(labels)  # type: ignore[union-attr]
    return cfg


def image_config(spec: Spec) -> oci.ImageConfig:
    if spec.dockerfile.is_file():
        d = dockerfile_config(spec.dockerfile)
        env = dict(d["Env"])  # type: ignore[call-overload]
        user = str(d["User"]) or "0"
        entry = d.get("Entrypoint")
        cmd = d.get("Cmd")
        workdir = str(d["WorkingDir"])
        labels = dict(d["Labels"])  # type: ignore[call-overload]
    else:
        env = {k: v.replace("$PATH", BASE_PATH) for k, v in spec.env.items()}
        user, entry, cmd, workdir, labels = spec.user, spec.entrypoint, None, spec.workdir, {}
    env.setdefault("PATH", BASE_PATH)
    env.setdefault("LANG", "C.UTF-8")
    return oci.ImageConfig(
        entrypoint=list(entry) if entry else None,  # type: ignore[call-overload]
        cmd=list(cmd) if cmd else None,  # type: ignore[call-overload]
        env=[f"{k}={v}" for k, v in env.items()],
        workdir=workdir,
        user=user,
        labels={str(k): str(v) for k, v in labels.items()},
    )


# ------------------------------------------------------------------------------------------
# layers


def base_rootfs() -> Path:
    root = cache_dir() / "rootfs" / f"python-{SUITE}"
    if (root / ".complete").is_file():
        return root
    if shutil.which("debootstrap") is None:
        raise SystemExit("[images] debootstrap not found: apt-get install debootstrap")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    t = time.monotonic()
    log(f"debootstrap {SUITE} minbase + python3 (once, ~1 min) ...")
    debootstrap_minbase(tmp, ("python3", "ca-certificates"), SUITE, MIRROR)
    tmp.rename(root)
    (root / ".complete").write_text(f"{SUITE} {MIRROR} {time.time()}\n")
    log(f"debootstrap done in {time.monotonic() - t:.0f}s")
    return root


def requirements(spec: Spec) -> list[str]:
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(py.get("dependencies", []))
    for e in spec.extras:
        reqs += py["optional-dependencies"][e]
    return sorted({_pin(r) for r in reqs + spec.extra_requirements})


def _pin(req: str) -> str:
    """Pin a requirement to the version in the environment the tests run in (the project's
    venv: this script runs with its python) - the image gets what was tested, and the set of
    pins is the deps layer's cache key. Unknown names keep their specifier."""
    from importlib import metadata

    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", req)
    if not m:
        return req
    try:
        v = metadata.version(m.group(1))
    except metadata.PackageNotFoundError:
        return req
    return f"{m.group(1)}{m.group(2) or ''}=={v.split('+')[0]}"


def deps_layer(store: oci.BlobStore, spec: Spec) -> oci.Blob:
    reqs = requirements(spec)
    key = (
        "deps-"
        + hashlib.sha256(
            json.dumps({"reqs": reqs, "py": PYVER, "plat": PLATFORMS, "venv": VENV}).encode()
        ).hexdigest()[:24]
    )
    if (b := store.cached(key)) is not None:
        log(f"  deps layer cached ({b.size / 1e6:.0f} MB, key {key})")
        return b
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        site = Path(tmp) / "site-packages"
        t = time.monotonic()
        args = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(site),
            "--only-binary=:all:",
            "--python-version",
            PYVER,
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ]
        for p in PLATFORMS:
            args += ["--platform", p]
        log(f"  pip install {len(reqs)} requirements for cp311/manylinux ...")
        subprocess.run([*args, *reqs], check=True)
        shutil.rmtree(site / "bin", ignore_errors=True)  # host shebangs; wrappers are in app
        log(f"  pip done in {time.monotonic() - t:.0f}s; packing layer ...")
        t = time.monotonic()
        b = store.layer_from_entries(
            [(site, f"{VENV}/lib/python{PYVER}/site-packages")], key=key, force_root=True
        )
        log(f"  deps layer {b.size / 1e6:.0f} MB packed in {time.monotonic() - t:.0f}s")
    return b


def project_wheel(tmp: Path) -> Path:
    out = tmp / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return next(out.glob("kubeforge-*.whl"))


def _console_scripts(site: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for ep in sorted(site.glob("*.dist-info/entry_points.txt")):
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read(ep)
        if cp.has_section("console_scripts"):
            out.update(dict(cp.items("console_scripts")))
    return out


def app_layer(
    store: oci.BlobStore, spec: Spec, wheel: Path, base: Path, deps_site: Path | None, tmp: Path
) -> oci.Blob:
    root = tmp / f"app-{spec.name.split('/')[-1].split(':')[0]}"
    site = root / VENV.lstrip("/") / "lib" / f"python{PYVER}" / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    shutil.rmtree(site / "bin", ignore_errors=True)
    vb = root / VENV.lstrip("/") / "bin"
    vb.mkdir(parents=True)
    (vb / "python").symlink_to(f"/usr/bin/python{PYVER}")
    (vb / "python3").symlink_to("python")
    (root / VENV.lstrip("/") / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYVER}\n"
    )
    scripts = _console_scripts(site)
    if deps_site is not None:
        scripts = {**_console_scripts(deps_site), **scripts}
    for name, target in sorted(scripts.items()):
        mod, _, func = target.partition(":")
        f = vb / name
        f.write_text(
            f"#!{VENV}/bin/python\nimport sys\nfrom {mod.strip()} import {func.strip().split('.')[0]}"
            f" as _main\nif __name__ == '__main__':\n    sys.exit(_main())\n"
        )
        f.chmod(0o755)
    if spec.report_zipapp:
        (root / "opt/kubeforge/bin").mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=str(site))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kubeforge_trainer.report.build",
                str(root / "opt/kubeforge/bin/kubeforge-report.pyz"),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    etc = root / "etc"
    etc.mkdir()
    passwd = (base / "etc" / "passwd").read_text()
    if not re.search(r"^[^:]*:[^:]*:1000:", passwd, re.M):
        passwd += "kubeforge:x:1000:0::/tmp:/usr/sbin/nologin\n"
    (etc / "passwd").write_text(passwd)
    (etc / "passwd").chmod(0o644)
    entries = [(root / VENV.lstrip("/"), VENV.lstrip("/")), (etc / "passwd", "etc/passwd")]
    if spec.report_zipapp:
        entries.append((root / "opt/kubeforge/bin", "opt/kubeforge/bin"))
    for d, perm in spec.dirs.items():
        p = root / d
        p.mkdir(parents=True)
        uid, gid, mode = perm.split(":")
        os.chown(p, int(uid), int(gid))
        p.chmod(int(mode, 8))
        entries.append((p, d))
    # the app layer keeps real owners (set above), everything else root
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if not any(str(p).startswith(str(root / d)) for d in spec.dirs):
                os.lchown(p, 0, 0)
    return store.layer_from_entries(entries)


def deps_site_of(store: oci.BlobStore, blob: oci.Blob, tmp: Path) -> Path:
    """Entry points of the deps (torchrun, ...) read from the deps layer's dist-info files."""
    import tarfile

    out = tmp / "deps-eps"
    out.mkdir(exist_ok=True)
    with tarfile.open(store.path(blob.digest)) as t:
        for m in t:
            if m.name.endswith(".dist-info/entry_points.txt"):
                f = t.extractfile(m)
                if f:
                    (out / (m.name.split("/")[-2])).mkdir(exist_ok=True)
                    (out / m.name.split("/")[-2] / "entry_points.txt").write_bytes(f.read())
    return out


def build(
    names: list[str], out_dir: Path, do_import: bool, import_if_running: bool = False
) -> list[Path]:
    t_all = time.monotonic()
    store = oci.BlobStore(cache_dir() / "blobs")
    base = base_rootfs()
    t = time.monotonic()
    base_layer = store.layer_from_dir(
        base,
        key=f"base-python-{SUITE}-"
        + hashlib.sha256((base / ".complete").read_bytes()).hexdigest()[:16],
        exclude=[".complete"],
    )
    log(f"base layer {base_layer.size / 1e6:.0f} MB ({time.monotonic() - t:.1f}s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    archives = []
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmps:
        tmp = Path(tmps)
        wheel = project_wheel(tmp)
        for n in names:
            spec = SPECS[n]
            t = time.monotonic()
            log(f"{n}: {spec.name}")
            deps = deps_layer(store, spec)
            app = app_layer(store, spec, wheel, base, deps_site_of(store, deps, tmp), tmp)
            out = out_dir / f"kubeforge-{n}.oci.tar"
            digest = oci.write_archive(
                out, store, [base_layer, deps, app], image_config(spec), spec.name
            )
            log(
                f"{n}: {out} {out.stat().st_size / 1e6:.0f} MB, {digest[:19]} "
                f"({time.monotonic() - t:.1f}s)"
            )
            archives.append(out)
    if do_import:
        from kubeforge_cluster.realnode import RealNode, default_run_dir

        run_dir = default_run_dir(os.environ.get("KUBEFORGE_NODE_NAME", "dev"))
        if import_if_running and not (run_dir / "node-state.json").exists():
            log(
                f"no real node running ({run_dir}): images not imported (`make cluster "
                "NODES=real` imports them at start)"
            )
            return archives
        node = RealNode(default_run_dir(os.environ.get("KUBEFORGE_NODE_NAME", "dev")), verbose=True)
        node.attach()
        t = time.monotonic()
        node.import_images(archives)
        log(f"imported into the node in {time.monotonic() - t:.1f}s")
    log(f"all done in {time.monotonic() - t_all:.1f}s")
    return archives


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="operator,trainer,server")
    ap.add_argument("--out", type=Path, default=REPO / "cluster" / "images" / "out")
    ap.add_argument(
        "--import",
        dest="do_import",
        action="store_true",
        help="load the images into the running real node (make cluster NODES=real)",
    )
    ap.add_argument(
        "--import-if-running",
        action="store_true",
        help="like --import when a real node is running; otherwise just build (`make images`)",
    )
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    build(names, a.out, a.do_import or a.import_if_running, a.import_if_running)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
