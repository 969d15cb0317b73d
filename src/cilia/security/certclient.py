"""`cilia cert --kubernetes`: ask cilia's issuer for a certificate with a ServiceAccount token.

The private key is made here and never leaves this process; the issuer only sees a CSR. The issuer's
own certificate is verified against `ca_bundle` (cilia's CA, published to the pod by the deployment),
so the token is never sent to anything but cilia.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cilia.errors import CiliaError
from cilia.identity import ProxyId
from cilia.security.ca import key_pem


class IssueError(CiliaError):
    """The issuer refused or could not be reached."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    bundle_pem: bytes

    @property
    def not_after(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_before_utc


def request_certificate(issuer: str, proxy: ProxyId, token: str, ca_bundle_pem: bytes,
                        timeout_s: float = 10.0) -> Issued:
    """POST a CSR for `proxy` to `issuer` (https://HOST:PORT or HOST:PORT)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(proxy)[:64])]))
           .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    body = json.dumps({"proxy": str(proxy), "csr": csr.public_bytes(Encoding.PEM).decode()}).encode()
    url = issuer if issuer.startswith("https://") else f"https://{issuer}"
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_bundle_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/certificates", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", "")
        except ValueError:
            reason = ""
        raise IssueError(f"issuer {url} refused a certificate for {proxy} ({exc.code}): {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise IssueError(f"cannot reach issuer {url}: {exc}") from None
    return Issued(str(answer["certificate"]).encode(), key_pem(key), str(answer["ca"]).encode())
