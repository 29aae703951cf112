"""Leader election over a `coordination.k8s.io/v1` Lease: with several replicas, exactly one
reconciles.

The rules are client-go's leaderelection package's, on the same object, so `kubectl get lease`
shows who leads:
- the holder renews `spec.renewTime` every `renew_seconds`; a write carries the Lease's
  `resourceVersion`, so of two replicas racing for it one wins and the other gets a 409;
- a standby takes the Lease over when its record (holder, renewTime) has not changed for
  `lease_seconds` by the standby's own clock (no clock-skew assumptions between machines);
- a leader that could not renew for two thirds of `lease_seconds` stops reconciling, before any
  standby may take over (a partitioned leader steps down by itself).
Every replica keeps kopf's watch streams and indexes current; only the reconciles are gated, so
a takeover starts from complete indexes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from typing import Any

from kubeforge.apply import ApiError, AsyncKube

log = logging.getLogger("kubeforge.leader")

API_VERSION = "coordination.k8s.io/v1"


def micro_time(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (HOSTNAME) plus a random part: a restarted pod is a new candidate."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElection:
    def __init__(
        self,
        kube: AsyncKube,
        namespace: str,
        name: str,
        *,
        identity: str | None = None,
        lease_seconds: float = 15.0,
        renew_seconds: float = 4.0,
        on_start: Callable[[], None] = lambda: None,
        on_stop: Callable[[], None] = lambda: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_start = on_start
        self.on_stop = on_stop
        self.leading = False
        self._clock = clock
        self._observed: tuple[Any, Any] | None = None
        """(holder, renewTime) of the Lease as last seen, and when it was first seen so."""
        self._observed_at = 0.0
        self._renewed_at = 0.0

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Try to acquire or renew, forever (cancel to stop; a leader then gives the Lease up)."""
        try:
            while True:
                try:
                    await self.step()
                except (ApiError, OSError, TimeoutError) as exc:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                self._check_expiry()
                await asyncio.sleep(self.renew_seconds * random.uniform(0.8, 1.0))
        finally:
            if self.leading:
                self._set(False)
                await self._release()

    def _check_expiry(self) -> None:
        if self.leading and self._now() - self._renewed_at >= self.lease_seconds * 2 / 3:
            log.warning("lease %s/%s not renewed in time: stepping down", self.namespace, self.name)
            self._set(False)

    def _set(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        log.info("%s leadership of %s/%s", "acquired" if leading else "lost", self.namespace, self.name)
        (self.on_start if leading else self.on_stop)()

    def _spec(self, lease: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        now = micro_time(datetime.datetime.now(datetime.UTC))
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        old = (lease or {}).get("spec") or {}
        spec["acquireTime"] = old.get("acquireTime") if old.get("holderIdentity") == self.identity else now
        return spec

    async def step(self) -> None:
        """One round: create, renew or take over the Lease when due."""
        lease = await self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None, 0),
            }
            try:
                await self.kube.create(body, parse=False)
            except ApiError as exc:
                if exc.conflict:
                    return  # another replica created it first
                raise
            self._renewed()
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        now = self._now()
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            await self._write(lease, self._spec(lease, transitions))
            return
        if self.leading:
            self._set(False)  # someone else holds it now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and now - self._observed_at < duration:
            return  # held, and renewed recently enough
        await self._write(lease, self._spec(lease, transitions + 1))

    async def _write(self, lease: dict[str, Any], spec: dict[str, Any]) -> None:
        # a merge patch that names the resourceVersion read: a 409 if anyone wrote in between
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            await self.kube.patch(API_VERSION, "Lease", self.namespace, self.name, patch, parse=False)
        except ApiError as exc:
            if exc.conflict:
                return
            raise
        self._renewed()

    def _renewed(self) -> None:
        self._renewed_at = self._now()
        self._set(True)

    async def _release(self) -> None:
        """Give the Lease up at shutdown, so the standby takes over at once."""
        try:
            lease = await self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                patch = {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None},
                }
                await self.kube.patch(API_VERSION, "Lease", self.namespace, self.name, patch, parse=False)
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, exc)
