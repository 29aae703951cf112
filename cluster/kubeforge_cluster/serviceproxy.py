"""Services for the pod player, as kube-proxy and cluster DNS would carry them, on loopback
(ClusterIPs are never used from the host): `ServiceProxy` hands each connection to a ready played
server the Service selects; `SVC_URL` matches the in-cluster URL of a Service
(`http://SERVICE.NAMESPACE.svc.cluster.local:PORT`) that the player points at such a proxy."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from typing import TYPE_CHECKING

from .client import ApiError

if TYPE_CHECKING:
    from .podplayer import PodPlayer


SVC_URL = re.compile(r"^http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)(/.*)?$")


class ServiceProxy:
    """One Service port as kube-proxy would carry it, on a loopback port: each connection goes
    to one ready played server the Service's selector picks (round robin; a refused connect
    tries the next one, as a terminating endpoint is left)."""

    def __init__(self, player: PodPlayer, namespace: str, name: str, port: int) -> None:
        self.player = player
        self.namespace = namespace
        self.name = name
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._selector: dict[str, str] | None = None
        self._selector_at = 0.0
        self._next = 0
        self._closed = False
        threading.Thread(target=self._accept, name=f"svc-{name}", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def selector(self) -> dict[str, str]:
        if self._selector is None or time.monotonic() - self._selector_at > 5:
            try:
                svc = self.player.client.get(
                    f"/api/v1/namespaces/{self.namespace}/services/{self.name}"
                )
                self._selector = dict((svc.get("spec") or {}).get("selector") or {})
            except (ApiError, OSError):  # gone, or the API server is going away (teardown)
                self._selector = self._selector or {}
            self._selector_at = time.monotonic()
        return self._selector

    def backends(self) -> list[tuple[str, int]]:
        want = self.selector()
        if not want:
            return []
        with self.player._lock:
            selected = [
                p for p in self.player.played.values()
                if p.program == "server" and p.ready and p.namespace == self.namespace
                and all(p.labels.get(k) == v for k, v in want.items())
            ]
        found = [p for p in selected if not p.done and not p.terminating]
        if not found:
            # as kube-proxy: with no ready endpoint left, terminating ones still serving (their
            # preStop sleep) take the connection
            found = [p for p in selected if p.terminating and p.proc and p.proc.poll() is None]
        return [(p.host, p.port if self.port == 8080 else p.grpc_port) for p in found]

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = None
        # kwok reports a new pod Ready before its server is (the player corrects it within a
        # poll), so a Deployment may retire the old pod a moment early: hold the connection
        # until a server is ready, up to 15 s, rather than refuse it
        for _ in range(150):
            targets = self.backends()
            for i in range(len(targets)):
                host, port = targets[(self._next + i) % len(targets)]
                try:
                    upstream = socket.create_connection((host, port), timeout=2)
                    self._next += i + 1
                    break
                except OSError:
                    continue
            if upstream is not None:
                break
            time.sleep(0.1)
        if upstream is None:
            conn.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()
        conn.close()
        upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src → dst until src ends; then half-close dst (an error cuts both ways)."""
    how = socket.SHUT_WR
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        how = socket.SHUT_RDWR
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        dst.shutdown(how)
