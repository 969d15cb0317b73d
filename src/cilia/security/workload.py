"""Workload certificates for the mesh: issued by the CA per ServiceAccount, cached, renewed, served over SDS.

The mesh translator stays pure: its bundles only *name* the certificates their proxies need
(`Bundle.workload_certs`: SDS name + namespace + ServiceAccount). After every translation the control
plane passes the model through `WorkloadCertificates.apply`, which adds, for each such bundle, a bundle
with the same scope holding the secrets: each named certificate (`spiffe://TD/ns/NS/sa/SA`, a client
and server certificate) and the trust bundle `cilia-trust-bundle` (every CA root in its overlap).

One key pair and certificate per ServiceAccount, shared by every proxy that carries it (a node Envoy
holds one per ServiceAccount of its node's mesh pods, a sidecar its pod's). A certificate is renewed at
2/3 of its life, and when the CA's signing certificate changes (`cilia ca rotate`): `run` wakes the
control plane, whose next build serves the new secret. Envoy applies an SDS update to new handshakes
only, so established connections are never dropped by a rotation. Certificates no bundle names any
more are forgotten at the next build.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cilia.ir.model import TRUST_BUNDLE_SECRET, Bundle, MeshIR, Secret
from cilia.security.ca import DEFAULT_LEAF_TTL, CertificateAuthority
from cilia.security.spiffe import node_uri, workload_uri

log = logging.getLogger("cilia.workload")
RENEW_FRACTION = 2 / 3
CA_POLL_S = 5.0  # how often `run` looks for a rotated CA


@dataclass(frozen=True, slots=True)
class Issued:
    namespace: str
    service_account: str
    uri: str
    cert_pem: bytes
    key_pem: bytes
    issued_at: float  # on the component's clock
    life_s: float  # from issuing to notAfter
    not_after: dt.datetime
    ca_serial: int  # the CA certificate that signed it

    @property
    def renew_at(self) -> float:
        return self.issued_at + self.life_s * RENEW_FRACTION


@dataclass(frozen=True, slots=True)
class Served:
    """One certificate as one bundle serves it (for `cilia status`)."""

    secret: str
    uri: str
    serial: str
    not_after: str  # ISO 8601


class WorkloadCertificates:
    """Not pure: holds keys and the clock. `apply` runs in the build thread, `run` on the event loop."""

    def __init__(self, ca_source: Callable[[], CertificateAuthority], ttl: dt.timedelta = DEFAULT_LEAF_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.ca_source = ca_source
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._certs: dict[tuple[str, str], Issued] = {}
        self._served: dict[str, tuple[Served, ...]] = {}  # bundle key -> what it serves
        self._scopes: dict[str, Any] = {}  # bundle key -> ProxyScope
        self.issued_total = 0

    @property
    def trust_domain(self) -> str:
        return self.ca_source().trust_domain

    # -- the build side -------------------------------------------------------------------------------
    def _current(self, ca: CertificateAuthority, namespace: str, sa: str, now: float, node: str = "") -> Issued:
        key = ("", f"node/{node}") if node else (namespace, sa)  # no namespace is empty: no clash
        found = self._certs.get(key)
        if found is not None and found.ca_serial == ca.cert.serial_number and now < found.renew_at:
            return found
        uri = node_uri(ca.trust_domain, node) if node else workload_uri(ca.trust_domain, namespace, sa)
        leaf = ca.issue(uris=[uri], ttl=self.ttl, server=True, client=True)
        life = max(1.0, (leaf.not_after - dt.datetime.now(dt.UTC)).total_seconds())  # capped by the CA's own life
        issued = Issued(namespace, sa, uri, leaf.cert_pem, leaf.key_pem, now, life, leaf.not_after,
                        ca.cert.serial_number)
        self._certs[key] = issued
        self.issued_total += 1
        log.info("issued workload certificate %s (valid until %s)", uri, leaf.not_after.isoformat())
        return issued

    def apply(self, model: MeshIR) -> MeshIR:
        """The model with a secrets bundle next to every bundle that names workload certificates."""
        if not any(b.workload_certs for b in model.bundles):
            with self._lock:
                self._certs.clear()
                self._served, self._scopes = {}, {}
            return model
        ca = self.ca_source()
        trust = Secret(TRUST_BUNDLE_SECRET, trusted_ca=ca.bundle_pem, sources=("cilia CA",))
        now = self.clock()
        extra: list[Bundle] = []
        served: dict[str, tuple[Served, ...]] = {}
        scopes: dict[str, Any] = {}
        with self._lock:
            used: set[tuple[str, str]] = set()
            for b in model.bundles:
                if not b.workload_certs:
                    continue
                secrets = [trust]
                shown = []
                for wc in b.workload_certs:
                    issued = self._current(ca, wc.namespace, wc.service_account, now, wc.node)
                    used.add(("", f"node/{wc.node}") if wc.node else (wc.namespace, wc.service_account))
                    source = f"Node {wc.node}" if wc.node else f"ServiceAccount {wc.namespace}/{wc.service_account}"
                    secrets.append(Secret(wc.secret, certificate_chain=issued.cert_pem, private_key=issued.key_pem,
                                          sources=(source,)))
                    shown.append(Served(wc.secret, issued.uri, _serial(issued.cert_pem), issued.not_after.isoformat()))
                key = f"{b.key}|workload-certs"
                extra.append(Bundle(key, b.scope, secrets=tuple(secrets), sources=b.sources))
                served[b.key] = tuple(shown)
                scopes[b.key] = b.scope
            for gone in set(self._certs) - used:
                del self._certs[gone]
            self._served, self._scopes = served, scopes
        return replace(model, bundles=(*model.bundles, *extra))

    # -- the loop side ----------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        """Whether some certificate should be renewed (or the CA changed) since the last build."""
        now = self.clock() if now is None else now
        with self._lock:
            certs = list(self._certs.values())
        if not certs:
            return False
        try:
            serial = self.ca_source().cert.serial_number
        except Exception:  # an unreadable CA directory: keep serving what we have
            log.exception("cannot read the CA; workload certificates are not renewed")
            return False
        return any(now >= c.renew_at or c.ca_serial != serial for c in certs)

    def next_check(self, now: float | None = None) -> float:
        """Seconds until `due` may turn true (at most CA_POLL_S, to notice a rotated CA)."""
        now = self.clock() if now is None else now
        with self._lock:
            earliest = min((c.renew_at for c in self._certs.values()), default=now + CA_POLL_S)
        return max(0.05, min(CA_POLL_S, earliest - now))

    async def run(self, rebuild: Callable[[], None]) -> None:
        """Ask for a rebuild whenever a certificate is due (the build renews it)."""
        requested = 0.0
        while True:
            await asyncio.sleep(self.next_check())
            now = self.clock()
            if self.due(now) and now - requested > 1.0:  # at most one request a second while a build is pending
                requested = now
                rebuild()

    # -- views ------------------------------------------------------------------------------------------
    def served_by(self, match: Callable[[Any], bool]) -> list[Served]:
        """The certificates served to a proxy, given a predicate on bundle scopes (it matches the proxy)."""
        with self._lock:
            items = [(k, self._scopes[k]) for k in self._served]
            out: list[Served] = []
            for key, scope in items:
                if match(scope):
                    out.extend(self._served[key])
        return out

    def summary(self) -> dict[str, Any]:
        with self._lock:
            certs = sorted(self._certs.values(), key=lambda c: c.uri)
        return {"issued_total": self.issued_total,
                "certificates": [{"uri": c.uri, "serial": _serial(c.cert_pem), "not_after": c.not_after.isoformat(),
                                  "renew_in_s": round(c.renew_at - self.clock(), 1)}
                                 for c in certs]}


def _serial(pem: bytes) -> str:
    from cryptography import x509

    return f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
