"""BackendTLSPolicy (Gateway API): how a Gateway originates TLS to a Service port, and the ConfigMaps
that carry the CA certificates it trusts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind

GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    group: str
    kind: str
    name: str
    section: str = ""  # a Service port name; empty: every port


@dataclass(frozen=True, slots=True)
class CaRef:
    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class SanMatch:
    kind: str  # "Hostname" or "URI"
    value: str


@dataclass(frozen=True, slots=True)
class BackendTLSPolicySpec:
    targets: tuple[PolicyTarget, ...]
    ca_refs: tuple[CaRef, ...]
    well_known: str  # "System" or ""
    hostname: str
    sans: tuple[SanMatch, ...] = ()



def _parse_policy(raw: Mapping[str, Any], meta: Meta) -> BackendTLSPolicySpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    targets = []
    for i, t in enumerate(as_list(spec.get("targetRefs"), "spec.targetRefs", required=True)):
        tp = f"spec.targetRefs[{i}]"
        t = as_map(t, tp)
        targets.append(PolicyTarget(get_str(t, "group", tp, default=""), get_str(t, "kind", tp, required=True),
                                    get_str(t, "name", tp, required=True), get_str(t, "sectionName", tp, default="")))
    if not targets:
        raise ValidationError("spec.targetRefs", "needs at least one target")
    val = as_map(spec.get("validation"), "spec.validation", required=True)
    refs = []
    for i, r in enumerate(as_list(val.get("caCertificateRefs"), "spec.validation.caCertificateRefs")):
        rp = f"spec.validation.caCertificateRefs[{i}]"
        r = as_map(r, rp)
        refs.append(CaRef(get_str(r, "group", rp, default=""), get_str(r, "kind", rp, required=True),
                          get_str(r, "name", rp, required=True)))
    well_known = get_str(val, "wellKnownCACertificates", "spec.validation", default="")
    if well_known not in ("", "System"):
        raise ValidationError("spec.validation.wellKnownCACertificates", f"{well_known!r} is not System")
    if bool(refs) == bool(well_known):
        raise ValidationError("spec.validation", "set exactly one of caCertificateRefs and wellKnownCACertificates")
    hostname = get_str(val, "hostname", "spec.validation", required=True)
    sans = []
    for i, s in enumerate(as_list(val.get("subjectAltNames"), "spec.validation.subjectAltNames")):
        sp = f"spec.validation.subjectAltNames[{i}]"
        s = as_map(s, sp)
        kind = get_str(s, "type", sp, required=True)
        if kind not in ("Hostname", "URI"):
            raise ValidationError(f"{sp}.type", f"{kind!r} is not Hostname or URI")
        sans.append(SanMatch(kind, get_str(s, kind.lower() if kind == "Hostname" else "uri", sp, required=True)))
    return BackendTLSPolicySpec(tuple(targets), tuple(refs), well_known, hostname, tuple(sans))



register_kind("BackendTLSPolicy", GROUP, ("v1", "v1alpha3"), True, _parse_policy, plural="backendtlspolicies")
