"""BackendTLSPolicy -> the TLS a Gateway originates to a Service port: SNI, the CA bundle it trusts (an SDS
secret built from the referenced ConfigMaps) and the SAN matchers the backend certificate must satisfy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from cilia.ir import model as ir
from cilia.k8s.backendtls import BackendTLSPolicySpec
from cilia.k8s.core import ConfigMapSpec, ServicePort
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot

SECRET_PREFIX = "backendtls:"  # SDS names of BackendTLSPolicy validation contexts
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # wellKnownCACertificates: System


@dataclass(frozen=True, slots=True)
class BackendTls:
    """The policy that applies to one Service port, and what it makes of it (or why it cannot)."""

    policy: KubeObject
    tls: ir.UpstreamTls | None
    secret: ir.Secret | None
    reason: str = ""  # ResolvedRefs reason when `tls` is None
    message: str = ""


def age(obj: KubeObject) -> tuple[str, str]:
    """Oldest wins: creation time, then namespace/name."""
    ts = (obj.raw.get("metadata") or {}).get("creationTimestamp") or ""
    return (str(ts), f"{obj.meta.namespace}/{obj.meta.name}")


def policies_for(snapshot: InputSnapshot, namespace: str, service: str, port: ServicePort) -> list[KubeObject]:
    """Policies in `namespace` targeting this Service port (a sectionName one before a whole-Service one),
    oldest first: the first one wins, the others are Conflicted."""
    exact, whole = [], []
    for obj in snapshot.list("BackendTLSPolicy"):
        if obj.meta.namespace != namespace:
            continue
        spec: BackendTLSPolicySpec = obj.spec
        for t in spec.targets:
            if t.group not in ("", "core") or t.kind != "Service" or t.name != service:
                continue
            if t.section and t.section == port.name:
                exact.append(obj)
                break
            if not t.section:
                whole.append(obj)
                break
    return sorted(exact, key=age) + sorted(whole, key=age)


def ca_bundle(snapshot: InputSnapshot, obj: KubeObject) -> tuple[bytes, str, str]:
    spec: BackendTLSPolicySpec = obj.spec
    pems: list[bytes] = []
    for i, ref in enumerate(spec.ca_refs):
        field = f"spec.validation.caCertificateRefs[{i}]"
        if ref.group not in ("", "core") or ref.kind != "ConfigMap":
            return b"", "InvalidKind", f"{field}: {ref.group or 'core'}/{ref.kind} {ref.name} is not a ConfigMap"
        cm = snapshot.get("ConfigMap", obj.meta.namespace, ref.name)
        if cm is None:
            return b"", "InvalidCACertificateRef", f"{field}: ConfigMap {obj.meta.namespace}/{ref.name} not found"
        data: ConfigMapSpec = cm.spec
        pem = data.ca_crt or ""
        if "-----BEGIN CERTIFICATE-----" not in pem:
            return b"", "InvalidCACertificateRef", (f"{field}: ConfigMap {obj.meta.namespace}/{ref.name} has no "
                                                    "PEM certificate under key ca.crt")
        pems.append(pem.encode())
    return b"\n".join(pems), "", ""


def backend_tls(snapshot: InputSnapshot, namespace: str, service: str, port: ServicePort) -> BackendTls | None:
    """The TLS the winning policy for `namespace/service:port` asks for; None when no policy applies."""
    found = policies_for(snapshot, namespace, service, port)
    if not found:
        return None
    obj = found[0]
    spec: BackendTLSPolicySpec = obj.spec
    if spec.well_known:
        secret = ir.Secret(f"{SECRET_PREFIX}system", trusted_ca_file=SYSTEM_CA_FILE, sources=(str(obj.ref),))
    else:
        bundle, reason, message = ca_bundle(snapshot, obj)
        if reason:
            return BackendTls(obj, None, None, reason, message)
        secret = ir.Secret(f"{SECRET_PREFIX}{obj.meta.namespace}/{obj.meta.name}", trusted_ca=bundle,
                           sources=(str(obj.ref),))
    sans = tuple(ir.SanMatch("DNS" if s.kind == "Hostname" else "URI", s.value) for s in spec.sans) or \
        (ir.SanMatch("DNS", spec.hostname),)
    tls = ir.UpstreamTls(sni=spec.hostname, ca_secret=secret.name, san_exact=sans)
    return BackendTls(obj, tls, secret)


def apply(cluster: ir.Cluster, btls: BackendTls) -> ir.Cluster:
    """`cluster` originating the policy's TLS, under a name of its own (the plaintext one may serve others)."""
    assert btls.tls is not None
    return replace(cluster, name=f"{cluster.name}|tls:{btls.policy.meta.name}", upstream_tls=btls.tls,
                   sources=(*cluster.sources, str(btls.policy.ref)))


def referenced_secrets(snapshot: InputSnapshot, clusters: Iterable[ir.Cluster]) -> list[ir.Secret]:
    """The validation-context secrets the BackendTLSPolicy clusters among `clusters` point at."""
    wanted = {c.upstream_tls.ca_secret for c in clusters
              if c.upstream_tls is not None and c.upstream_tls.ca_secret.startswith(SECRET_PREFIX)}
    out: dict[str, ir.Secret] = {}
    for obj in snapshot.list("BackendTLSPolicy"):
        spec: BackendTLSPolicySpec = obj.spec
        if spec.well_known:
            name = f"{SECRET_PREFIX}system"
            if name in wanted:
                out[name] = ir.Secret(name, trusted_ca_file=SYSTEM_CA_FILE, sources=(str(obj.ref),))
            continue
        name = f"{SECRET_PREFIX}{obj.meta.namespace}/{obj.meta.name}"
        if name in wanted:
            bundle, reason, _ = ca_bundle(snapshot, obj)
            if not reason:
                out[name] = ir.Secret(name, trusted_ca=bundle, sources=(str(obj.ref),))
    return sorted(out.values(), key=lambda s: s.name)

