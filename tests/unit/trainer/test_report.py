"""kubeforge-report and the progress channel (standard library only: no torch needed)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kubeforge_trainer.report import build as zipbuild
from kubeforge_trainer.report.channel import (
    ProgressChannel,
    termination_message,
    write_termination_message,
)
from kubeforge_trainer.report.cli import run
from kubeforge_trainer.report.parse import LineBuffer, MetricParser

PY = sys.executable


# ------------------------------------------------------------------ parsing recorded outputs
RECORDED_TEXT = """\
Downloading data... 100%
Namespace(lr=0.1, epochs=3)
epoch=1 accuracy=0.61, loss=1.2
some noise: x=abc y=
WARNING version=2.1.0-rc1
epoch=2 accuracy=0.72, loss=0.8
INFO epoch=3 accuracy=0.80 loss=0.5e0
"""


def test_text_katib_lines_with_noise() -> None:
    p = MetricParser(metrics=["accuracy", "loss"])
    reps = p.feed_lines(RECORDED_TEXT.splitlines())
    assert [(r.step, r.metrics["accuracy"]) for r in reps] == [(1, 0.61), (2, 0.72), (3, 0.80)]
    assert p.final_metrics() == {"accuracy": 0.80, "loss": 0.5}


def test_text_all_metrics_and_step_from_sequence() -> None:
    p = MetricParser()
    reps = p.feed_lines(
        ["loss=1.5", "no metrics here", "loss=0.5 val_loss=0.7", "step=10 loss=0.25"]
    )
    assert [r.step for r in reps] == [1, 2, 10]
    assert p.final_metrics() == {"loss": 0.25, "val_loss": 0.7}


def test_objective_decides_what_is_a_report() -> None:
    p = MetricParser(metrics=["val_acc", "loss"])
    reps = p.feed_lines(["loss=0.9", "epoch=1 val_acc=0.5", "loss=0.4"])
    assert [r.step for r in reps] == [1]
    assert p.final_metrics() == {"val_acc": 0.5, "loss": 0.4}


def test_json_lines() -> None:
    p = MetricParser(format="json")
    reps = p.feed_lines(
        [
            '{"epoch": 1, "val_loss": 0.5, "name": "x", "ok": true}',
            "not json loss=3",
            '{"step": 7, "metrics": {"val_loss": 0.25}}',
            "[1, 2]",
        ]
    )
    assert [(r.step, r.metrics) for r in reps] == [(1, {"val_loss": 0.5}), (7, {"val_loss": 0.25})]


def test_regex_pattern() -> None:
    p = MetricParser(pattern=r"(?P<name>\w+):\s*(?P<value>[-+\d.eE]+)")
    reps = p.feed_lines(["Epoch 1 | loss: 0.50 | acc: 0.9", "noise", "loss: 0.2"])
    assert [r.metrics for r in reps] == [{"loss": 0.5, "acc": 0.9}, {"loss": 0.2}]
    with pytest.raises(ValueError):
        MetricParser(pattern=r"\w+")


def test_split_line_across_writes() -> None:
    buf, p = LineBuffer(), MetricParser()
    lines = []
    for chunk in (b"epoch=1 acc", b"uracy=0.5", b"\nnoise\r\nepoch=2 ", b"accuracy=0.75"):
        lines += buf.push(chunk)
    lines += buf.close()
    assert [r.metrics for r in p.feed_lines(lines)] == [{"accuracy": 0.5}, {"accuracy": 0.75}]


def test_termination_message_under_4k() -> None:
    text = termination_message(
        {f"metric_with_a_long_name_{i}": i * 0.5 for i in range(400)}
        | {"loss": float("nan"), "acc": 0.9},
        {"model": "s3://b/m/model.onnx", "sha256": "0" * 64},
    )
    obj = json.loads(text)
    assert len(text.encode()) < 4096 and obj["metrics"]["acc"] == 0.9
    assert "loss" not in obj["metrics"] and obj["artifacts"]["model"] == "s3://b/m/model.onnx"


def test_termination_log_default_skipped_outside_pod(tmp_path: Path) -> None:
    text = write_termination_message({"a": 1}, env={})  # /dev/termination-log absent: no error
    assert json.loads(text) == {"metrics": {"a": 1}, "artifacts": {}}
    write_termination_message({"a": 1}, env={"KUBEFORGE_TERMINATION_LOG": "/nonexistent/x/y"})


# ------------------------------------------------------------------ running commands
def _env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBERNETES_SERVICE_HOST", "KUBEFORGE_POD_NAME")
    }
    env.update(
        KUBEFORGE_TERMINATION_LOG=str(tmp / "term.json"),
        KUBEFORGE_PROGRESS_FILE=str(tmp / "progress.jsonl"),
        KUBEFORGE_STOP_FILE=str(tmp / "stop"),
    )
    return env


def _progress(tmp: Path) -> list[dict]:
    path = tmp / "progress.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


SPLIT_WRITER = r"""
import sys, time
print("starting", flush=True)
for e in range(1, 4):
    sys.stdout.write(f"epoch={e} accu"); sys.stdout.flush(); time.sleep(0.02)
    sys.stdout.write(f"racy={e / 4}\nnoise x=abc\n"); sys.stdout.flush()
    print(f"loss={1 / e}", file=sys.stderr, flush=True)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("code", [0, 1])
