"""cilia's certificate authority: ECDSA P-256, SPIFFE URI SANs, rotation with an overlap period.

A CA directory holds:
- `ca.pem`      the current CA certificate (it carries the trust domain as URI SAN `spiffe://TD`)
- `ca-key.pem`  its private key, mode 0600
- `bundle.pem`  every root proxies and the server trust: the current CA, and the previous ones until
                their overlap ends (`previous/SERIAL.pem` + `previous/SERIAL.until`)
In Kubernetes mode the same files are the keys of the Secret `cilia-ca` (see `secret_data`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cilia.errors import CiliaError
from cilia.security.spiffe import check_trust_domain

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
BUNDLE = "bundle.pem"
PREVIOUS = "previous"
DEFAULT_CA_TTL = dt.timedelta(days=3650)
DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=5)


class CAError(CiliaError):
    """The CA directory or Secret is missing, unreadable or inconsistent."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `30m`, `24h`, `7d` (one unit)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError(f"duration {text!r} must be a positive number with s, m, h or d (e.g. 24h)")
    return dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])


def _ca_certificate(key: ec.EllipticCurvePrivateKey, trust_domain: str, ttl: dt.timedelta) -> x509.Certificate:
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cilia"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"cilia CA {trust_domain} {secrets.token_hex(4)}")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def trust_domain_of(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CAError("the CA certificate has no spiffe://TRUST-DOMAIN URI SAN") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):].rstrip("/")
    raise CAError("the CA certificate has no spiffe://TRUST-DOMAIN URI SAN")


