"""Server settings: command-line flags with environment fallbacks, and cgroup-aware CPU count."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

EXECUTION_PROVIDERS = ("cpu", "cuda", "tensorrt")
GRAPH_OPT_LEVELS = ("disabled", "basic", "extended", "layout", "all")


class ConfigError(ValueError):
    """A bad flag or environment value (exit code 2)."""


@dataclass(frozen=True)
class ServerConfig:
    model_uri: str
    name: str
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081  # 0 disables gRPC
    max_batch_size: int = 32  # <= 1 disables dynamic batching
    max_delay_ms: float = 2.0
    execution_provider: str = "cpu"
    intra_op_threads: int = 0  # 0 = from the cgroup CPU quota
    inter_op_threads: int = 1
    graph_opt_level: str = "all"
    allow_spinning: bool = False
    trt_cache_dir: str = "/tmp/kubeforge-trt-cache"
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_bytes: int = 2 * 1024 * 1024
    max_request_rows: int = 1024
    max_queue: int = 256
    max_connections: int = 1000
    max_buffered_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 65.0
    drain_seconds: float = 25.0
    model_cache_dir: str = "/tmp/kubeforge-model"
    pvc_root: str = "/mnt/pvc"
    termination_log: str = "/dev/termination-log"
    log_level: str = "INFO"
    shadow_url: str = ""  # empty: no shadow mirroring
    shadow_percent: float = 100.0
    shadow_tolerance: float = 1e-3
    shadow_queue: int = 64
    shadow_concurrency: int = 4
    shadow_timeout: float = 5.0
    shadow_budget: float = 0.05

    @property
    def effective_intra_op_threads(self) -> int:
        return self.intra_op_threads if self.intra_op_threads > 0 else cpu_count()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(controller: str, root: Path, proc_cgroup: Path) -> list[Path]:
    """Candidate cgroup directories of this process for a v1 controller (or v2 when '')."""
    dirs: list[Path] = []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controller == "" and controllers == "":
            dirs.append(root / rel)
        elif controller and controller in controllers.split(","):
            for mount in (controllers, "cpu,cpuacct", "cpu", "cpuacct,cpu"):
                dirs.append(root / mount / rel)
    if controller:
        dirs += [root / "cpu,cpuacct", root / "cpu"]
    else:
        dirs.append(root)
    return dirs


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs allowed by the cgroup CFS quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    for d in _cgroup_dirs("", root, proc_cgroup):
        text = _read(d / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota == "max":
                break
            try:
                return int(quota) / int(period or "100000")
            except ValueError:
                break
    for d in _cgroup_dirs("cpu", root, proc_cgroup):
        quota_s = _read(d / "cpu.cfs_quota_us")
        period_s = _read(d / "cpu.cfs_period_us")
        if quota_s is None or period_s is None:
            continue
        try:
            quota, period = int(quota_s), int(period_s)
        except ValueError:
            continue
        if quota > 0 and period > 0:
            return quota / period
        break
    return None


def cpu_count() -> int:
    """CPUs this process may use: the cgroup quota (rounded up), capped by the affinity mask."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(limit - 1e-9)))


def default_model_name(uri: str) -> str:
    """The file's stem, or the folder's name for a folder URI."""
    path = uri.split("://", 1)[-1].rstrip("/")
    last = path.rsplit("/", 1)[-1] or "model"
    if last.endswith(".onnx"):
        last = last[: -len(".onnx")]
    return last or "model"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None


# Every resource limit: flag, type, help. The dataclass field is the flag's name with underscores,
# the environment fallback KUBEFORGE_ + the field in capitals; defaults live on ServerConfig.
LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    (
        "--max-request-bytes",
        int,
        "largest request body; larger gets 413, gRPC RESOURCE_EXHAUSTED (default 64 MiB)",
    ),
    (
        "--max-json-bytes",
        int,
        "largest JSON part of a request (parsing JSON holds the interpreter); larger gets 413 "
        "pointing at the binary tensor extension (default 2 MiB)",
    ),
    (
        "--max-request-rows",
        int,
        "largest leading (batch) dimension one request may carry; larger gets 400 (default 1024)",
    ),
    (
        "--max-queue",
        int,
        "requests queued or running per model; more get 503 + Retry-After, gRPC "
        "RESOURCE_EXHAUSTED (default 256)",
    ),
    (
        "--max-connections",
        int,
        "open HTTP connections; more are answered 503 and closed (default 1000)",
    ),
    (
        "--max-buffered-bytes",
        int,
        "request bytes held in memory across all connections; a body that does not fit gets "
        "503 + Retry-After (default 256 MiB)",
    ),
    (
        "--max-header-bytes",
        int,
        "request line and headers of one request; more gets 431 (default 64 KiB)",
    ),
    (
        "--header-timeout",
        float,
        "seconds to receive a request's headers once it started; then 408 and close (default 10)",
    ),
    (
        "--body-timeout",
        float,
        "seconds to receive a request's body after its headers; then 408 and close (default 60)",
    ),
    (
        "--keepalive-timeout",
        float,
        "seconds an idle keep-alive connection stays open (default 65)",
    ),
)


