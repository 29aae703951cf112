"""Serving benchmark: kubeforge-server vs KServe's Python ModelServer vs bare session.run.

The model is the MLP 64→256→256→10 built here (seeded). wrk drives batch-1 Open Inference
Protocol requests (JSON, and the binary tensor extension) at 1, 16 and 64 connections against:

  (a) kubeforge-server with dynamic batching on (max 32 rows, 2 ms) and off (max 1),
  (b) with `--before REV`: the same two as they were at git revision REV (extracted to a temp
      folder), so before/after figures come from one run on one machine,
  (c) KServe 0.21's ModelServer with a custom ONNX model (async predict, one worker, no access or
      latency log), run from the bench venv (default ~/.cache/kubeforge/bench-venv; made on demand
      with `--make-venv`, skipped if missing),
  (d) onnxruntime's session.run in this process (calls/s, p50, p99),
  (e) the floor of each HTTP stack: a do-nothing server answering every POST with a fixed body,
      on kubeforge's own httptools protocol and on uvicorn (httptools + uvloop, raw ASGI app,
      from the bench venv) -- what the HTTP layer alone costs, the figure behind the choice of
      HTTP server,
  (f) a heavier MLP (64→4096→2048→10, batch-1 run >= 1 ms) with batching on and off at 64
      connections: dynamic batching where the model, not HTTP, dominates.

Prints one table and the target ratios, all measured in the same run:
  - kubeforge req/s / KServe req/s at batch-1 JSON, 16 connections        (target >= 10x)
  - kubeforge p50 at 1 connection - bare session.run p50                  (target <= 0.2 ms)
  - kubeforge rows/s with batching / without, 64 connections              (target >= 2x on the
    heavy model; reported for the small MLP too)

Usage: python benchmarks/bench_server.py [--duration 5] [--no-kserve] [--connections 1,16,64]
       [--before REV]
Needs `wrk` (Debian package wrk). Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np

BENCH_VENV = Path(
    os.environ.get("KUBEFORGE_BENCH_VENV", Path.home() / ".cache/kubeforge/bench-venv")
)
MODEL_NAME = "mlp"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"

KSERVE_SERVER = textwrap.dedent(
    '''
    """KServe 0.21 ModelServer with a custom ONNX model: async predict, one worker, quiet logs."""
    import logging, sys
    import onnxruntime as ort
    import uvicorn
    import kserve.protocol.rest.server as rest_server
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.utils.utils import generate_uuid

    _config = uvicorn.Config
    def _loopback_config(*args, **kwargs):  # kserve binds 0.0.0.0; the bench stays on loopback
        kwargs["host"] = "127.0.0.1"
        return _config(*args, **kwargs)
    rest_server.uvicorn.Config = _loopback_config

    class OnnxMLP(Model):
        def __init__(self, name, path, threads):
            super().__init__(name)
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.ready = True

        async def predict(self, payload: InferRequest, headers=None, response_headers=None):
            x = payload.inputs[0].as_numpy()
            y = self.session.run(None, {"input": x})[0]
            out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or generate_uuid(),
                                 use_binary_outputs=payload.use_binary_outputs)

    if __name__ == "__main__":
        path, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        sys.argv = [sys.argv[0], "--http_port", str(port), "--workers", "1", "--enable_grpc", "false",
                    "--enable_latency_logging", "false", "--enable_docs_url", "false"]
        server = ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False,
                             enable_docs_url=False)
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).disabled = True
        logging.getLogger("kserve").setLevel(logging.WARNING)
        server.start([OnnxMLP("mlp", path, threads)])
    '''
)

# A do-nothing server on kubeforge's HTTP stack: every request gets the same small JSON answer.
OURS_FLOOR = textwrap.dedent(
    """
    import asyncio, sys
    import uvloop
    from kubeforge_server.dataplane import DataPlane
    from kubeforge_server.http_app import HttpApp
    from kubeforge_server.metrics import Metrics

    BODY = b'{"model_name":"mlp","model_version":"1","outputs":[{"name":"output","datatype":"FP32","shape":[1,10],"data":[0,0,0,0,0,0,0,0,0,0]}]}'

    class Floor(HttpApp):
        def dispatch(self, conn, seq, method, url, body, header_length, t0):
            conn.respond(seq, 200, BODY)

    async def main(port):
        app = Floor(DataPlane(Metrics()), Metrics())
        loop = asyncio.get_running_loop()
        await loop.create_server(app.protocol_factory, "127.0.0.1", port, backlog=4096)
        app.start_timer(loop)
        await asyncio.Event().wait()

    uvloop.run(main(int(sys.argv[1])))
    """
)

# The same on uvicorn (httptools protocol, uvloop) with a raw ASGI app: no framework at all.
UVICORN_FLOOR = textwrap.dedent(
    """
    import sys
    import uvicorn

    BODY = b'{"model_name":"mlp","model_version":"1","outputs":[{"name":"output","datatype":"FP32","shape":[1,10],"data":[0,0,0,0,0,0,0,0,0,0]}]}'
    HEADERS = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                log_level="warning", access_log=False, lifespan="off")
    """
)

WRK_LUA = textwrap.dedent(
    """
    -- POST the same v2 request body (JSON or binary) on every call.
    local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
    wrk.method = "POST"
    wrk.body = f:read("*a")
    f:close()
    wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
    local hl = os.getenv("BENCH_HEADER_LENGTH")
    if hl ~= nil and hl ~= "" then
      wrk.headers["Inference-Header-Content-Length"] = hl
    end
    """
)


def build_mlp(path: Path, seed: int = 0, dims: tuple[int, ...] = (64, 256, 256, 10)) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        last = i == len(dims) - 2
        out = "output" if last else f"h{i}"
        nodes.append(
            helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out if last else out + "_pre"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        cur = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def bodies(tmp: Path) -> dict[str, tuple[Path, str, str]]:
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    doc = {
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    (tmp / "json.body").write_bytes(json.dumps(doc).encode())
    raw = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    (tmp / "binary.body").write_bytes(head + raw)
    return {
        "json": (tmp / "json.body", "application/json", ""),
        "binary": (tmp / "binary.body", "application/octet-stream", str(len(head))),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready", timeout=1
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int, body: tuple[Path, str, str], conns: int, duration: float, lua: Path, pid: int = 0
) -> dict[str, float]:
    env = {
        **os.environ,
        "BENCH_BODY": str(body[0]),
        "BENCH_CTYPE": body[1],
        "BENCH_HEADER_LENGTH": body[2],
    }
    # Warm the connections, then measure.
    subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            "-d1s",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}{INFER_PATH}",
        ],
        env=env,
        capture_output=True,
        check=False,
    )
    cpu0 = cpu_seconds(pid) if pid else float("nan")
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}{INFER_PATH}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "cpu_us": cpu / total * 1e6 if total else float("nan"),
        "socket_errors": 1.0 if errors else 0.0,
    }


def bare_session_run(model_path: Path, threads: int, seconds: float = 2.0) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    x = {"input": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
    for _ in range(500):
        sess.run(None, x)
    times = []
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        t = clock()
        sess.run(None, x)
        times.append(clock() - t)
    times.sort()
    x32 = {"input": np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)}
    n32, t = 0, clock()
    while clock() - t < 1.0:
        sess.run(None, x32)
        n32 += 1
    return {
        "rps": len(times) / sum(times),
        "p50": statistics.median(times),
        "p99": times[int(len(times) * 0.99)],
        "rows32": n32 * 32 / (clock() - t),
    }


def ensure_bench_venv(make: bool) -> Path | None:
    python = BENCH_VENV / "bin" / "python"
    if python.exists():
        return python
    if not make:
        return None
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "kserve==0.21.0", "onnxruntime", "numpy"],
        check=True,
    )
    return python


def extract_revision(rev: str, dest: Path) -> Path:
    """server-image/ as it was at git revision ``rev`` (for before/after in one run)."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "server-image"], capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "server-image"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "5")))
    ap.add_argument("--connections", default="1,16,64")
    ap.add_argument("--no-kserve", action="store_true")
    ap.add_argument("--before", default="", help="git revision to measure as 'before' as well")
    ap.add_argument(
        "--make-venv",
        action="store_true",
        help=f"create {BENCH_VENV} with kserve==0.21.0 if missing",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads for every contender"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk); skipping the serving benchmark")
        return 0
    conns = [int(c) for c in args.connections.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    model = build_mlp(tmp / f"{MODEL_NAME}.onnx")
    heavy_dir = tmp / "heavy"
    heavy_dir.mkdir()
    heavy = build_mlp(heavy_dir / f"{MODEL_NAME}.onnx", dims=(64, 4096, 2048, 10))
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA)
    body = bodies(tmp)
    rows: list[tuple[str, str, int, dict[str, float]]] = []

    bare = bare_session_run(model, args.threads)
    bare_heavy = bare_session_run(heavy, args.threads)
    for label, b in (("MLP", bare), ("heavy MLP", bare_heavy)):
        print(
            f"bare session.run {label} batch 1: {b['rps']:.0f} calls/s, p50 {b['p50'] * 1e6:.1f} us,"
            f" p99 {b['p99'] * 1e6:.1f} us; batch 32: {b['rows32']:.0f} rows/s",
            flush=True,
        )

    def contender(
        label: str,
        cmd: list[str],
        port: int,
        env: dict[str, str],
        kinds: tuple[str, ...] = ("json", "binary"),
        counts: list[int] = conns,
    ) -> None:
        log = (tmp / f"{label}.log").open("wb")
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        try:
            wait_ready(port, proc)
            for kind in kinds:
                for c in counts:
                    r = run_wrk(port, body[kind], c, args.duration, lua, proc.pid)
                    rows.append((label, kind, c, r))
                    print(
                        f"  {label:28s} {kind:6s} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50'] * 1e3:7.3f} ms  "
                        f"p99 {r['p99'] * 1e3:7.3f} ms  cpu {r['cpu_us']:6.1f} us/req"
                        + (f"  NON-2XX {r['non2xx']:.0f}" if r["non2xx"] else ""),
                        flush=True,
                    )
        finally:
            stop(proc)

    def kubeforge(
        model_path: Path, batch: str, source: Path | None = None
    ) -> tuple[list[str], int, dict[str, str]]:
        port = free_port()
        env = {"KUBEFORGE_INTRA_OP_THREADS": str(args.threads)}
        if source is not None:
            env["PYTHONPATH"] = f"{source}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        cmd = [
            sys.executable, "-m", "kubeforge_server", "--model", str(model_path),
            "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(free_port()),
            "--max-batch-size", batch, "--max-delay-ms", "2", "--log-level", "WARNING",
        ]  # fmt: skip
        return cmd, port, env

    versions: list[tuple[str, Path | None]] = [("kubeforge", None)]
    if args.before:
        versions.insert(
            0, (f"before {args.before[:10]}", extract_revision(args.before, tmp / "before"))
        )
    for name, source in versions:
        for label, batch in ((f"{name} batching", "32"), (f"{name} no batching", "1")):
            contender(label, *kubeforge(model, batch, source))
    for name, source in versions:
        for label, batch in ((f"{name} heavy batching", "32"), (f"{name} heavy no batching", "1")):
            contender(label, *kubeforge(heavy, batch, source), kinds=("json",), counts=[64])

    port = free_port()
    script = tmp / "ours_floor.py"
    script.write_text(OURS_FLOOR)
    contender(
        "floor: kubeforge HTTP", [sys.executable, str(script), str(port)], port, {},
        kinds=("json",), counts=[c for c in conns if c <= 16],
    )  # fmt: skip
    kserve_python = None if args.no_kserve else ensure_bench_venv(args.make_venv)
    if kserve_python is not None:
        port = free_port()
        script = tmp / "uvicorn_floor.py"
        script.write_text(UVICORN_FLOOR)
        contender(
            "floor: uvicorn httptools", [str(kserve_python), str(script), str(port)], port, {},
            kinds=("json",), counts=[c for c in conns if c <= 16],
        )  # fmt: skip
        script = tmp / "kserve_server.py"
        script.write_text(KSERVE_SERVER)
        port = free_port()
        contender(
            "kserve 0.21 ModelServer",
            [str(kserve_python), str(script), str(model), str(port), str(args.threads)],
            port,
            {},
        )
    elif not args.no_kserve:
        print(f"(KServe and uvicorn skipped: no bench venv at {BENCH_VENV}; run with --make-venv)")

    # -- table --------------------------------------------------------------------------------------
    print()
    print(
        f"{'server':32s} {'body':6s} {'conns':>5s} {'req/s (=rows/s)':>16s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'server CPU us/req':>18s}"
    )
    print("-" * 99)
    for label, b in (("bare session.run MLP", bare), ("bare session.run heavy MLP", bare_heavy)):
        print(
            f"{label:32s} {'-':6s} {'-':>5s} {b['rps']:16.0f} {b['p50'] * 1e3:8.3f} "
            f"{b['p99'] * 1e3:8.3f} {1e6 / b['rps']:18.1f}"
        )
    for label, kind, c, r in rows:
        flag = "  (non-2xx!)" if r["non2xx"] else ""
        print(
            f"{label:32s} {kind:6s} {c:5d} {r['rps']:16.0f} {r['p50'] * 1e3:8.3f} {r['p99'] * 1e3:8.3f} "
            f"{r['cpu_us']:18.1f}{flag}"
        )

    def get(label: str, kind: str, c: int) -> dict[str, float] | None:
        for lab, k, cc, r in rows:
            if lab == label and k == kind and cc == c:
                return r
        return None

    print()
    print("targets (ratios from this run):")
    for name, _ in versions:
        print(f"  [{name}]")
        ours16 = get(f"{name} batching", "json", 16)
        ks16 = get("kserve 0.21 ModelServer", "json", 16)
        if ours16 and ks16:
            ratio = ours16["rps"] / ks16["rps"]
            print(
                f"    req/s vs KServe, JSON batch 1, 16 conns: {ratio:6.1f}x  (target >= 10x) "
                f"{'OK' if ratio >= 10 else 'MISSED'}"
            )
            ksb = get("kserve 0.21 ModelServer", "binary", 16)
            oursb = get(f"{name} batching", "binary", 16)
            if ksb and oursb:
                print(
                    f"    req/s vs KServe, binary batch 1, 16 conns: {oursb['rps'] / ksb['rps']:6.1f}x"
                )
        one = get(f"{name} batching", "json", 1)
        one_off = get(f"{name} no batching", "json", 1)
        if one:
            over = (one["p50"] - bare["p50"]) * 1e3
            print(
                f"    p50 at 1 conn above bare session.run: batching {over:6.3f} ms"
                + (
                    f", no batching {(one_off['p50'] - bare['p50']) * 1e3:6.3f} ms"
                    if one_off
                    else ""
                )
                + f"  (target <= 0.2 ms) {'OK' if over <= 0.2 else 'MISSED'}"
            )
        for kind in ("json", "binary"):
            on, off = get(f"{name} batching", kind, 64), get(f"{name} no batching", kind, 64)
            if on and off:
                print(
                    f"    MLP rows/s batching on / off, {kind}, 64 conns: {on['rps'] / off['rps']:5.2f}x;"
                    f" server CPU per row {off['cpu_us'] / on['cpu_us']:5.2f}x less"
                )
        on, off = (
            get(f"{name} heavy batching", "json", 64),
            get(f"{name} heavy no batching", "json", 64),
        )
        if on and off:
            ratio = on["rps"] / off["rps"]
            print(
                f"    heavy MLP (batch-1 run {bare_heavy['p50'] * 1e3:.2f} ms) rows/s batching on / off,"
                f" JSON, 64 conns: {ratio:5.2f}x  (target >= 2x) {'OK' if ratio >= 2 else 'MISSED'}"
            )
    for c in conns:
        f_ours, f_uv = (
            get("floor: kubeforge HTTP", "json", c),
            get("floor: uvicorn httptools", "json", c),
        )
        if f_ours and f_uv:
            print(
                f"  HTTP floor, {c} conns: kubeforge {f_ours['rps']:.0f} req/s p50 {f_ours['p50'] * 1e3:.3f} ms"
                f" {f_ours['cpu_us']:.1f} us/req; uvicorn {f_uv['rps']:.0f} req/s p50 {f_uv['p50'] * 1e3:.3f} ms"
                f" {f_uv['cpu_us']:.1f} us/req; ratio {f_ours['rps'] / f_uv['rps']:.2f}x"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
