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

An election that cannot work is loud, never silent: a Lease that cannot be read, created or renewed
(namespace missing, RBAC denied, API server unreachable) is logged at error level (again when the
error changes, else at most every ``error_log_interval_s``), counted by reason (``errors``, the metric
``cilia_leader_election_errors_total``) and shown by ``status()`` (``/debug/leader``, ``cilia status``).
``healthy()`` turns false when this replica has not led for longer than the lease duration plus two
retry periods (the time a normal takeover may take) while no other holder renewed the Lease either:
nobody writes status then, and ``/readyz`` says so.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource

log = logging.getLogger("cilia.leader")

LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
LEASE_VERBS = ("get", "create", "update")  # every verb the elector uses on leases (see cilia.k8s.rbac)
# Why an attempt to acquire or renew failed (label `reason` of cilia_leader_election_errors_total).
ERROR_REASONS = ("namespace_not_found", "forbidden", "unauthorized", "unreachable", "server_error", "invalid",
                 "error")


def error_reason(exc: Exception) -> str:
    """The metric reason for a failed Lease call."""
    if not isinstance(exc, KubeApiError):
        return "error"
    if exc.status == 404 and exc.message.startswith("namespaces "):
        return "namespace_not_found"
    if exc.status == 403:
        return "forbidden"
    if exc.status == 401:
        return "unauthorized"
    if exc.status == 0:
        return "unreachable"
    if exc.status in (408, 429) or exc.status >= 500:
        return "server_error"
    if exc.status in (400, 422):
        return "invalid"
    return "error"


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
    error_log_interval_s: float = 30.0  # an unchanged election error is logged at most this often

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def stall_limit_s(self) -> float:
        """How long no replica may lead before this one reports the election as failing."""
        return self.lease_duration_s + 2 * self.retry_period_s

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
        self.errors: Counter[str] = Counter({r: 0 for r in ERROR_REASONS})  # failed attempts by reason
        self._leader = False
        self._last_renew = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._holder = ""  # holder in the Lease as last read ("" none, or not read yet)
        self._progress_at = clock()  # last time someone (we, or another holder renewing) held the Lease
        self._error = ""  # the last attempt's error ("" when it worked)
        self._error_reason = ""
        self._error_since: float | None = None
        self._error_logged_at = -math.inf
        self._errors_unlogged = 0

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
        self._progress_at = self.clock()  # the grace period starts with the election, not the constructor
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
            self._failed(error_reason(exc), exc.message or str(exc))
            ok = False
        except Exception as exc:  # a bug must not end the election (nor the control plane): report, go on
            if not self._error:
                log.exception("leader election: unexpected error")
            self._failed("error", f"{type(exc).__name__}: {exc}")
            ok = False
        else:
            self._succeeded()
        now = self.clock()
        if ok:
            self._last_renew = now
            self._progress_at = now
            self._set_leader(True, "lease acquired")
        elif self._leader and now - self._last_renew > self.config.renew_deadline_s:
            self._set_leader(False, f"could not renew within {self.config.renew_deadline_s:g} s")

    # -- errors, health, status --------------------------------------------------------------------------
    def _failed(self, reason: str, text: str) -> None:
        now = self.clock()
        self.errors[reason] += 1
        if self._error_since is None:
            self._error_since = now
        changed = text != self._error
        self._error, self._error_reason = text, reason
        if changed or now - self._error_logged_at >= self.config.error_log_interval_s:
            more = f" ({self._errors_unlogged} more failures since the last report)" if self._errors_unlogged else ""
            log.error("leader election: cannot acquire or renew lease %s (%s): %s; %s%s", self.config.ref, reason,
                      text, "stepping down soon" if self._leader else "not leading (status is written only if "
                      "another replica leads)", more)
            self._error_logged_at = now
            self._errors_unlogged = 0
        else:
            self._errors_unlogged += 1

    def _succeeded(self) -> None:
        if self._error:
            took = self.clock() - (self._error_since or self.clock())
            log.info("leader election: lease %s reachable again after %.0f s of errors (last: %s)", self.config.ref,
                     took, self._error)
        self._error, self._error_reason, self._error_since, self._errors_unlogged = "", "", None, 0
        self._error_logged_at = -math.inf

    def healthy(self) -> tuple[bool, str]:
        """False (with why) once no replica has held the Lease for longer than `stall_limit_s`."""
        if self._leader:
            return True, "leading"
        stalled = self.clock() - self._progress_at
        if stalled <= self.config.stall_limit_s:
            return True, f"following {self._holder}" if self._holder else "not leading yet"
        return False, f"no replica has led for {stalled:.0f} s: {self.message()}"

    def message(self) -> str:
        """One line: leading, following whom, or why not leading."""
        if self._leader:
            return f"leading (lease {self.config.ref}, identity {self.identity})"
        if self._error:
            return f"not leading: {self._error}"
        if self._holder:
            return f"not leading: lease {self.config.ref} is held by {self._holder}"
        return f"not leading: lease {self.config.ref} not acquired yet"

    def status(self) -> dict[str, Any]:
        """The view `/debug/leader` serves."""
        now = self.clock()
        ok, why = self.healthy()
        return {"enabled": True, "lease": self.config.ref, "identity": self.identity, "leading": self._leader,
                "holder": self._holder, "transitions": self.transitions, "message": self.message(), "ready": ok,
                "ready_detail": why, "error": self._error, "error_reason": self._error_reason,
                "error_for_s": round(now - self._error_since, 1) if self._error_since is not None else None,
                "errors": {k: v for k, v in self.errors.items() if v}}

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
            self._holder = self.identity
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self._holder = holder
        if self._observe(spec, now) and holder and holder != self.identity:
            self._progress_at = now  # another replica renews: the election works
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
        self._holder = self.identity
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
