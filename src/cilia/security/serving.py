"""An HTTPS serving certificate signed by cilia's CA, renewed in place at 2/3 of its life.

Python's `ssl` loads certificates from files only, so each renewal writes the pair to a private (0700)
temporary directory, loads it into the same `SSLContext` (new handshakes use it at once) and removes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cilia.security.ca import DEFAULT_LEAF_TTL, CertificateAuthority, Leaf, write_file

log = logging.getLogger("cilia.tls")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class ServingCertificate:
    def __init__(self, ca_source: Callable[[], CertificateAuthority], names: Sequence[str],
                 ttl: dt.timedelta = DEFAULT_LEAF_TTL) -> None:
        self.ca_source = ca_source
        self.names = tuple(dict.fromkeys([*names, "localhost", "127.0.0.1"]))
        self.ttl = ttl
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.leaf = self._renew()

    def _renew(self) -> Leaf:
        ca = self.ca_source()
        leaf = ca.issue(dns=[n for n in self.names if not _is_ip(n)], ips=[n for n in self.names if _is_ip(n)],
                        ttl=self.ttl, server=True, client=False)
        with tempfile.TemporaryDirectory(prefix="cilia-tls-") as d:
            cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
            write_file(key, leaf.key_pem, 0o600)
            write_file(cert, leaf.cert_pem)
            self.context.load_cert_chain(str(cert), str(key))
        return leaf

    async def run(self) -> None:
        while True:
            life = (self.leaf.not_after - dt.datetime.now(dt.UTC)).total_seconds()
            await asyncio.sleep(max(1.0, life * 2 / 3))
            try:
                self.leaf = self._renew()
                log.info("renewed the serving certificate for %s", ", ".join(self.names))
            except Exception as exc:  # keep serving the current one; try again soon
                log.error("cannot renew the serving certificate for %s: %s", ", ".join(self.names), exc)
                await asyncio.sleep(30)
