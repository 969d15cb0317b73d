"""Gateway `spec.tls.frontend`: client certificate validation on HTTPS listeners (Gateway API v1.5.1).

The validation that applies to an HTTPS listener is its port's `perPort` entry, else `default`. Its
`caCertificateRefs` name core ConfigMaps whose `ca.crt` holds a PEM CA bundle (in another namespace only
with a ReferenceGrant there); the bundles that resolve become one SDS validation context per Gateway port.

A reference that does not resolve sets the listeners' `ResolvedRefs=False` (InvalidCACertificateKind,
RefNotPermitted or InvalidCACertificateRef) and the rest still serve; when none resolves, the listeners
are `Accepted=False` (NoValidCACertificate) and not programmed, so no HTTPS is served there without the
validation asked for. `AllowInsecureFallback` lets clients in without a certificate or with one the CAs
do not sign, and sets the Gateway's `InsecureFrontendValidationMode=True` (ConfigurationChanged).

A bundle is parsed here first: Envoy refuses a trust bundle it cannot load by NACKing the whole update.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from cilia.diagnostics import Issue
from cilia.ir import model as ir
from cilia.k8s.core import CA_CERT_KEY
from cilia.k8s.gateway import FrontendValidation, ObjectReference
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.gateway_common import Cond, norm_group, ref_permitted

INSECURE_CONDITION = "InsecureFrontendValidationMode"


@dataclass(frozen=True, slots=True)
class ClientValidation:
    """What a Gateway port's frontend validation resolved to."""

    secret: ir.Secret | None  # the CA bundle (SDS validation context); None when no reference resolved
    insecure_fallback: bool  # AllowInsecureFallback
    problem: Cond | None = None  # ResolvedRefs=False: the first reference that did not resolve
    issues: tuple[Issue, ...] = ()

    @property
    def refused(self) -> Cond | None:
        """The listeners' Accepted=False when no CA bundle is left to validate with."""
        if self.secret is not None:
            return None
        why = self.problem.message if self.problem is not None else "no CA certificate reference resolved"
        return Cond("Accepted", False, "NoValidCACertificate", f"no valid CA certificate for client validation: {why}")


def ca_bundle_problem(pem: bytes) -> str:
    """Why `pem` is no usable CA bundle ('' when it is one): Envoy needs at least one PEM certificate and
    every PEM block to parse."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return "holds no PEM certificate"
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return "does not parse as PEM certificates"
    return ""


def _resolve_ref(snapshot: InputSnapshot, gw: KubeObject, ref: ObjectReference, path: str
                 ) -> tuple[tuple[bytes, str] | None, Cond | None]:
    """One caCertificateRef -> (PEM bundle, source) or the ResolvedRefs=False condition saying why not."""
    what = f"{path}: {ref.group or 'core'}/{ref.kind} {ref.namespace}/{ref.name}"
    if norm_group(ref.group) != "" or ref.kind != "ConfigMap":
        return None, Cond("ResolvedRefs", False, "InvalidCACertificateKind",
                          f"{what} is not a supported kind for CA certificates (only core ConfigMaps)")
    if not ref_permitted(snapshot, "Gateway", gw.meta.namespace, "", "ConfigMap", ref.namespace, ref.name):
        return None, Cond("ResolvedRefs", False, "RefNotPermitted",
                          f"{what}: no ReferenceGrant in {ref.namespace} allows Gateways in {gw.meta.namespace} "
                          "to use it")
    obj = snapshot.get("ConfigMap", ref.namespace, ref.name)
    if obj is None:
        return None, Cond("ResolvedRefs", False, "InvalidCACertificateRef",
                          f"{what}: not found (cilia keeps only ConfigMaps that have a {CA_CERT_KEY} key)")
    if obj.spec.ca_crt is None:
        return None, Cond("ResolvedRefs", False, "InvalidCACertificateRef", f"{what}: has no key {CA_CERT_KEY}")
    pem = obj.spec.ca_crt.encode()
    problem = ca_bundle_problem(pem)
    if problem:
        return None, Cond("ResolvedRefs", False, "InvalidCACertificateRef", f"{what}: {CA_CERT_KEY} {problem}")
    return (pem, str(obj.ref)), None


def resolve_validation(snapshot: InputSnapshot, gw: KubeObject, port: int, validation: FrontendValidation
                       ) -> ClientValidation:
    """The CA bundle of `validation` on Gateway `gw`'s `port`, with what did not resolve as a condition and
    issues naming the Gateway and the field."""
    bundles: list[bytes] = []
    sources: list[str] = []
    problem: Cond | None = None
    issues: list[Issue] = []
    for i, ref in enumerate(validation.ca_certificate_refs):
        path = f"{validation.path}.caCertificateRefs[{i}]"
        got, bad = _resolve_ref(snapshot, gw, ref, path)
        if got is not None:
            pem, src = got
            bundles.append(pem if pem.endswith(b"\n") else pem + b"\n")
            sources.append(src)
        elif bad is not None:
            problem = problem or bad
            issues.append(Issue(str(gw.ref), path, bad.message.removeprefix(f"{path}: "), severity="warning"))
    secret = None
    if bundles:
        name = f"gateway/{gw.meta.namespace}/{gw.meta.name}/{port}/client-ca"
        secret = ir.Secret(name, trusted_ca=b"".join(bundles), sources=tuple(dict.fromkeys(sources)))
    else:
        issues.append(Issue(str(gw.ref), f"{validation.path}.caCertificateRefs",
                            f"no CA certificate resolved: HTTPS listeners on port {port} are not served"))
    return ClientValidation(secret, validation.mode == "AllowInsecureFallback", problem, tuple(issues))


def frontend_validations(snapshot: InputSnapshot, gw: KubeObject, https_ports: set[int]
                         ) -> dict[int, ClientValidation]:
    """Port -> its client validation, for the Gateway's HTTPS ports that have one."""
    frontend = gw.spec.frontend_tls
    if frontend is None:
        return {}
    out = {}
    for port in sorted(https_ports):
        validation = frontend.for_port(port)
        if validation is not None:
            out[port] = resolve_validation(snapshot, gw, port, validation)
    return out


def insecure_condition(gw: KubeObject) -> Cond | None:
    """InsecureFrontendValidationMode=True while the default or a per-port validation allows insecure
    fallback; None (the condition is removed) otherwise."""
    frontend = gw.spec.frontend_tls
    if frontend is None:
        return None
    where = [v.path for v in (frontend.default, *(v for _, v in frontend.per_port))
             if v is not None and v.mode == "AllowInsecureFallback"]
    if not where:
        return None
    return Cond(INSECURE_CONDITION, True, "ConfigurationChanged",
                "clients without a valid certificate are let in (AllowInsecureFallback at " + ", ".join(where) + ")")
