"""``kubeforge-report``: run a command, pass its output through, and report its metric lines.

Usage::

    kubeforge-report [--collector stdout|file] [--path P] [--format text|json] [--pattern RE]
                     [--metric NAME]... [--onnx MODEL] -- CMD ARGS...
    kubeforge-report --onnx MODEL          # measure a model only: prints the figures as JSON

Its metric lines become progress reports on the same channel as the built-in trainer, and the
last value of every metric goes into the termination message. A stop request (pruned) sends
SIGTERM to the command (SIGKILL after ``--grace`` seconds) and exits 3; otherwise the exit code is
the command's own (128+N when it died of signal N). Standard library only; ``--onnx`` (the
serving cost: ``onnx_latency_ms``, ``onnx_bytes``, ``onnx_params``, added to the final metrics
when the command succeeds) imports onnxruntime, numpy and onnx when it runs, and says which is
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from .channel import ProgressChannel, write_termination_message
from .cost import CostUnavailable, measure
from .parse import LineBuffer, MetricParser, Report

EXIT_ERROR = 1
EXIT_BAD_CONFIG = 2
EXIT_STOPPED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeforge-report",
        description="Run CMD, pass its output through, turn its metric lines into kubeforge "
        "progress reports and a termination message.",
    )
    p.add_argument("--collector", choices=["stdout", "file"], default="stdout")
    p.add_argument("--path", default="", help="file to tail (collector file)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--pattern", default="", help="regex with groups 'name' and 'value'")
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        help="metric to collect (repeatable; the first is the objective: only lines carrying it "
        "are reports). Default: every metric.",
    )
    p.add_argument("--poll", type=float, default=0.2, help="seconds between file/stop checks")
    p.add_argument("--grace", type=float, default=20.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument(
        "--min-interval", type=float, default=1.0, help="seconds between progress reports"
    )
    p.add_argument(
        "--onnx",
        default="",
        metavar="MODEL",
        help="ONNX model to measure with ONNX Runtime after CMD succeeds (onnx_latency_ms, "
        "onnx_bytes, onnx_params); without CMD: measure it and print the figures as JSON",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return p


class Reporter:
    """Collects lines from any number of threads, sends reports, remembers final metrics."""

    def __init__(self, parser: MetricParser, channel: ProgressChannel) -> None:
        self.parser = parser
        self.channel = channel
        self.reports: list[Report] = []
        self._lock = threading.Lock()

    def lines(self, lines: Sequence[str]) -> None:
        with self._lock:
            for line in lines:
                rep = self.parser.feed(line)
                if rep is not None:
                    self.reports.append(rep)
                    self.channel.report(rep.step, rep.metrics, epoch=rep.epoch)


def _pump(src: IO[bytes], dst: IO[bytes], reporter: Reporter | None) -> None:
    """Copy a pipe to our own stream unchanged, feeding complete lines to the reporter."""
    buf = LineBuffer()
    fd = src.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        try:
            dst.write(chunk)
            dst.flush()
        except (OSError, ValueError):
            pass
        if reporter is not None:
            reporter.lines(buf.push(chunk))
    if reporter is not None:
        reporter.lines(buf.close())


class FileTailer:
    """Follows a file that may not exist yet, may be truncated or replaced."""

    def __init__(self, path: str, reporter: Reporter) -> None:
        self.path = path
        self.reporter = reporter
        self.pos = 0
        self.ino: int | None = None
        self.buf = LineBuffer()

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if self.ino is not None and (st.st_ino != self.ino or st.st_size < self.pos):
            self.pos = 0  # rotated or truncated: start over
            self.buf = LineBuffer()
        self.ino = st.st_ino
        if st.st_size <= self.pos:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except OSError:
            return
        self.pos += len(data)
        self.reporter.lines(self.buf.push(data))

    def close(self) -> None:
        self.poll()
        self.reporter.lines(self.buf.close())


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("pvc://"):
        return "/mnt/pvc/" + uri[len("pvc://") :]
    if "://" not in uri and uri:
        return uri
    return None


def artifacts_from_output(env: dict[str, str]) -> dict[str, Any]:
    """``model.onnx`` written by the command into a local output URI, if any."""
    uri = env.get("KUBEFORGE_OUTPUT_URI", "")
    base = _local_path(uri)
    if not base:
        return {}
    model = os.path.join(base, "model.onnx")
    if not os.path.isfile(model):
        return {}
    digest = hashlib.sha256()
    size = 0
    with open(model, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"model": uri.rstrip("/") + "/model.onnx", "sha256": digest.hexdigest(), "bytes": size}


def _serving_cost(path: str) -> dict[str, float]:
    """The model's serving cost, or nothing (with the reason on stderr): a training run that
    succeeded stays a success when its model cannot be measured."""
    if not os.path.isfile(path):
        print(
            f"kubeforge-report: --onnx {path}: no such file; no serving cost reported",
            file=sys.stderr,
            flush=True,
        )
        return {}
    try:
        return measure(path)
    except CostUnavailable as exc:
        print(
            f"kubeforge-report: --onnx {path}: {exc}; no serving cost reported",
            file=sys.stderr,
            flush=True,
        )
        return {}


def _measure_only(path: str) -> int:
    try:
        figures = measure(path)
    except CostUnavailable as exc:
        print(f"kubeforge-report: --onnx {path}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(figures, sort_keys=True))
    return 0


def run(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command and args.onnx:
        return _measure_only(args.onnx)
    if not command:
        print(
            "kubeforge-report: no command given (usage: kubeforge-report [opts] -- CMD ARGS...)",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    if args.collector == "file" and not args.path:
        print("kubeforge-report: --collector file needs --path", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        parser = MetricParser(format=args.format, pattern=args.pattern, metrics=args.metric)
    except (ValueError, re.error) as exc:
        print(f"kubeforge-report: bad --pattern/--format: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    channel = ProgressChannel(env=env, min_interval=args.min_interval)
    reporter = Reporter(parser, channel)

    use_pipes = args.collector == "stdout"
    try:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE if use_pipes else None,
            stderr=subprocess.PIPE if use_pipes else None,
            start_new_session=True,  # so a stop reaches the whole tree (e.g. torchrun workers)
        )
    except OSError as exc:
        print(f"kubeforge-report: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126

    # Signals sent to us (pod deletion, Ctrl-C) go to the command.
    def forward(signum: int, _frame: Any) -> None:
        _signal_group(proc, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    threads: list[threading.Thread] = []
    tailer: FileTailer | None = None
    if use_pipes:
        assert proc.stdout is not None and proc.stderr is not None
        for src, dst in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
            t = threading.Thread(target=_pump, args=(src, dst, reporter), daemon=True)
            t.start()
            threads.append(t)
    else:
        tailer = FileTailer(args.path, reporter)

    stop_reason: str | None = None
    killed_at: float | None = None
    try:
        while proc.poll() is None:
            time.sleep(args.poll)
            if tailer is not None:
                tailer.poll()
            if stop_reason is None:
                stop_reason = channel.stop_requested()
                if stop_reason is not None:
                    print(
                        f"kubeforge-report: stop requested ({stop_reason}); sending SIGTERM",
                        file=sys.stderr,
                        flush=True,
                    )
                    _signal_group(proc, signal.SIGTERM)
                    killed_at = time.monotonic()
            elif killed_at is not None and time.monotonic() - killed_at > args.grace:
                _signal_group(proc, signal.SIGKILL)
                killed_at = None
        for t in threads:
            t.join(timeout=5)
        if tailer is not None:
            tailer.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    rc = proc.returncode
    if rc is not None and rc < 0:
        rc = 128 - rc
    channel.flush()
    metrics = parser.final_metrics()
    artifacts = artifacts_from_output(env)
    # The model to measure: the one named, else the model.onnx the command wrote into a local
    # output URI (so a trial of your own code reports its serving cost without a flag).
    model_path = args.onnx or (_local_path(str(artifacts["model"])) if artifacts else None)
    if model_path and stop_reason is None and rc == 0:
        metrics.update(_serving_cost(model_path))
    write_termination_message(metrics, artifacts, env=env)
    if stop_reason is not None:
        return EXIT_STOPPED
    return int(rc or 0)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
