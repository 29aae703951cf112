"""Run a function on a worker thread and get its outcome back on the event loop, holding nothing.

``loop.run_in_executor`` chains an asyncio future to a concurrent one; the pair forms a reference
cycle that keeps the result (or the exception, whose traceback holds the arguments) alive until
the cyclic collector runs. For 20 MiB request bodies that is hundreds of MiB held after a burst.
Here the worker hands the outcome to the loop with ``call_soon_threadsafe`` and a traceback is
dropped, so a request's memory goes as soon as its answer is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def offload(
    executor: concurrent.futures.Executor,
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    done: Callable[[T | None, BaseException | None], None],
) -> None:
    """Call ``fn(*args)`` on ``executor``; then ``done(result, None)`` or ``done(None, exc)`` on
    the loop."""

    def work() -> None:
        try:
            result: T | None = fn(*args)
            error: BaseException | None = None
        except Exception as exc:
            exc.__traceback__ = None
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(done, result, error)

    executor.submit(work)


async def offload_await(
    executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any
) -> T:
    """Awaitable form of ``offload`` (a plain future set from the loop: no chained pair)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(result: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    offload(executor, loop, fn, args, done)
    return await fut
