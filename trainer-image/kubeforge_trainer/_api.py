"""The user-script API (standard library only).

Under ``kubeforge-trainer`` the trainer configures it (:func:`configure`); a script run on its
own (``python train.py`` in a pod) configures itself from the environment: hyperparameters from
``KUBEFORGE_JOB`` (``spec.hyperparameters``) or the ``HP_*`` variables, output from
``KUBEFORGE_OUTPUT_URI`` (local paths only), reports through the progress channel.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .report.channel import ProgressChannel, clean_metrics


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured = False
        self.hparams: dict[str, Any] = {}
        self.output: str = ""
        self.channel: ProgressChannel | None = None
        self.is_reporter = True  # rank 0 only
        self.last_step: int | float | None = None
        self.last_metrics: dict[str, float | int] = {}
        self.reports = 0
        self.terminated = threading.Event()  # SIGTERM seen (set by the trainer)


_state = _State()


def configure(
    *,
    hparams: dict[str, Any],
    output: str,
    channel: ProgressChannel | None,
    is_reporter: bool = True,
) -> None:
    """Called by the trainer before it runs a user script."""
    with _state.lock:
        _state.configured = True
        _state.hparams = dict(hparams)
        _state.output = output
        _state.channel = channel
        _state.is_reporter = is_reporter
        _state.last_step = None
        _state.last_metrics = {}
        _state.reports = 0
        _state.terminated.clear()


def _from_env() -> None:
    if _state.configured:
        return
    hp: dict[str, Any] = {}
    job = os.environ.get("KUBEFORGE_JOB", "")
    if job.strip().startswith("{"):
        try:
            hp = dict(json.loads(job).get("spec", {}).get("hyperparameters") or {})
        except (ValueError, AttributeError):
            hp = {}
    if not hp:
        for key, value in os.environ.items():
            if key.startswith("HP_"):
                try:
                    hp[key[3:].lower()] = json.loads(value)
                except ValueError:
                    hp[key[3:].lower()] = value
    uri = os.environ.get("KUBEFORGE_OUTPUT_URI", "")
    out = uri[len("file://") :] if uri.startswith("file://") else uri
    if out.startswith("pvc://"):
        out = "/mnt/pvc/" + out[len("pvc://") :]
    if "://" in out or not out:
        out = os.path.abspath("kubeforge-output")
    rank = os.environ.get("RANK", "0")
    configure(hparams=hp, output=out, channel=ProgressChannel(), is_reporter=rank in ("", "0"))


def hyperparameters() -> dict[str, Any]:
    """The job's hyperparameters (``spec.hyperparameters``, or a trial's suggestion)."""
    _from_env()
    return dict(_state.hparams)


def output_dir() -> str:
    """A local folder for artefacts (e.g. ``model.onnx``); uploaded to the output URI after."""
    _from_env()
    os.makedirs(_state.output, exist_ok=True)
    return _state.output


def report(step: int | float | None = None, /, **metrics: Any) -> None:
    """One intermediate report: ``report(epoch, val_loss=0.3, accuracy=0.9)``.

    The last report's metrics are the job's final metrics. Only rank 0 reports.
    """
    _from_env()
    clean = clean_metrics(metrics)
    with _state.lock:
        _state.reports += 1
        _state.last_step = step if step is not None else _state.reports
        _state.last_metrics = clean
        channel = _state.channel if _state.is_reporter else None
    if channel is not None:
        epoch = metrics.get("epoch")
        channel.report(_state.last_step, clean, epoch=epoch if epoch is not None else None)


def should_stop() -> bool:
    """True when the operator asked this trial to stop (pruned) or the pod is terminating."""
    _from_env()
    if _state.terminated.is_set():
        return True
    channel = _state.channel
    return channel is not None and channel.stop_requested() is not None


def last_report() -> tuple[int | float | None, dict[str, float | int]]:
    return _state.last_step, dict(_state.last_metrics)


def stop_reason() -> str | None:
    channel = _state.channel
    return channel.stop_requested() if channel is not None else None