def test_stdout_passthrough_split_lines_and_exit_code(tmp_path: Path, capfd, code: int) -> None:
    script = tmp_path / "s.py"
    script.write_text(SPLIT_WRITER)
    rc = run(["--", PY, str(script), str(code)], env=_env(tmp_path))
    assert rc == code
    out, err = capfd.readouterr()
    assert "epoch=2 accuracy=0.5\nnoise x=abc\n" in out and "loss=0.5" in err  # unchanged
    assert [p["step"] for p in _progress(tmp_path) if "accuracy" in p["metrics"]] == [1, 2, 3]
    term = json.loads((tmp_path / "term.json").read_text())
    assert term["metrics"] == {"accuracy": 0.75, "loss": pytest.approx(1 / 3)}


def test_file_collector_tails(tmp_path: Path) -> None:
    log = tmp_path / "metrics.log"
    script = tmp_path / "w.py"
    script.write_text(
        "import time, json\n"
        f"p = {str(log)!r}\n"
        "time.sleep(0.3)\n"  # the file does not exist at first
        "for e in range(1, 4):\n"
        "    with open(p, 'a') as f:\n"
        "        f.write(json.dumps({'epoch': e, 'val_loss': 1 / e}) + '\\n')\n"
        "    time.sleep(0.25)\n"
    )
    rc = run(
        [
            "--collector",
            "file",
            "--path",
            str(log),
            "--format",
            "json",
            "--poll",
            "0.05",
            "--",
            PY,
            str(script),
        ],
        env=_env(tmp_path),
    )
    assert rc == 0
    assert [p["epoch"] for p in _progress(tmp_path)] == [1, 2, 3]
    assert json.loads((tmp_path / "term.json").read_text())["metrics"] == {
        "val_loss": pytest.approx(1 / 3)
    }


