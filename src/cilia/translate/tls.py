"""TLS Secrets -> SDS secrets, checked the way Envoy will check them.

Envoy refuses a certificate it cannot load by rejecting the whole xDS update that carries it (a NACK),
which would also hold back every good change sent alongside. So a Secret is parsed here first: PEM
that does not parse, a key that does not belong to the certificate, or a key type Envoy cannot serve
(it takes RSA of 2048 bits or more and ECDSA on P-256/P-384/P-521) makes the Secret unusable, with
a message naming what is wrong. Expiry and names not covered by the certificate are only warnings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cilia.ir.model import Secret
from cilia.k8s.core import SecretSpec
from cilia.k8s.store import InputSnapshot

TLS_SECRET_TYPE = "kubernetes.io/tls"
ENVOY_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


@dataclass(frozen=True, slots=True)
class TlsSecret:
    """A usable certificate (`secret` set) or why not (`error`); `warnings` either way."""

    secret: Secret | None
    error: str = ""
    warnings: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()  # DNS names the leaf certificate is valid for


def sds_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:  # legacy certificates carry the name only in the subject's CN
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return tuple(n.lower() for n in names)


def host_covered(host: str, names: tuple[str, ...]) -> bool:
    """Whether a certificate for `names` is valid for `host` (a wildcard name covers one label)."""
    host = host.lower()
    for n in names:
        if n == host:
            return True
        if n.startswith("*.") and not host.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == n[2:]:
                return True
    return False


def check_tls_pair(cert_pem: bytes, key_pem: bytes, now: float | None = None) -> tuple[str, tuple[str, ...],
                                                                                        tuple[str, ...]]:
    """(error, warnings, names) for a certificate chain and private key in PEM."""
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        return "tls.crt holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' block)", (), ()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return "tls.crt has a PEM certificate block that does not parse", (), ()
    if b"PRIVATE KEY-----" not in key_pem:
        return "tls.key holds no PEM private key (no '-----BEGIN ... PRIVATE KEY-----' block)", (), ()
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return "tls.key is encrypted; Envoy needs an unencrypted private key", (), ()
    except (ValueError, UnsupportedAlgorithm):
        return "tls.key has a PEM private key block that does not parse", (), ()
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            return f"tls.key is a {key.key_size}-bit RSA key; Envoy needs at least 2048 bits", (), ()
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ENVOY_CURVES:
            return f"tls.key uses curve {key.curve.name}; Envoy supports P-256, P-384 and P-521", (), ()
    else:
        return f"tls.key is a {type(key).__name__.removeprefix('_')} key; Envoy supports RSA and ECDSA", (), ()
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return "tls.key does not match the certificate in tls.crt (the first certificate must be the leaf)", (), ()
    warnings = []
    now = time.time() if now is None else now
    if leaf.not_valid_after_utc.timestamp() < now:
        warnings.append(f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    elif leaf.not_valid_before_utc.timestamp() > now:
        warnings.append(f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    return "", tuple(warnings), _names(leaf)


def secret_not_found(namespace: str, name: str, readable: tuple[str, ...] | None = None) -> str:
    """Why Secret `namespace/name` is missing: not there, or in a namespace cilia does not read Secrets in."""
    if readable is not None and namespace not in readable:
        where = ", ".join(readable) or "no namespace"
        return (f"Secret {namespace}/{name} is not readable: cilia reads Secrets only in {where} "
                f"(--secrets-namespace; to use this one, add --secrets-namespace={namespace} and a Role there "
                "as deploy/README.md shows)")
    return f"Secret {namespace}/{name} not found"


def load_tls_secret(snapshot: InputSnapshot, namespace: str, name: str,
                    readable: tuple[str, ...] | None = None) -> TlsSecret:
    """The SDS secret for Secret `namespace/name`, named `namespace/name`. `readable`: the namespaces cilia
    reads Secrets in (None: all), for the error message."""
    obj = snapshot.get("Secret", namespace, name)
    if obj is None:
        return TlsSecret(None, secret_not_found(namespace, name, readable))
    spec: SecretSpec = obj.spec
    missing = [k for k in ("tls.crt", "tls.key") if not spec.data.get(k)]
    if missing:
        return TlsSecret(None, f"Secret {namespace}/{name} has no {' or '.join(missing)}")
    warnings: list[str] = []
    if spec.type != TLS_SECRET_TYPE:
        warnings.append(f"Secret {namespace}/{name} has type {spec.type!r}, expected {TLS_SECRET_TYPE!r}")
    error, more, names = check_tls_pair(spec.data["tls.crt"], spec.data["tls.key"])
    if error:
        return TlsSecret(None, f"Secret {namespace}/{name}: {error}", tuple(warnings))
    warnings.extend(f"Secret {namespace}/{name}: {w}" for w in more)
    secret = Secret(sds_name(namespace, name), certificate_chain=spec.data["tls.crt"],
                    private_key=spec.data["tls.key"], sources=(str(obj.ref),))
    return TlsSecret(secret, "", tuple(warnings), names)
