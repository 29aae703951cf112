"""The user-script path: run the user's Python file with the reporting API configured."""

from __future__ import annotations

import os
import runpy
import shutil
import sys
import tempfile
from typing import Any

from . import _api, storage
from .config import ConfigError, TrainerConfig
from .report.channel import ProgressChannel


class ScriptResult:
    def __init__(
        self,
        code: int,
        metrics: dict[str, float | int],
        artifacts: dict[str, Any],
        stop_reason: str | None,
    ) -> None:
        self.code = code
        self.metrics = metrics
        self.artifacts = artifacts
        self.stop_reason = stop_reason


def run_script(cfg: TrainerConfig, channel: ProgressChannel | None, rank: int) -> ScriptResult:
    path = cfg.script_path or ""
    if not os.path.isfile(path):
        raise ConfigError("spec.model.script.path", f"{path} does not exist in the container")
    local_out = storage.to_fsspec(cfg.output_uri) if storage.is_local(cfg.output_uri) else None
    staging = local_out or tempfile.mkdtemp(prefix="kubeforge-output-")
    if rank != 0 and local_out is None:
        staging = tempfile.mkdtemp(prefix=f"kubeforge-output-rank{rank}-")
    _api.configure(hparams=cfg.hparams, output=staging, channel=channel, is_reporter=rank == 0)
    old_argv, old_path = sys.argv[:], sys.path[:]
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    finally:
        sys.argv, sys.path = old_argv, old_path
    if channel is not None:
        channel.flush()
    _, metrics = _api.last_report()
    artifacts: dict[str, Any] = {}
    if rank == 0:
        model = os.path.join(staging, "model.onnx")
        if os.path.isfile(model):
            with open(model, "rb") as fh:
                blob = fh.read()
            model_uri = storage.join(cfg.output_uri, "model.onnx")
            if local_out is None:  # upload everything the script wrote
                for root, _dirs, files in os.walk(staging):
                    for name in files:
                        full = os.path.join(root, name)
                        rel = os.path.relpath(full, staging).replace(os.sep, "/")
                        storage.upload_file(full, storage.join(cfg.output_uri, rel))
            artifacts = {"model": model_uri, "sha256": storage.sha256(blob), "bytes": len(blob)}
        if local_out is None:
            shutil.rmtree(staging, ignore_errors=True)
    reason = _api.stop_reason()
    return ScriptResult(code, metrics, artifacts, reason)