def test_stop_request_terminates_command_and_exits_3(tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(
        "import time, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(0)))\n"
        "print('epoch=1 acc=0.5', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = _env(tmp_path)
    (tmp_path / "stop").write_text("pruned")
    rc = run(["--poll", "0.05", "--", PY, str(script)], env=env)
    assert rc == 3


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert run([], env=_env(tmp_path)) == 2
    assert run(["--collector", "file", "--", "true"], env=_env(tmp_path)) == 2
    assert run(["--pattern", "(", "--", "true"], env=_env(tmp_path)) == 2


def test_real_run_with_zipapp(tmp_path: Path) -> None:
    """`kubeforge-report -- python3 script.py --lr 0.1` yields the termination JSON."""
    pyz = zipbuild.build(tmp_path / "bin" / "kubeforge-report.pyz")
    script = tmp_path / "script.py"
    script.write_text(
        "import argparse\n"
        "ap = argparse.ArgumentParser(); ap.add_argument('--lr', type=float)\n"
        "lr = ap.parse_args().lr\n"
        "for e in range(1, 4):\n"
        "    print(f'epoch={e} accuracy={0.5 + e * lr:.2f}')\n"
    )
    env = _env(tmp_path)
    env["PYTHONPATH"] = ""  # the zipapp needs nothing installed
    proc = subprocess.run(
        ["python3", str(pyz), "--", "python3", str(script), "--lr", "0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch=3 accuracy=0.80" in proc.stdout
    text = (tmp_path / "term.json").read_text()
    assert json.loads(text) == {"metrics": {"accuracy": 0.8}, "artifacts": {}}
    assert [p["epoch"] for p in _progress(tmp_path)] == [1, 2, 3]
    # the operator parses that exact message: Succeeded, the metrics, no model
    st = _operator_status(text)
    assert st["phase"] == "Succeeded" and st["metrics"] == {"accuracy": 0.8}
    assert "artifacts" not in st


def _operator_status(message: str) -> dict:
    """The TrainingJob status the operator computes from a pod that ended with `message`."""
    from kubeforge.api.trainingjob import TrainingJobSpec, TrainingJobStatus
    from kubeforge.trainingjob.status import compute_status

    spec = {
        "image": "me/t:1",
        "command": ["python3", "script.py"],
        "metricsCollector": {"kind": "StdOut"},
    }
    obj = {"metadata": {"name": "byo", "namespace": "ml", "generation": 1}, "spec": spec}
    job = {
        "metadata": {"name": "byo"},
        "spec": {},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    pod = {
        "metadata": {
            "name": "byo-0-x",
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {"exitCode": 0, "reason": "Completed", "message": message}
                    },
                }
            ],
        },
    }
    st = compute_status(
        obj, TrainingJobSpec.model_validate(spec), job, [pod], now="2026-11-27T10:00:00Z"
    )
    TrainingJobStatus.model_validate(st)
    return st


def test_real_run_with_objective_ignores_other_name_value_text(tmp_path: Path) -> None:
    """`--metric accuracy` (what a trial gets): `Namespace(lr=0.1)` is no metric, only lines
    carrying accuracy are reports, their step the line's epoch."""
    pyz = zipbuild.build(tmp_path / "kubeforge-report.pyz")
    script = tmp_path / "script.py"
    script.write_text(
        "import argparse\n"
        "ap = argparse.ArgumentParser(); ap.add_argument('--lr', type=float)\n"
        "ns = ap.parse_args(); print(ns, flush=True)\n"
        "print('loss=2.5 warmup', flush=True)\n"
        "for e in range(1, 3):\n"
        "    print(f'epoch={e} accuracy={0.5 + e * ns.lr:.2f} loss={1 / e:.2f}', flush=True)\n"
    )
    env = _env(tmp_path)
    env["PYTHONPATH"] = ""
    proc = subprocess.run(
        ["python3", str(pyz), "--metric=accuracy", "--", "python3", str(script), "--lr", "0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Namespace(lr=0.1)" in proc.stdout
    reports = _progress(tmp_path)
    assert [(p["step"], p["metrics"]) for p in reports] == [
        (1, {"accuracy": 0.6}),
        (2, {"accuracy": 0.7}),
    ]
    text = (tmp_path / "term.json").read_text()
    assert json.loads(text) == {"metrics": {"accuracy": 0.7}, "artifacts": {}}
    st = _operator_status(text)
    assert st["phase"] == "Succeeded" and st["metrics"] == {"accuracy": 0.7}


# ------------------------------------------------------------------ in-cluster channel
class FakeEndpoint(http.server.ThreadingHTTPServer):
    """The operator's progress endpoint, as the wire format says (docs/progress-protocol.md)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], dict]] = []
        self.stop: str | None = None
        self.refuse: int | None = None
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeEndpoint

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((self.path, dict(self.headers), body))
        code = self.server.refuse or 200
        answer = {"accepted": code == 200, "stop": self.server.stop}
        if code != 200:
            answer["message"] = "slow down"
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_in_cluster_post_rate_limit_and_stop(tmp_path: Path) -> None:
    srv = FakeEndpoint()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    path = "/v1/namespaces/ns/trainingjobs/tj/progress"
    try:
        (tmp_path / "token").write_text("tok-1\n")
        ch = ProgressChannel(
            env={
                "KUBEFORGE_PROGRESS_URL": f"http://127.0.0.1:{srv.server_address[1]}{path}",
                "KUBEFORGE_PROGRESS_TOKEN_FILE": str(tmp_path / "token"),
            },
            min_interval=60,
        )
        for e in range(1, 6):
            ch.report(e, {"loss": 1.0 / e}, epoch=e)
        assert len(srv.posts) == 1  # rate-limited
        assert ch.stop_requested() is None
        (tmp_path / "token").write_text("tok-2")  # the kubelet renewed the token
        ch.flush()  # the last one is always sent
        assert len(srv.posts) == 2
        got_path, headers, body = srv.posts[-1]
        assert got_path == path
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer tok-2"
        assert body["seq"] == 5 and body["epoch"] == 5 and body["metrics"] == {"loss": 0.2}
        # 429: the report stays pending and goes with the next chance
        srv.refuse = 429
        ch.report(6, {"loss": 0.15}, force=True)
        srv.refuse = None
        ch.flush()
        assert [p[2]["seq"] for p in srv.posts[-2:]] == [6, 6]
        # 503 (a standby replica answered): likewise kept and sent again
        srv.refuse = 503
        ch.report(7, {"loss": 0.12}, force=True)
        srv.refuse = None
        ch.flush()
        assert [p[2]["seq"] for p in srv.posts[-2:]] == [7, 7]
        srv.stop = "pruned"
        ch.report(8, {"loss": 0.1}, force=True)
        assert ch.stop_requested() == "pruned"
    finally:
        srv.shutdown()
