"""The progress channel's start-up: old grants removed, then the endpoint served (when configured)."""

from __future__ import annotations

import asyncio
import logging
import ssl

from kubeforge.context import OperatorContext
from kubeforge.progress.legacy import remove_legacy_rbac
from kubeforge.progress.server import ProgressEndpoint, serve

log = logging.getLogger("kubeforge.progress")


async def run(ctx: OperatorContext) -> None:
    """Until cancelled (a task of the operator's start-up)."""
    s = ctx.settings
    if s.cleanup_legacy_rbac:
        await remove_legacy_rbac(ctx.api, s)
    assert ctx.progress is not None
    if not (s.progress_port and s.progress_cert_file and s.progress_key_file):
        log.warning(
            "progress endpoint off (KUBEFORGE_PROGRESS_PORT, KUBEFORGE_PROGRESS_CERT_FILE and "
            "KUBEFORGE_PROGRESS_KEY_FILE set it up): training pods report nothing until they end"
        )
        await asyncio.Event().wait()
        return
    try:
        endpoint = ProgressEndpoint(
            ctx.api,
            s,
            ctx.progress,
            ctx.progress.lookup,
            leading=lambda: not any(ctl.paused for ctl in ctx.controllers),
        )
        await serve(endpoint)
    except (OSError, ssl.SSLError) as exc:
        # a bad certificate or a taken port: say so loudly; reconciles go on without progress
        log.error("progress endpoint not served: %s", exc)
        raise
