"""xDS over mutual TLS: the server's credentials, renewed and re-rooted without a restart.

grpc asks `_fetch` before each new handshake; it answers with a new configuration when the serving
certificate reached 2/3 of its life or the CA (its bundle of trusted roots) changed, else None.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from cilia.security.ca import DEFAULT_LEAF_TTL, CertificateAuthority, Leaf
from cilia.security.spiffe import server_uri

log = logging.getLogger("cilia.xds.tls")

DEFAULT_SERVER_NAMES = ("localhost", "cilia", "cilia.cilia-system", "cilia.cilia-system.svc",
                        "cilia.cilia-system.svc.cluster.local", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    trust_domain: str
    names: tuple[str, ...]  # DNS names and IP addresses the certificate names

    def leaf(self, ca: CertificateAuthority, ttl: dt.timedelta) -> Leaf:
        dns = [n for n in self.names if not _is_ip(n)]
        ips = [n for n in self.names if _is_ip(n)]
        return ca.issue(uris=[server_uri(self.trust_domain)], dns=dns, ips=ips, ttl=ttl, server=True, client=False)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ServerTls:
    """Holds the current CA (from `ca_source`, re-read at most every `check_interval_s`) and the serving
    certificate it signed."""

    def __init__(self, ca_source: Callable[[], CertificateAuthority], extra_names: Sequence[str] = (),
                 ttl: dt.timedelta = DEFAULT_LEAF_TTL, check_interval_s: float = 1.0) -> None:
        self._source = ca_source
        self._ttl = ttl
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self.ca = ca_source()
        self.identity = ServerIdentity(self.ca.trust_domain, tuple(dict.fromkeys((*DEFAULT_SERVER_NAMES,
                                                                                  *extra_names))))
        self._leaf, self._renew_at = self._new_leaf()
        self._next_check = time.monotonic() + check_interval_s
        self._handed: tuple[bytes, bytes] | None = None  # (cert, bundle) grpc last got from us

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    def _new_leaf(self) -> tuple[Leaf, float]:
        new = self.identity.leaf(self.ca, self._ttl)
        life = (new.not_after - dt.datetime.now(dt.UTC)).total_seconds()
        return new, time.monotonic() + max(1.0, life * 2 / 3)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        self._handed = (self._leaf.cert_pem, self.ca.bundle_pem)
        return grpc.ssl_server_certificate_configuration([(self._leaf.key_pem, self._leaf.cert_pem)],
                                                         root_certificates=self.ca.bundle_pem)

    def credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            initial = self._config()
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch, require_client_authentication=True)

    def refresh(self) -> bool:
        """Re-read the CA and renew the serving certificate when due; True when anything changed."""
        changed = False
        try:
            ca = self._source()
        except Exception as exc:  # a half-written or broken CA keeps the current one serving
            log.error("xDS TLS: cannot reload the CA, keeping the current one: %s", exc)
            ca = self.ca
        if ca.cert_pem != self.ca.cert_pem or ca.bundle_pem != self.ca.bundle_pem:
            log.info("xDS TLS: CA changed (trust bundle of %d root(s))", len(ca.bundle))
            self.ca = ca
            changed = True
        if changed or time.monotonic() >= self._renew_at:
            self._leaf, self._renew_at = self._new_leaf()
            changed = True
        return changed

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before handshakes, on its own threads: cheap unless a check is due."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + self._interval
            self.refresh()
            if self._handed == (self._leaf.cert_pem, self.ca.bundle_pem):
                return None
            return self._config()
