"""``kubeforge-trainer --job FILE`` (or env ``KUBEFORGE_JOB``): the built-in trainer.

Exit codes: 0 ok, 1 error, 2 bad job document, 3 stopped (pruned), 143 terminated (SIGTERM:
checkpoint saved; the Job's retry resumes from it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from . import _api
from .config import ConfigError, load_document, resolve
from .report.channel import ProgressChannel, termination_message, write_termination_message

EXIT_OK, EXIT_ERROR, EXIT_BAD_CONFIG, EXIT_STOPPED, EXIT_TERMINATED = 0, 1, 2, 3, 143


def _err(msg: str) -> None:
    print(f"kubeforge-trainer: {msg}", file=sys.stderr, flush=True)


def _finish(
    cfg_output: str,
    metrics: dict[str, Any],
    artifacts: dict[str, Any],
    *,
    write_metrics_json: bool = True,
) -> None:
    """metrics.json beside the model, and the termination message."""
    from . import storage

    text = termination_message(metrics, artifacts)
    if write_metrics_json:
        try:
            storage.write_bytes(storage.join(cfg_output, "metrics.json"), text.encode())
        except Exception as exc:
            _err(f"cannot write metrics.json: {exc}")
    write_termination_message(metrics, artifacts)
    print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubeforge-trainer", description=__doc__.split("\n")[0])
    p.add_argument(
        "--job",
        default=None,
        help="TrainingJob document (YAML or JSON); default: the env var KUBEFORGE_JOB",
    )
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve(load_document(args.job))
    except ConfigError as exc:
        _err(f"bad job document: {exc}")
        return EXIT_BAD_CONFIG

    def on_term(_signum: int, _frame: Any) -> None:
        # The loop finishes its current step, saves a checkpoint and exits 143; a user script
        # sees should_stop() == True.
        _api._state.terminated.set()

    signal.signal(signal.SIGTERM, on_term)
    rank = int(os.environ.get("RANK", "0"))
    channel = ProgressChannel() if rank == 0 else None
    try:
        if cfg.script_path is not None:
            return _run_script(cfg, channel, rank)
        return _run_recipe(cfg, channel)
    except ConfigError as exc:
        _err(f"bad job document: {exc}")
        return EXIT_BAD_CONFIG
    except Exception:
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        if channel is not None:
            channel.flush()


def _run_script(cfg: Any, channel: ProgressChannel | None, rank: int) -> int:
    from .script import run_script

    res = run_script(cfg, channel, rank)
    if rank == 0:
        _finish(cfg.output_uri, dict(res.metrics), res.artifacts)
    if res.stop_reason is not None:
        _err(f"stopped: {res.stop_reason}")
        return EXIT_STOPPED
    if _api._state.terminated.is_set() and res.code == 0:
        return EXIT_TERMINATED
    return res.code


def _run_recipe(cfg: Any, channel: ProgressChannel | None) -> int:
    import torch.distributed as dist

    from .train import Stopped, Terminated, Trainer, setup_distributed

    d = setup_distributed(cfg)
    try:
        trainer = Trainer(cfg, channel, d)
        try:
            metrics = trainer.fit()
        except Stopped as stop:
            _err(f"stopped: {stop.reason}")
            if d.is_main:
                _finish(cfg.output_uri, stop.metrics, {"checkpoint": trainer.ckpt_uri})
            return EXIT_STOPPED
        except Terminated:
            return EXIT_TERMINATED
        if d.is_main:
            artifacts = trainer.export(metrics)
            _finish(cfg.output_uri, metrics, artifacts)
        return EXIT_OK
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