# Shadow mirroring (a progressive rollout's shadow step; see kubeforge_server.shadow): flag, type,
# help. Environment fallback KUBEFORGE_ + the field in capitals, as for the limits.
SHADOW_FLAGS: tuple[tuple[str, type, str], ...] = (
    (
        "--shadow-url",
        str,
        "base URL of a candidate server to mirror answered requests to, off the request path "
        "(default: none)",
    ),
    ("--shadow-percent", float, "share of answered requests mirrored, 0-100 (default 100)"),
    (
        "--shadow-tolerance",
        float,
        "largest absolute difference for which non-classifier outputs agree (default 0.001)",
    ),
    (
        "--shadow-queue",
        int,
        "copies waiting to be mirrored; more are dropped and counted (default 64)",
    ),
    ("--shadow-concurrency", int, "copies in flight to the candidate at once (default 4)"),
    ("--shadow-timeout", float, "seconds a mirrored request may take (default 5)"),
    (
        "--shadow-budget",
        float,
        "share of the event loop's time the mirror's own work may take, 0-1; beyond it copies "
        "are dropped (default 0.05)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeforge-server",
        description="Serve an ONNX model over the Open Inference Protocol (KServe v2), HTTP and gRPC.",
    )
    p.add_argument(
        "--model",
        help="model URI: file, folder with model.onnx, pvc://, s3://, gs:// ... "
        "(env KUBEFORGE_MODEL_URI)",
    )
    p.add_argument("--name", help="served model name (default: the file stem / folder name)")
    p.add_argument("--host", help="bind address (default 0.0.0.0; env KUBEFORGE_HOST)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8081; 0 disables)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="dynamic batching: max rows per run "
        "(default 32; 1 disables; env KUBEFORGE_MAX_BATCH_SIZE)",
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        help="dynamic batching: max queueing delay (default 2; env KUBEFORGE_MAX_DELAY_MS)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        help="grace period on SIGTERM (default 25; env KUBEFORGE_DRAIN_SECONDS)",
    )
    for flag, kind, help_text in LIMIT_FLAGS:
        p.add_argument(flag, type=kind, help=help_text)
    for flag, kind, help_text in SHADOW_FLAGS:
        p.add_argument(flag, type=kind, help=help_text)
    p.add_argument("--log-level", help="logging level (default INFO)")
    return p


def load_config(argv: list[str] | None = None) -> ServerConfig:
    """Flags first, then ``KUBEFORGE_*`` environment, then defaults. Raises ConfigError."""
    args = build_parser().parse_args(argv)
    uri = args.model or os.environ.get("KUBEFORGE_MODEL_URI", "")
    if not uri:
        raise ConfigError("--model URI is required (or env KUBEFORGE_MODEL_URI)")
    ep = _env("KUBEFORGE_EXECUTION_PROVIDER", "cpu").lower()
    if ep not in EXECUTION_PROVIDERS:
        raise ConfigError(
            f"KUBEFORGE_EXECUTION_PROVIDER: expected one of {EXECUTION_PROVIDERS}, got {ep!r}"
        )
    opt = _env("KUBEFORGE_GRAPH_OPT_LEVEL", "all").lower()
    opt = {"0": "disabled", "1": "basic", "2": "extended", "3": "layout", "99": "all"}.get(opt, opt)
    if opt not in GRAPH_OPT_LEVELS:
        raise ConfigError(
            f"KUBEFORGE_GRAPH_OPT_LEVEL: expected one of {GRAPH_OPT_LEVELS}, got {opt!r}"
        )

    def pick_int(flag: int | None, env: str, default: int) -> int:
        return flag if flag is not None else _int(env, _env(env, str(default)))

    def pick_float(flag: float | None, env: str, default: float) -> float:
        return flag if flag is not None else _float(env, _env(env, str(default)))

    defaults = ServerConfig(model_uri="", name="")
    limits: dict[str, int | float] = {}
    for flag, kind, _ in LIMIT_FLAGS:
        field = flag[2:].replace("-", "_")
        value = getattr(args, field)
        if value is None:
            env = "KUBEFORGE_" + field.upper()
            text = _env(env, str(getattr(defaults, field)))
            value = _int(env, text) if kind is int else _float(env, text)
        limits[field] = value
    shadow: dict[str, str | int | float] = {}
    for flag, kind, _ in SHADOW_FLAGS:
        field = flag[2:].replace("-", "_")
        value = getattr(args, field)
        if value is None:
            env = "KUBEFORGE_" + field.upper()
            text = _env(env, str(getattr(defaults, field)))
            value = text if kind is str else _int(env, text) if kind is int else _float(env, text)
        shadow[field] = value

    cfg = ServerConfig(
        model_uri=uri,
        name=args.name or os.environ.get("KUBEFORGE_MODEL_NAME") or default_model_name(uri),
        host=args.host or _env("KUBEFORGE_HOST", "0.0.0.0"),
        http_port=pick_int(args.http_port, "KUBEFORGE_HTTP_PORT", 8080),
        grpc_port=pick_int(args.grpc_port, "KUBEFORGE_GRPC_PORT", 8081),
        max_batch_size=pick_int(args.max_batch_size, "KUBEFORGE_MAX_BATCH_SIZE", 32),
        max_delay_ms=pick_float(args.max_delay_ms, "KUBEFORGE_MAX_DELAY_MS", 2.0),
        execution_provider=ep,
        intra_op_threads=_int(
            "KUBEFORGE_INTRA_OP_THREADS", _env("KUBEFORGE_INTRA_OP_THREADS", "0")
        ),
        inter_op_threads=_int(
            "KUBEFORGE_INTER_OP_THREADS", _env("KUBEFORGE_INTER_OP_THREADS", "1")
        ),
        graph_opt_level=opt,
        allow_spinning=_env("KUBEFORGE_ALLOW_SPINNING", "0").lower() in ("1", "true", "yes"),
        trt_cache_dir=_env("KUBEFORGE_TRT_CACHE_DIR", "/tmp/kubeforge-trt-cache"),
        **limits,
        drain_seconds=pick_float(args.drain_seconds, "KUBEFORGE_DRAIN_SECONDS", 25.0),
        model_cache_dir=_env("KUBEFORGE_MODEL_CACHE_DIR", "/tmp/kubeforge-model"),
        pvc_root=_env("KUBEFORGE_PVC_ROOT", "/mnt/pvc"),
        termination_log=_env("KUBEFORGE_TERMINATION_LOG", "/dev/termination-log"),
        log_level=(args.log_level or _env("KUBEFORGE_LOG_LEVEL", "INFO")).upper(),
        **shadow,  # type: ignore[arg-type]
    )
    for field, value in (("--http-port", cfg.http_port), ("--grpc-port", cfg.grpc_port)):
        if not 0 <= value <= 65535:
            raise ConfigError(f"{field}: {value} is not a port")
    if cfg.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size: must be >= 1, got {cfg.max_batch_size}")
    if cfg.max_delay_ms < 0 or cfg.drain_seconds < 0:
        raise ConfigError("--max-delay-ms and --drain-seconds must be >= 0")
    if cfg.max_request_bytes < 1024:
        raise ConfigError("--max-request-bytes: must be at least 1024")
    if cfg.max_json_bytes < 1024:
        raise ConfigError("--max-json-bytes: must be at least 1024")
    if cfg.max_buffered_bytes < cfg.max_request_bytes:
        raise ConfigError("--max-buffered-bytes: must be at least --max-request-bytes")
    if cfg.max_json_bytes > cfg.max_request_bytes:  # the body limit bounds its JSON part too
        cfg = dataclasses.replace(cfg, max_json_bytes=cfg.max_request_bytes)
    if cfg.max_header_bytes < 1024:
        raise ConfigError("--max-header-bytes: must be at least 1024")
    for name, number in (
        ("--max-request-rows", cfg.max_request_rows),
        ("--max-queue", cfg.max_queue),
        ("--max-connections", cfg.max_connections),
    ):
        if number < 1:
            raise ConfigError(f"{name}: must be >= 1, got {number}")
    for name, seconds in (
        ("--header-timeout", cfg.header_timeout),
        ("--body-timeout", cfg.body_timeout),
        ("--keepalive-timeout", cfg.keepalive_timeout),
    ):
        if not seconds > 0:
            raise ConfigError(f"{name}: must be > 0, got {seconds}")
    if cfg.shadow_url and not cfg.shadow_url.startswith("http://"):
        raise ConfigError(f"--shadow-url: expected an http:// URL, got {cfg.shadow_url!r}")
    if not 0 <= cfg.shadow_percent <= 100:
        raise ConfigError(f"--shadow-percent: must be within 0-100, got {cfg.shadow_percent}")
    if cfg.shadow_tolerance < 0:
        raise ConfigError(f"--shadow-tolerance: must be >= 0, got {cfg.shadow_tolerance}")
    for name, number in (
        ("--shadow-queue", cfg.shadow_queue),
        ("--shadow-concurrency", cfg.shadow_concurrency),
    ):
        if number < 1:
            raise ConfigError(f"{name}: must be >= 1, got {number}")
    if not 0 < cfg.shadow_budget <= 1:
        raise ConfigError(f"--shadow-budget: must be within (0, 1], got {cfg.shadow_budget}")
    if not cfg.shadow_timeout > 0:
        raise ConfigError(f"--shadow-timeout: must be > 0, got {cfg.shadow_timeout}")
    if cfg.intra_op_threads < 0 or cfg.inter_op_threads < 0:
        raise ConfigError("KUBEFORGE_INTRA_OP_THREADS / KUBEFORGE_INTER_OP_THREADS must be >= 0")
    return cfg
