"""Serving cost of an ONNX model, measured with ONNX Runtime on this process's CPU quota.

``measure(model)`` returns ``onnx_latency_ms`` (median of batch-1 runs after a warm-up),
``onnx_bytes`` (the serialized model) and ``onnx_params`` (elements of the graph's initializers).
Importable with the standard library alone (it ships in the ``kubeforge-report`` zipapp):
onnxruntime, numpy and onnx are imported only when a measurement runs, and a missing one raises
:class:`CostUnavailable` with a message that names the package to install.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any

#: runs before timing starts: the first runs allocate buffers and pick kernels
WARMUP_RUNS = 10
#: timed batch-1 runs (fewer when ``max_seconds`` runs out first, never fewer than MIN_RUNS)
TIMED_RUNS = 200
MIN_RUNS = 20


class CostUnavailable(RuntimeError):
    """The model cannot be measured here (a package is missing, or the model will not load)."""


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Whole CPUs this process may use: the cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us``) limit,
    else the CPUs it is pinned to. ONNX Runtime would otherwise start one thread per core of the
    node, which in a pod with a 1-CPU limit measures throttling, not the model."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota: float | None = None
    try:
        with open(os.path.join(cgroup_root, "cpu.max"), encoding="ascii") as fh:
            limit, period = fh.read().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as fh:
                q = int(fh.read().strip())
            with open(
                os.path.join(cgroup_root, "cpu", "cpu.cfs_period_us"), encoding="ascii"
            ) as fh:
                p = int(fh.read().strip())
            if q > 0 and p > 0:
                quota = q / p
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _require(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CostUnavailable(
            f"measuring the ONNX model needs the Python package {name!r}, which is not installed "
            f"in this image (pip install {name})"
        ) from exc


def count_params(model: bytes | str) -> int:
    """Elements in the main graph's initializers (weights, biases, quantization scales)."""
    onnx = _require("onnx")
    if isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:  # external data files hold values only: the dimensions are in the model file
        proto = onnx.load(model, load_external_data=False)
    total = 0
    for init in proto.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        total += n
    return total


def _sample(session: Any, np: Any, sample: Any | None) -> dict[str, Any]:
    """Batch-1 feeds: the caller's sample, else seeded noise of each input's shape and type
    (symbolic dimensions become 1)."""
    kinds = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(float16)": np.float16,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }
    inputs = session.get_inputs()
    if sample is not None:
        if len(inputs) != 1:
            raise CostUnavailable(f"a sample was given but the model has {len(inputs)} inputs")
        arr = np.asarray(sample)
        return {inputs[0].name: np.ascontiguousarray(arr[:1], dtype=kinds[inputs[0].type])}
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in inputs:
        dtype = kinds.get(inp.type)
        if dtype is None:
            raise CostUnavailable(f"input {inp.name!r} has type {inp.type}, which is not measured")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def latency_ms(
    model: bytes | str,
    sample: Any | None = None,
    *,
    threads: int | None = None,
    warmup: int = WARMUP_RUNS,
    runs: int = TIMED_RUNS,
    max_seconds: float = 3.0,
) -> float:
    """Median wall time of one batch-1 ``session.run`` in milliseconds, after ``warmup`` runs."""
    ort = _require("onnxruntime")
    np = _require("numpy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_quota()
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CostUnavailable(f"ONNX Runtime cannot load the model: {exc}") from exc
    feeds = _sample(sess, np, sample)
    for _ in range(warmup):
        sess.run(None, feeds)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


#: runs of one model before the other takes its turn (latency_in_turns)
TURN_RUNS = 20


def latency_in_turns(
    models: list[bytes],
    sample: Any | None = None,
    *,
    threads: int | None = None,
    runs: int = TIMED_RUNS,
    max_seconds: float = 6.0,
) -> list[float]:
    """Median batch-1 latency (ms) of each model, the models taking turns (TURN_RUNS runs each)
    until each has ``runs`` timed runs: whatever else the node does then weighs on all of them
    alike, so their ratio holds where latencies measured one after the other drift apart
    (measured on a shared machine: 0.72x to 1.94x for the same int8/float pair)."""
    ort = _require("onnxruntime")
    np = _require("numpy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_quota()
    opts.inter_op_num_threads = 1
    try:
        sessions = [
            ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]) for m in models
        ]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CostUnavailable(f"ONNX Runtime cannot load the model: {exc}") from exc
    feeds = [_sample(sess, np, sample) for sess in sessions]
    for sess, feed in zip(sessions, feeds, strict=True):
        for _ in range(WARMUP_RUNS):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in models]
    deadline = time.perf_counter() + max_seconds
    while len(times[0]) < runs and (len(times[0]) < MIN_RUNS or time.perf_counter() < deadline):
        for sess, feed, out in zip(sessions, feeds, times, strict=True):
            for _ in range(TURN_RUNS):
                t0 = time.perf_counter()
                sess.run(None, feed)
                out.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1000.0 for t in times]


def measure(
    model: bytes | str | os.PathLike[str],
    sample: Any | None = None,
    *,
    prefix: str = "onnx_",
    threads: int | None = None,
) -> dict[str, float]:
    """``{prefix}latency_ms``, ``{prefix}bytes``, ``{prefix}params`` of a model (bytes or a path;
    ``onnx_bytes`` is the model file's size, external data files not included)."""
    source: bytes | str
    if isinstance(model, bytes):
        source, size = model, len(model)
    else:  # a path: ONNX Runtime then finds external data files beside it
        source = os.fspath(model)
        try:
            size = os.path.getsize(source)
        except OSError as exc:
            raise CostUnavailable(f"cannot read {source}: {exc.strerror}") from exc
    return {
        f"{prefix}latency_ms": latency_ms(source, sample, threads=threads),
        f"{prefix}bytes": size,
        f"{prefix}params": count_params(source),
    }
