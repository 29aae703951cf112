"""The progress channel between a training pod and the operator (standard library only).

In a cluster (``KUBEFORGE_PROGRESS_URL`` set by the operator) a report is an HTTPS POST of the
report to that URL, the operator's progress endpoint, with ``Authorization: Bearer`` the pod's
projected token (file ``KUBEFORGE_PROGRESS_TOKEN_FILE``, read again for each report: the kubelet
renews it), verified against the CA in ``KUBEFORGE_PROGRESS_CA`` (PEM) or
``KUBEFORGE_PROGRESS_CA_FILE``. The answer ``{"accepted": true, "stop": null | REASON}`` asks the
trainer to stop when ``stop`` is set. Reports are rate-limited (``min_interval`` seconds, default
1; a 429 or 503 keeps the report pending); the latest pending report is always sent by
:meth:`ProgressChannel.flush` / :meth:`close`. The wire format: docs/progress-protocol.md.

Outside a cluster a report is one JSON line appended to ``KUBEFORGE_PROGRESS_FILE`` (when set),
and a stop request is the existence of the file named by ``KUBEFORGE_STOP_FILE`` (when set; its
content, if any, is the reason).

Report format: ``{"seq": N, "step": S, "epoch": E, "metrics": {NAME: NUMBER}, "time": UNIX}``.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_BYTES = 4096


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Keep finite numbers only (JSON has no NaN/Infinity); bools are dropped."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            try:
                value = value.item()
            except (TypeError, ValueError):
                continue
        if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
            out[str(key)] = value
    return out


class ProgressChannel:
    """Sends intermediate reports to the operator and tells whether a stop was requested."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        min_interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.min_interval = min_interval
        self.timeout = timeout
        self.seq = 0
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_sent = 0.0
        self._stop_reason: str | None = None
        self._warned = False
        self.url = self.env.get("KUBEFORGE_PROGRESS_URL", "")
        self.token_file = self.env.get("KUBEFORGE_PROGRESS_TOKEN_FILE", "")
        self.in_cluster = bool(self.url)
        self._ssl: ssl.SSLContext | None = None
        self.progress_file = self.env.get("KUBEFORGE_PROGRESS_FILE", "")
        self.stop_file = self.env.get("KUBEFORGE_STOP_FILE", "")

    # ------------------------------------------------------------------ public API
    def report(
        self,
        step: int | float | None,
        metrics: Mapping[str, Any],
        epoch: int | float | None = None,
        *,
        force: bool = False,
    ) -> dict[str, Any]:
        """Record one intermediate report; sends it now or when the rate limit allows."""
        with self._lock:
            self.seq += 1
            payload: dict[str, Any] = {
                "seq": self.seq,
                "step": _num(step) if step is not None else self.seq,
                "epoch": _num(epoch) if epoch is not None else None,
                "metrics": clean_metrics(metrics),
                "time": round(time.time(), 3),
            }
            if payload["epoch"] is None:
                del payload["epoch"]
            if self.in_cluster:
                self._pending = payload
                if force or time.monotonic() - self._last_sent >= self.min_interval:
                    self._send_pending()
            elif self.progress_file:
                self._append_line(payload)
            return payload

    def flush(self) -> None:
        """Send the latest report still held back by the rate limit."""
        with self._lock:
            if self._pending is not None:
                self._send_pending()

    close = flush

    def stop_requested(self) -> str | None:
        """The stop reason (e.g. ``"pruned"``) when the operator asked the trainer to stop."""
        if self._stop_reason is not None:
            return self._stop_reason
        if self.in_cluster:
            with self._lock:
                # A report held back by the rate limit goes out now if allowed: the answer
                # carries the stop request.
                if (
                    self._pending is not None
                    and time.monotonic() - self._last_sent >= self.min_interval
                ):
                    self._send_pending()
        elif self.stop_file and os.path.exists(self.stop_file):
            try:
                with open(self.stop_file, encoding="utf-8") as fh:
                    reason = fh.read().strip()
            except OSError:
                reason = ""
            self._stop_reason = reason or "stop requested"
        return self._stop_reason

    # ------------------------------------------------------------------ internals
    def _read_token(self) -> str:
        if not self.token_file:
            return ""
        try:
            with open(self.token_file, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            pem = self.env.get("KUBEFORGE_PROGRESS_CA", "")
            cafile = self.env.get("KUBEFORGE_PROGRESS_CA_FILE", "") or None
            if pem:
                self._ssl = ssl.create_default_context(cadata=pem)
            else:
                self._ssl = ssl.create_default_context(cafile=cafile)
        return self._ssl

    def _append_line(self, payload: Mapping[str, Any]) -> None:
        try:
            with open(self.progress_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(payload, separators=(",", ":")) + "\n")
        except OSError as exc:
            self._warn(f"cannot write progress file {self.progress_file}: {exc}")

    def _send_pending(self) -> None:
        payload = self._pending
        if payload is None:
            return
        self._pending = None
        self._last_sent = time.monotonic()
        try:
            answer = self._post(payload)
        except urllib.error.HTTPError as exc:
            # 429: too fast; 503: a standby replica or the token not checked now. Either way
            # the newest report goes with the next chance
            if exc.code in (429, 503):
                self._pending = payload
                return
            self._warn(f"progress report refused ({exc.code}): {_detail(exc)}")
            return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self._warn(f"cannot reach the progress endpoint {self.url}: {exc}")
            return
        stop = answer.get("stop")
        if stop:
            self._stop_reason = str(stop)

    def _post(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        token = self._read_token()  # read each time: the kubelet renews the projected token
        req = urllib.request.Request(
            self.url,
            data=json.dumps(payload, separators=(",", ":")).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
        )
        with urllib.request.urlopen(req, timeout=self.timeout, context=self._context()) as resp:
            data = json.loads(resp.read().decode() or "{}")
        return data if isinstance(data, dict) else {}

    def _warn(self, message: str) -> None:
        if not self._warned:  # one line, not one per report
            print(f"kubeforge: progress channel: {message}", file=sys.stderr, flush=True)
            self._warned = True


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode() or "{}")
    except (OSError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason) if isinstance(body, dict) else str(exc.reason)


def _num(value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    fval = float(value)
    return int(fval) if fval.is_integer() else fval


def termination_message(
    metrics: Mapping[str, Any], artifacts: Mapping[str, Any] | None = None
) -> str:
    """The JSON termination message, trimmed to stay under 4 KiB (artifacts always kept)."""
    clean = clean_metrics(metrics)
    arts = {k: v for k, v in (artifacts or {}).items() if v is not None and v != ""}
    while True:
        text = json.dumps({"metrics": clean, "artifacts": arts}, separators=(",", ":"))
        if len(text.encode()) < MAX_TERMINATION_BYTES or not clean:
            return text
        # Drop the longest-named metrics first; the headline ones have short names.
        del clean[max(clean, key=lambda k: (len(k), k))]


def write_termination_message(
    metrics: Mapping[str, Any],
    artifacts: Mapping[str, Any] | None = None,
    *,
    path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Write the termination message; returns it.

    The path is ``path``, else ``KUBEFORGE_TERMINATION_LOG``, else ``/dev/termination-log`` but
    only when that file already exists (the kubelet creates it in a pod); an unwritable path is
    skipped quietly so the same code runs on a laptop.
    """
    text = termination_message(metrics, artifacts)
    env = os.environ if env is None else env
    target = path or env.get("KUBEFORGE_TERMINATION_LOG", "")
    if not target:
        target = DEFAULT_TERMINATION_LOG if os.path.exists(DEFAULT_TERMINATION_LOG) else ""
    if target:
        try:
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            pass
    return text
