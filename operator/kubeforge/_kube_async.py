"""AsyncKube: the blocking client's calls awaited from the event loop, on a thread pool."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubeforge._kube_client import Kube

JSON = dict[str, Any]


class AsyncKube:
    """`Kube`'s calls, awaited: each runs in a worker thread of this client's pool (the
    official client is blocking), so the event loop never waits on the network."""

    def __init__(self, kube: Kube, threads: int = 16) -> None:
        self.kube = kube
        self.field_manager = kube.field_manager
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kubeforge-api")

    @property
    def write_count(self) -> int:
        return self.kube.write_count

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        """See `Kube.request`."""
        result: JSON = await self._run(self.kube.request, method, path, **kwargs)
        return result

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JSON | None:
        """The object, or None when it does not exist."""
        result: JSON | None = await self._run(self.kube.get, api_version, kind, namespace, name)
        return result

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        """Server-side apply `obj` under our field manager (force: we own these fields);
        `parse=False`: the caller does not read the answer ({} comes back)."""
        result: JSON = await self._run(self.kube.apply, obj, force=force, parse=parse)
        return result

    async def create(self, obj: JSON, *, parse: bool = True) -> JSON:
        """POST `obj` (see `Kube.create`)."""
        result: JSON = await self._run(self.kube.create, obj, parse=parse)
        return result

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str = "",
        parse: bool = True,
    ) -> JSON:
        """A JSON merge patch (of the object or a subresource such as `status`)."""
        result: JSON = await self._run(
            self.kube.patch, api_version, kind, namespace, name, patch, sub=sub, parse=parse
        )
        return result

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, patch: JSON
    ) -> None:
        """One merge patch of the `/status` subresource (the object it returns is not read)."""
        await self._run(self.kube.patch_status, api_version, kind, namespace, name, patch)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        result: bool = await self._run(self.kube.delete, api_version, kind, namespace, name)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def async_kube(kube: Kube, max_idle: int = 16) -> AsyncKube:
    """An AsyncKube over `kube` (its configuration, credentials and connection pool)."""
    return AsyncKube(kube, threads=max_idle)
