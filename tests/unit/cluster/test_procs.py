"""kubeforge_cluster.procs: the one place host components and helper daemons are started and
stopped (log files, sessions, SIGTERM then SIGKILL, readiness, pid file, tracing off)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from kubeforge_cluster.procs import (
    OTEL_OFF,
    DaemonOwner,
    ManagedProcess,
    Proc,
    WaitPolicy,
    dump_log_dirs,
    pid_alive,
    proc_records,
    procs_from_records,
    spawn_logged,
    tail_log,
    terminate,
    wait_while_running,
    write_state_file,
)

PY = sys.executable
# a child that ignores SIGTERM: only SIGKILL ends it (says so once the handler is in place)
IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('arm' + 'ed', flush=True); time.sleep(60)"
)


def _wait_for_text(path: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text().splitlines():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_spawn_logged_appends_command_line_and_output_in_its_own_session(tmp_path: Path) -> None:
    (tmp_path / "echo.log").write_text("earlier run\n")
    args = [PY, "-c", "import os; print('pwd', os.getcwd()); print('sid', os.getsid(0))"]
    p = spawn_logged("echo", args, logs_dir=tmp_path, cwd=tmp_path, env={"PATH": "/usr/bin"})
    assert p.popen is not None
    assert p.popen.wait(10) == 0
    assert (p.name, p.exe, p.log) == ("echo", PY, str(tmp_path / "echo.log"))
    lines = Path(p.log).read_text().splitlines()
    assert lines[0] == "earlier run"  # appended, not truncated
    assert lines[1] == f"# {' '.join(args)}"
    assert lines[2] == f"pwd {tmp_path}"
    assert lines[3] == f"sid {p.pid}"  # start_new_session: it leads its own session
    assert not p.alive()


def test_terminate_sends_sigterm_first(tmp_path: Path) -> None:
    p = spawn_logged(
        "sleeper", [PY, "-c", "import time; time.sleep(60)"], logs_dir=tmp_path, cwd=tmp_path
    )
    assert p.alive()
    t0 = time.monotonic()
    terminate(p, grace=5)
    assert time.monotonic() - t0 < 4
    assert p.popen is not None and p.popen.returncode == -15


def test_terminate_kills_what_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    p = spawn_logged("stubborn", [PY, "-c", IGNORES_TERM], logs_dir=tmp_path, cwd=tmp_path)
    _wait_for_text(Path(p.log), "armed")
    t0 = time.monotonic()
    terminate(p, grace=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert p.popen is not None and p.popen.returncode == -9


def test_terminate_stops_a_proc_known_only_by_pid(tmp_path: Path) -> None:
    started = spawn_logged(
        "sleeper", [PY, "-c", "import time; time.sleep(60)"], logs_dir=tmp_path, cwd=tmp_path
    )
    from_state = Proc(started.name, started.pid, started.exe, started.log)  # as a state file has it
    assert from_state.alive()
    assert not Proc("other", started.pid, "/bin/not-this-exe", "").alive()  # a recycled pid
    terminate(from_state, grace=5)
    assert started.popen is not None and started.popen.wait(5) == -15
    assert not pid_alive(started.pid)


def test_tail_log_last_lines_and_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_log(log, 3) == "line 97\nline 98\nline 99"
    assert tail_log(tmp_path / "absent.log", 3) == "(no log)"


def _daemon(tmp_path: Path, code: str, **kw: object) -> ManagedProcess:
    return ManagedProcess("helper", [PY, "-c", code], log_path=tmp_path / "helper.log", **kw)  # type: ignore[arg-type]


def test_managed_process_ready_pid_file_nice_and_tracing_off(tmp_path: Path) -> None:
    code = (
        "import os, time; "
        "print('env', os.environ.get('OTEL_TRACES_EXPORTER'), os.environ.get('OTEL_SDK_DISABLED')); "
        "print('nice', os.nice(0), flush=True); time.sleep(60)"
    )
    pid_file = tmp_path / "helper.pid"
    d = _daemon(tmp_path, code, pid_file=pid_file, nice=7, stop_grace=5)
    log = tmp_path / "helper.log"
    ready = d.start(
        lambda: log.exists() and "nice" in log.read_text(),
        timeout=10,
        poll_interval=0.02,
        log_tail_chars=100,
    )
    assert ready
    assert d.popen is not None
    pid = d.popen.pid
    assert pid_file.read_text() == f"{pid}\n"
    text = log.read_text()
    assert f"env {OTEL_OFF['OTEL_TRACES_EXPORTER']} {OTEL_OFF['OTEL_SDK_DISABLED']}" in text
    assert f"nice {min(19, os.nice(0) + 7)}" in text  # `nice` exec'd the daemon: the pid is its own
    popen = d.popen
    d.stop()
    assert popen.returncode == -15 and d.popen is None
    d.stop()  # a second stop does nothing
    assert not pid_file.exists()


def test_managed_process_that_exits_raises_with_its_log(tmp_path: Path) -> None:
    d = _daemon(tmp_path, "import sys; print('bad config: port'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"helper exited \(3\): bad config: port"):
        d.start(lambda: False, timeout=10, poll_interval=0.02, log_tail_chars=100)


def test_managed_process_not_ready_returns_false_and_keeps_running(tmp_path: Path) -> None:
    d = _daemon(tmp_path, IGNORES_TERM, stop_grace=0.3)
    assert not d.start(lambda: False, timeout=0.3, poll_interval=0.02, log_tail_chars=100)
    popen = d.popen
    assert popen is not None and popen.poll() is None  # the owner decides (stops, cleans up)
    _wait_for_text(tmp_path / "helper.log", "armed")
    d.stop()  # SIGTERM ignored: killed after stop_grace
    assert popen.returncode == -9


class _WaitFailed(RuntimeError):
    pass


def _wait(ready: object, procs: list[Proc], log: Path, timeout: float = 5) -> None:
    policy = WaitPolicy(_WaitFailed, tail_lines=2, interval=0.01, transient=(OSError,))
    wait_while_running("the thing", ready, procs, log, timeout, policy)  # type: ignore[arg-type]


def test_wait_while_running_returns_once_ready_despite_transient_errors(tmp_path: Path) -> None:
    answers = iter([OSError("refused"), False, OSError("refused"), "yes"])

    def ready() -> object:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    _wait(ready, [], tmp_path / "c.log")
    assert next(answers, None) is None  # polled until the truthy answer, not beyond


def test_wait_while_running_times_out_with_last_error_and_component_log(tmp_path: Path) -> None:
    log = tmp_path / "kwok.log"
    log.write_text("one\ntwo\nthree\n")

    def ready() -> bool:
        raise OSError("connection refused")

    with pytest.raises(_WaitFailed) as e:
        _wait(ready, [], log, timeout=0.1)
    assert str(e.value) == (
        "timed out after 0.1s waiting for the thing (last error: connection refused); "
        "kwok log:\ntwo\nthree"
    )


def test_wait_while_running_fails_at_once_when_a_process_exits(tmp_path: Path) -> None:
    p = spawn_logged("etcd", [PY, "-c", "print('bad flag')"], logs_dir=tmp_path, cwd=tmp_path)
    assert p.popen is not None and p.popen.wait(10) == 0
    t0 = time.monotonic()
    with pytest.raises(
        _WaitFailed,
        match=r"etcd exited while waiting for the thing; log .*etcd.log:\n.*\nbad flag$",
    ):
        _wait(lambda: False, [p], tmp_path / "other.log", timeout=30)
    assert time.monotonic() - t0 < 5


def test_wait_while_running_lets_other_errors_through(tmp_path: Path) -> None:
    def ready() -> bool:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _wait(ready, [], tmp_path / "c.log")


def test_dump_log_dirs_in_order_with_headers(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i, (d, name) in enumerate(((a, "late"), (a, "early"), (b, "cp"))):
        f = d / f"{name}.log"
        f.write_text(f"{name} 1\n{name} 2\n")
        os.utime(f, (1000 + i, 1000 + (i if name != "early" else -5)))
    text = dump_log_dirs([a, tmp_path / "absent", b], 1)
    assert text.splitlines() == [
        f"===== early.log (last 1 lines; full log: {a / 'early.log'}) =====",
        "early 2",
        f"===== late.log (last 1 lines; full log: {a / 'late.log'}) =====",
        "late 2",
        f"===== cp.log (last 1 lines; full log: {b / 'cp.log'}) =====",
        "cp 2",
    ]


def test_state_file_round_trip(tmp_path: Path) -> None:
    procs = [
        Proc("etcd", 123, "/bin/etcd", "/l/etcd.log"),
        Proc("kwok", 456, "/bin/kwok", "/l/k.log"),
    ]
    path = tmp_path / "state.json"
    write_state_file(path, {"name": "x", "procs": proc_records(procs)})
    assert not (tmp_path / "state.json.tmp").exists()
    st = json.loads(path.read_text())
    assert st["name"] == "x"
    assert procs_from_records(st["procs"]) == procs


class _Helper(DaemonOwner):
    def __init__(self, run_dir: Path | None, ready: bool) -> None:
        super().__init__(run_dir, "kubeforge-test-helper-")
        self.ready = ready

    def start(self) -> _Helper:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start_daemon(
            ManagedProcess(
                "helper",
                [PY, "-c", "import time; time.sleep(60)"],
                log_path=self.run_dir / "helper.log",
                pid_file=self.run_dir / "helper.pid",
                stop_grace=5,
            ),
            lambda: self.ready,
            timeout=0.2,
            poll_interval=0.02,
            log_tail_chars=100,
            not_ready="helper not ready after 0.2s",
        )
        return self


def test_daemon_owner_removes_only_a_run_dir_of_its_own(tmp_path: Path) -> None:
    with _Helper(None, ready=True) as own:
        assert own.daemon is not None and own.daemon.popen is not None
        popen = own.daemon.popen
        assert (own.run_dir / "helper.pid").is_file()
    assert popen.returncode == -15 and not own.run_dir.exists()
    given = tmp_path / "given"
    with _Helper(given, ready=True):
        pass
    assert (given / "helper.log").is_file() and not (given / "helper.pid").exists()


def test_daemon_owner_not_ready_stops_it_and_raises(tmp_path: Path) -> None:
    h = _Helper(tmp_path / "run", ready=False)
    with pytest.raises(RuntimeError, match=r"^helper not ready after 0.2s$"):
        h.start()
    assert h.daemon is not None and h.daemon.popen is None  # stopped
    assert not (tmp_path / "run" / "helper.pid").exists()
