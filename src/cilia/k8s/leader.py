"""Leader election on a coordination.k8s.io/v1 Lease, so that exactly one replica writes status.

Every replica serves xDS; only the leader writes. The algorithm is client-go's:

* A candidate reads the Lease every ``retry_period``. If another identity holds it, the candidate waits
  until it has seen the Lease *unchanged* for ``lease_duration`` on its own monotonic clock (no clock
  agreement between replicas is needed), then takes it over with an update that carries the Lease's
  resourceVersion, so of two candidates racing only one wins (the other gets 409).
* The leader renews every ``retry_period``. If it cannot renew for ``renew_deadline`` it stops
  leading, which is before any other replica may take over (``renew_deadline < lease_duration``).
* On shutdown the leader releases the Lease (empty holder) so a successor takes over at once.

A leader that dies without releasing is replaced within ``lease_duration + retry_period`` of its
last renewal. ``leaseDurationSeconds`` in the Lease is informational (whole seconds); the timings in
force are this replica's, which may be sub-second for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource

log = logging.getLogger("cilia.leader")

LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
LEASE_VERBS = ("get", "create", "update")  # every verb the elector uses on leases (see cilia.k8s.rbac)


def default_identity() -> str:
    """`$POD_NAME` (or the host name) plus a random suffix, unique per process."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "cilia"
    return f"{base}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    name: str = "cilia-leader"
    namespace: str = "cilia-system"
    identity: str = ""  # empty: default_identity()
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def check(self) -> None:
        if not (0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s):
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration, got "
                             f"{self.retry_period_s} / {self.renew_deadline_s} / {self.lease_duration_s}")
        if not self.name or not self.namespace:
            raise ValueError("leader election needs a lease name and namespace")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs the election until cancelled; `is_leader` tells whether this replica leads right now."""

    def __init__(self, api: KubeApi, config: LeaseConfig | None = None, *,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config or LeaseConfig()
        self.config.check()
        self.identity = self.config.identity or default_identity()
        self.on_change = on_change
        self.clock = clock
        self.transitions = 0  # times this replica became leader
        self._leader = False
        self._last_renew = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leader

    def _set_leader(self, value: bool, why: str) -> None:
        if value == self._leader:
            return
        self._leader = value
        if value:
            self.transitions += 1
            log.info("%s is now the leader (lease %s/%s): %s", self.identity, self.config.namespace,
                     self.config.name, why)
        else:
            log.warning("%s stopped leading (lease %s/%s): %s", self.identity, self.config.namespace,
                        self.config.name, why)
        if self.on_change is not None:
            self.on_change(value)

    async def run(self) -> None:
        cfg = self.config
        try:
            while True:
                await self.tick()
                period = cfg.retry_period_s if self._leader else cfg.retry_period_s * random.uniform(1.0, 1.2)
                await asyncio.sleep(period)
        finally:
            if self._leader:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self.release()), timeout=min(1.0, cfg.renew_deadline_s))
                self._set_leader(False, "shutting down")

    async def tick(self) -> None:
        """One attempt to acquire or renew, and the step-down check."""
        try:
            ok = await self._acquire_or_renew()
        except KubeApiError as exc:
            log.debug("lease %s/%s: %s", self.config.namespace, self.config.name, exc)
            ok = False
        now = self.clock()
        if ok:
            self._last_renew = now
            self._set_leader(True, "lease acquired")
        elif self._leader and now - self._last_renew > self.config.renew_deadline_s:
            self._set_leader(False, f"could not renew within {self.config.renew_deadline_s:g} s")

    async def _acquire_or_renew(self) -> bool:
        cfg = self.config
        now = self.clock()
        try:
            lease = await self.api.get(LEASES, cfg.namespace, cfg.name)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": self._spec({}, acquire=True)}
            try:
                created = await self.api.create(LEASES, cfg.namespace, body)
            except KubeApiError as exc2:
                if exc2.status == 409:
                    return False  # another replica created it first
                raise
            self._observe(created.get("spec") or {}, self.clock())
            return True
        spec = lease.get("spec") or {}
        self._observe(spec, now)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            if self._leader:
                self._set_leader(False, f"the lease is held by {holder}")
            if now < self._observed_at + cfg.lease_duration_s:
                return False
            log.info("lease %s/%s held by %s expired; taking over", cfg.namespace, cfg.name, holder)
        new = dict(lease)
        new["spec"] = self._spec(spec, acquire=holder != self.identity)
        try:
            updated = await self.api.update(LEASES, cfg.namespace, cfg.name, new)
        except KubeApiError as exc:
            if exc.status == 409:
                return False  # changed under us: look again next period
            raise
        self._observe(updated.get("spec") or {}, self.clock())
        return True

    def _observe(self, spec: dict[str, Any], now: float) -> bool:
        """Remember when the lease record last changed, on our clock. Returns whether it changed."""
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = now
            return True
        return False

    def _spec(self, old: dict[str, Any], *, acquire: bool) -> dict[str, Any]:
        now = _micro_time()
        spec = dict(old)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, math.ceil(self.config.lease_duration_s))
        spec["renewTime"] = now
        if acquire or not spec.get("acquireTime"):
            spec["acquireTime"] = now
            if old.get("holderIdentity") and old.get("holderIdentity") != self.identity:
                spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + 1
            else:
                spec.setdefault("leaseTransitions", int(old.get("leaseTransitions") or 0))
        return spec

    async def release(self) -> None:
        """Give the lease up (empty holder) so another replica takes over without waiting for expiry."""
        cfg = self.config
        lease = await self.api.get(LEASES, cfg.namespace, cfg.name)
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.pop("holderIdentity", None)
        spec["leaseDurationSeconds"] = 1
        spec["renewTime"] = _micro_time()
        await self.api.update(LEASES, cfg.namespace, cfg.name, {**lease, "spec": spec})
        log.info("%s released lease %s/%s", self.identity, cfg.namespace, cfg.name)
