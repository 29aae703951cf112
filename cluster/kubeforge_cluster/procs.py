"""Host processes the cluster tooling starts and stops.

Two kinds, one module:

- :class:`Proc` + :func:`spawn_logged` + :func:`terminate`: a component of a control plane or
  real node (etcd, kube-apiserver, kwok, KEDA, kubelet, ...). Its log is ``<logs dir>/<name>.log``
  opened for append with the command line as its first line; it runs in its own session and,
  unless the caller is a daemon that outlives its parent, dies with its parent (PDEATHSIG).
  A :class:`Proc` is also rebuilt from a state file (pid + exe only) to stop a component that
  another process started.
- :class:`ManagedProcess`: one helper daemon owned by a ``with`` block (the image registry,
  buildkitd): started with a readiness check, stopped with SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

#: The environment that turns OpenTelemetry trace export off in Go daemons that have it
#: (distribution, buildkitd): with no collector they would retry exporting forever.
OTEL_OFF = {"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}


def env_without_tracing() -> dict[str, str]:
    """This process's environment with :data:`OTEL_OFF` on top."""
    return dict(os.environ, **OTEL_OFF)


def set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pid_alive(pid: int, exe: str | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not); with ``exe``, only if its argv[0] has that name
    (a recycled pid is someone else)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if exe is not None:
            cmd0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            return Path(cmd0).name == Path(exe).name
    except (OSError, IndexError):
        return True
    return True


def tail_log(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log (read from its last 256 KiB), or ``(no log)``."""
    try:
        data = path.read_bytes()[-256 * 1024 :].decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(data[-lines:])


@dataclass
class Proc:
    name: str
    pid: int
    exe: str
    log: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid, self.exe)


def spawn_logged(
    name: str,
    args: list[str],
    *,
    logs_dir: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = True,
) -> Proc:
    """Start ``args`` as component ``name``: stdout and stderr appended to
    ``logs_dir/<name>.log`` after a ``# <command line>`` line, stdin closed, its own session."""
    log = logs_dir / f"{name}.log"
    with open(log, "ab") as logf:
        logf.write(f"# {' '.join(args)}\n".encode())
        logf.flush()
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=set_pdeathsig if die_with_parent else None,
        )
    return Proc(name, popen.pid, args[0], str(log), popen)


def terminate(p: Proc, grace: float = 5.0) -> None:
    """SIGTERM, SIGKILL after ``grace`` seconds; reaps it when this process started it."""
    if not p.alive():
        if p.popen is not None:
            p.popen.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if p.popen is not None:
            if p.popen.poll() is not None:
                return
        elif not pid_alive(p.pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGKILL)
    if p.popen is not None:
        p.popen.wait()


@dataclass(frozen=True)
class WaitPolicy:
    """How :func:`wait_while_running` waits: the exception it raises, how many log lines that
    quotes, the poll interval, and the errors of the readiness check that mean "not yet"."""

    error: type[Exception]
    tail_lines: int
    interval: float
    transient: tuple[type[Exception], ...]


def wait_while_running(
    what: str,
    ready: Callable[[], object],
    procs: Sequence[Proc],
    component_log: Path,
    timeout: float,
    policy: WaitPolicy,
) -> None:
    """Poll ``ready()`` until it is truthy. Raise ``policy.error`` at once if any of ``procs``
    exits (with its log's tail), or after ``timeout`` seconds (with the last transient error
    ``ready`` raised and ``component_log``'s tail); other exceptions from ``ready`` propagate."""
    error, tail_lines = policy.error, policy.tail_lines
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise error(
                    f"{p.name} exited while waiting for {what}; "
                    f"log {p.log}:\n{tail_log(Path(p.log), tail_lines)}"
                )
        try:
            if ready():
                return
        except policy.transient as e:
            last = e
        time.sleep(policy.interval)
    raise error(
        f"timed out after {timeout}s waiting for {what} (last error: {last}); "
        f"{component_log.stem} log:\n{tail_log(component_log, tail_lines)}"
    )


def dump_log_dirs(dirs: Sequence[Path], lines: int) -> str:
    """The last ``lines`` lines of every ``*.log`` in ``dirs`` (each dir oldest-written first),
    each under a header naming the full log."""
    out = []
    for d in dirs:
        if not d.exists():
            continue
        for log in sorted(d.glob("*.log"), key=lambda p: p.stat().st_mtime):
            out.append(f"===== {log.name} (last {lines} lines; full log: {log}) =====")
            out.append(tail_log(log, lines))
    return "\n".join(out)


def proc_records(procs: Sequence[Proc]) -> list[dict[str, object]]:
    """What a state file keeps of each process (enough to stop it from another process)."""
    return [{"name": p.name, "pid": p.pid, "exe": p.exe, "log": p.log} for p in procs]


def procs_from_records(records: Sequence[dict[str, Any]]) -> list[Proc]:
    return [Proc(r["name"], r["pid"], r["exe"], r["log"]) for r in records]


def write_state_file(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


class ManagedProcess:
    """One helper daemon: :meth:`start` launches it (log appended to ``log_path``, its own
    session, tracing export off) and polls ``ready`` until it answers; :meth:`stop` sends
    SIGTERM, then SIGKILL if it is still there after ``stop_grace`` seconds.

    ``name`` is what errors call it; ``pid_file``, if given, holds its pid while it runs;
    ``nice`` > 0 runs it through ``nice -n`` (``nice`` execs it, so the pid is the daemon's)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_path: Path,
        pid_file: Path | None = None,
        nice: int = 0,
        stop_grace: float = 10.0,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.pid_file = pid_file
        self.nice = nice
        self.stop_grace = stop_grace
        self.popen: subprocess.Popen[bytes] | None = None

    def start(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        poll_interval: float,
        log_tail_chars: int,
    ) -> bool:
        """Start it and wait until ``ready()`` (True); if it exits first, raise with the last
        ``log_tail_chars`` of its log; False after ``timeout`` (still running: the owner stops
        it and cleans up its own files)."""
        cmd = ["nice", "-n", str(self.nice), *self.args] if self.nice else self.args
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env_without_tracing(),
                start_new_session=True,
            )
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.popen.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}): "
                    f"{self.log_path.read_text()[-log_tail_chars:]}"
                )
            if ready():
                return True
            time.sleep(poll_interval)
        return False

    def stop(self) -> None:
        """Stop it if it runs, remove its pid file; forget it (a later call does nothing)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.popen = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


class DaemonOwner:
    """Base of a helper that runs one :class:`ManagedProcess` for a ``with`` block
    (``LocalRegistry``, ``BuildKitDaemon``). Its run dir (config, log) is removed at
    :meth:`stop` when it made the dir itself; a run dir given to it is kept."""

    def __init__(self, run_dir: Path | None, prefix: str) -> None:
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix=prefix))
        self.daemon: ManagedProcess | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _start_daemon(
        self,
        daemon: ManagedProcess,
        ready: Callable[[], bool],
        *,
        timeout: float,
        poll_interval: float,
        log_tail_chars: int,
        not_ready: str,
    ) -> None:
        """Start ``daemon`` (see :meth:`ManagedProcess.start`); not ready in time: stop and
        raise ``not_ready``."""
        self.daemon = daemon
        if not daemon.start(
            ready, timeout=timeout, poll_interval=poll_interval, log_tail_chars=log_tail_chars
        ):
            self.stop()
            raise RuntimeError(not_ready)

    def stop(self) -> None:
        if self.daemon is None or self.daemon.popen is None:
            return
        self.daemon.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
