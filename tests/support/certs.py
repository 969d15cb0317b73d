"""A throwaway certificate authority for tests: CA and leaf certificates made at test time."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(name: str) -> x509.GeneralName:
    """An IP address SAN for an address (e.g. a webhook reached at https://127.0.0.1:PORT), else DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class TestCA:
    """Signs ECDSA P-256 leaf certificates for DNS names."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "cilia test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *dns_names: str, days: int = 1) -> Pem:
        """A leaf for these names; an entry that is an IP address becomes an IP SAN."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(dns_names[0])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in dns_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return Pem(cert.public_bytes(serialization.Encoding.PEM),
                   key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def serial_of(der: bytes) -> int:
    return int(x509.load_der_x509_certificate(der).serial_number)


def serial_of_pem(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def tls_secret(name: str, pem: Pem | None = None, namespace: str = "default", *, crt: bytes | None = None,
               key: bytes | None = None) -> str:
    """A `kubernetes.io/tls` Secret manifest (JSON text); `crt`/`key` override the PEM (bad-input tests)."""
    c = crt if crt is not None else (pem.cert if pem else b"")
    k = key if key is not None else (pem.key if pem else b"")
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": name, "namespace": namespace},
                       "data": {"tls.crt": base64.b64encode(c).decode(), "tls.key": base64.b64encode(k).decode()}})