@dataclass(frozen=True, slots=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes  # empty when the caller kept the key (a CSR was signed)
    not_after: dt.datetime


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    bundle: tuple[x509.Certificate, ...]  # current first, then previous roots still in their overlap

    @property
    def trust_domain(self) -> str:
        return trust_domain_of(self.cert)

    @property
    def bundle_pem(self) -> bytes:
        return b"".join(_pem(c) for c in self.bundle)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    # -- issuing ---------------------------------------------------------------------------------------
    def sign(self, public_key: ec.EllipticCurvePublicKey, *, uris: Sequence[str] = (), dns: Sequence[str] = (),
             ips: Sequence[str] = (), ttl: dt.timedelta = DEFAULT_LEAF_TTL, server: bool = False,
             client: bool = True) -> x509.Certificate:
        """A leaf for `public_key`. Its life never outlasts the CA's."""
        if not (uris or dns or ips):
            raise CAError("a certificate needs at least one subject alternative name")
        now = _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
            ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        cn = (uris or dns or ips)[0][:64]
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cilia"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=bool(not cn))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, **kwargs: object) -> Leaf:
        """A new key pair and its certificate (see `sign` for the arguments)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), **kwargs)  # type: ignore[arg-type]
        return Leaf(_pem(cert), key_pem(key), cert.not_valid_after_utc)

    # -- storage ---------------------------------------------------------------------------------------
    def secret_data(self) -> dict[str, bytes]:
        """The Kubernetes Secret `cilia-ca` (previous roots are kept in the bundle only)."""
        return {CA_CERT: self.cert_pem, CA_KEY: key_pem(self.key), BUNDLE: self.bundle_pem}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes], where: str = "Secret cilia-ca") -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(data[CA_CERT])
            key = serialization.load_pem_private_key(data[CA_KEY], None)
            bundle = x509.load_pem_x509_certificates(data.get(BUNDLE) or data[CA_CERT])
        except KeyError as exc:
            raise CAError(f"{where}: {exc.args[0]} is missing") from None
        except ValueError as exc:
            raise CAError(f"{where}: {exc}") from None
        return _checked(cert, key, bundle, where)


def _checked(cert: x509.Certificate, key: object, bundle: Iterable[x509.Certificate],
             where: str) -> CertificateAuthority:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{where}: the CA key must be an EC key")
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CAError(f"{where}: the CA key does not belong to the CA certificate")
    now = _now()
    roots = [cert] + [c for c in bundle if c.serial_number != cert.serial_number and c.not_valid_after_utc > now]
    trust_domain_of(cert)
    return CertificateAuthority(cert, key, tuple(roots))


def new_ca(trust_domain: str = "cluster.local", ttl: dt.timedelta = DEFAULT_CA_TTL) -> CertificateAuthority:
    check_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_certificate(key, trust_domain, ttl)
    return CertificateAuthority(cert, key, (cert,))


# -- the CA directory (file mode) --------------------------------------------------------------------------
def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic replace, so a reader (Envoy's directory watch, the server) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_ca_dir(directory: str | Path, trust_domain: str = "cluster.local",
                ttl: dt.timedelta = DEFAULT_CA_TTL) -> CertificateAuthority:
    d = Path(directory)
    if (d / CA_KEY).exists():
        raise CAError(f"{d / CA_KEY} exists already; use `cilia ca rotate` to replace the CA")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca = new_ca(trust_domain, ttl)
    write_file(d / CA_KEY, key_pem(ca.key), 0o600)
    write_file(d / CA_CERT, ca.cert_pem)
    write_file(d / BUNDLE, ca.bundle_pem)
    return ca


def _previous_roots(d: Path) -> list[x509.Certificate]:
    """Previous CA certificates whose overlap period has not ended."""
    now = _now()
    roots = []
    prev = d / PREVIOUS
    for pem in sorted(prev.glob("*.pem")) if prev.is_dir() else ():
        until_file = pem.with_suffix(".until")
        try:
            until = dt.datetime.fromisoformat(until_file.read_text().strip())
            cert = x509.load_pem_x509_certificate(pem.read_bytes())
        except (OSError, ValueError):
            continue
        if until > now and cert.not_valid_after_utc > now:
            roots.append(cert)
    return roots


def load_ca_dir(directory: str | Path) -> CertificateAuthority:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key_path = d / CA_KEY
        if key_path.stat().st_mode & 0o077:
            raise CAError(f"{key_path} is readable by others (mode {key_path.stat().st_mode & 0o777:o}); chmod 600 it")
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except FileNotFoundError as exc:
        raise CAError(f"{exc.filename} not found (create a CA with `cilia ca init --dir {d}`)") from None
    except ValueError as exc:
        raise CAError(f"{d}: {exc}") from None
    return _checked(cert, key, _previous_roots(d), str(d))


def rotate_ca_dir(directory: str | Path, overlap: dt.timedelta = dt.timedelta(hours=24),
                  ttl: dt.timedelta = DEFAULT_CA_TTL) -> CertificateAuthority:
    """A new CA signs from now on; the old root stays trusted for `overlap`, so certificates it signed keep
    working until they are renewed (renew everything within the overlap)."""
    d = Path(directory)
    old = load_ca_dir(d)
    prev = d / PREVIOUS
    prev.mkdir(exist_ok=True)
    serial = f"{old.cert.serial_number:x}"
    write_file(prev / f"{serial}.pem", old.cert_pem)
    write_file(prev / f"{serial}.until", (_now() + overlap).isoformat().encode())
    fresh = new_ca(old.trust_domain, ttl)
    ca = CertificateAuthority(fresh.cert, fresh.key, (fresh.cert, *old.bundle))
    write_file(d / CA_KEY, key_pem(ca.key), 0o600)
    write_file(d / CA_CERT, ca.cert_pem)
    write_file(d / BUNDLE, ca.bundle_pem)
    return load_ca_dir(d)


def write_credentials(out: str | Path, cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None:
    """`cert.pem`, `key.pem` (0600) and `ca.pem` for a proxy; each replaced atomically, the key first so a
    watcher that reloads on each change ends with a matching pair."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    write_file(d / "key.pem", key_pem, 0o600)
    write_file(d / "cert.pem", cert_pem)
    write_file(d / "ca.pem", bundle_pem)


def certificate_info(pem: bytes) -> dict[str, object]:
    """What `cilia status` and tests show of a certificate (never the key)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {"serial": f"{cert.serial_number:x}", "uris": uris,
            "not_after": cert.not_valid_after_utc.isoformat(), "not_before": cert.not_valid_before_utc.isoformat()}


class CaDirSource:
    """The CA of a directory, re-read only when one of its files changed (cheap to call per handshake)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._stamp: tuple[object, ...] | None = None
        self._ca: CertificateAuthority | None = None

    def _stat(self) -> tuple[object, ...]:
        paths = [self.directory / CA_CERT, self.directory / CA_KEY, self.directory / BUNDLE,
                 self.directory / PREVIOUS]
        out: list[object] = []
        for p in paths:
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def __call__(self) -> CertificateAuthority:
        stamp = self._stat()
        if self._ca is None or stamp != self._stamp:
            self._ca = load_ca_dir(self.directory)
            self._stamp = stamp
        return self._ca


def read_tls_dir(directory: str | Path) -> tuple[bytes, bytes, bytes]:
    """(cert.pem, key.pem, ca.pem) of a proxy's credential directory (`cilia cert --out`)."""
    d = Path(directory)
    try:
        return (d / "cert.pem").read_bytes(), (d / "key.pem").read_bytes(), (d / "ca.pem").read_bytes()
    except OSError as exc:
        raise CAError(f"{d}: {exc.strerror}: {exc.filename} (write it with `cilia cert --out {d}`)") from None
