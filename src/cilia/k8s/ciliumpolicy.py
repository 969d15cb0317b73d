"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2), in Cilium's shape.

Parsed into the parts cilia enforces at L7 in the mesh's inbound proxies (`endpointSelector`,
`ingress[].fromEndpoints` / `fromEntities` / `toPorts` with `rules.http`, `ingressDeny`,
`enableDefaultDeny.ingress`). Everything else that is valid Cilium but not enforced by cilia (L3 CIDR
rules, egress, DNS/Kafka rules, ...) is kept as a list of `NotEnforced` entries naming the field, so
the translator reports it on the policy's status instead of ignoring it. Structurally invalid input
(a selector that is not a mapping, a port that is not a number) is rejected with the field's path.

Cilium label keys may carry a source prefix (`k8s:app`, `any:app`); cilia matches pods by their
Kubernetes labels plus the labels Cilium derives: `io.kubernetes.pod.namespace`,
`io.cilium.k8s.policy.serviceaccount` and `io.cilium.k8s.namespace.labels.KEY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_bool, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind
from cilia.k8s.selector import LabelSelector, Requirement, parse_label_selector

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
LABEL_SOURCES = ("k8s:", "any:")
ENTITIES = frozenset({"all", "cluster", "world", "host", "remote-node", "kube-apiserver", "init", "health",
                      "unmanaged", "ingress", "none"})
# Entities cilia enforces: every peer, and every peer with an identity of this cluster's trust domain.
ENFORCED_ENTITIES = frozenset({"all", "cluster"})


@dataclass(frozen=True, slots=True)
class NotEnforced:
    """A valid part of the policy cilia does not enforce; `field` is its path in the object."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyPort:
    port: int  # 0 = any port
    end_port: int = 0  # inclusive range end (Cilium `endPort`); 0 = just `port`
    name: str = ""  # a named port, resolved against each selected pod's container ports
    protocol: str = "ANY"  # TCP | ANY (UDP/SCTP/ICMP are reported as not enforced)


@dataclass(frozen=True, slots=True)
class HttpRule:
    """Cilium `rules.http[]`: every given field must match; method, path and host are regular expressions
    matched against the whole value; headers are `Name` (present) or `Name: value` (exact)."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str | None], ...] = ()  # (name, value or None = present)
    unenforced: bool = False  # has parts cilia does not enforce (headerMatches): matches no request


@dataclass(frozen=True, slots=True)
class PortRule:
    ports: tuple[PolicyPort, ...]  # empty = every port
    http: tuple[HttpRule, ...] | None = None  # None: L4 only; () cannot happen (an empty list means L4)


@dataclass(frozen=True, slots=True)
class IngressRule:
    """One `ingress[]` or `ingressDeny[]` entry. `from_endpoints` None = no endpoint selector given."""

    path: str
    from_endpoints: tuple[LabelSelector, ...] | None
    from_entities: tuple[str, ...] = ()
    to_ports: tuple[PortRule, ...] = ()
    has_l3: bool = False  # some from* field was given (also unenforced ones): without any, every peer


@dataclass(frozen=True, slots=True)
class PolicyRule:
    path: str  # "spec" or "specs[i]"
    endpoint_selector: LabelSelector | None  # None: a host policy (nodeSelector), not enforced
    ingress: tuple[IngressRule, ...] | None  # None: no `ingress` key
    ingress_deny: tuple[IngressRule, ...] | None
    default_deny_ingress: bool | None  # enableDefaultDeny.ingress; None = not given


@dataclass(frozen=True, slots=True)
class NetworkPolicySpec:
    clusterwide: bool
    rules: tuple[PolicyRule, ...]
    not_enforced: tuple[NotEnforced, ...]


def _cilium_key(key: str, path: str) -> str:
    for prefix in LABEL_SOURCES:
        if key.startswith(prefix):
            return key[len(prefix):]
    if ":" in key.split("/", 1)[0] and not key.startswith(("reserved:", "cidr:", "fqdn:")):
        raise ValidationError(path, f"label source in {key!r} is not k8s: or any:")
    return key


def parse_cilium_selector(raw: Any, path: str, notes: list[NotEnforced]) -> LabelSelector:
    """A Kubernetes label selector whose keys may carry Cilium label sources (`k8s:`, `any:`)."""
    sel = parse_label_selector(raw, path)
    labels = []
    for k, v in sel.match_labels:
        key = _cilium_key(k, f"{path}.matchLabels.{k}")
        if key.startswith(("reserved:", "cidr:", "fqdn:")):
            notes.append(NotEnforced(f"{path}.matchLabels.{k}",
                                     f"{key.split(':', 1)[0]} labels select no pods in cilia; this selector matches "
                                     "nothing"))
        labels.append((key, v))
    exprs = []
    for i, r in enumerate(sel.match_expressions):
        key = _cilium_key(r.key, f"{path}.matchExpressions[{i}].key")
        exprs.append(Requirement(key, r.operator, r.values))
    return LabelSelector(tuple(sorted(labels)), tuple(exprs))


def _parse_port(raw: Any, path: str, notes: list[NotEnforced]) -> PolicyPort | None:
    p = as_map(raw, path)
    value = p.get("port", "0")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"{path}.port", f"must be a port number or name, got {value!r}")
    text = str(value).strip()
    proto = get_str(p, "protocol", path, default="ANY").upper()
    if proto not in ("TCP", "UDP", "SCTP", "ANY", "ICMP", "ICMPV6"):
        raise ValidationError(f"{path}.protocol", f"must be TCP, UDP, SCTP or ANY, got {proto!r}")
    end = p.get("endPort")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= 65535):
        raise ValidationError(f"{path}.endPort", f"must be a port number, got {end!r}")
    if proto in ("UDP", "SCTP", "ICMP", "ICMPV6"):
        notes.append(NotEnforced(f"{path}.protocol", f"{proto} is not proxied by the mesh; only TCP is enforced"))
        return None
    if text.isdigit():
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValidationError(f"{path}.port", f"must be 0-65535, got {port}")
        if end and end < port:
            raise ValidationError(f"{path}.endPort", f"must not be below port {port}")
        return PolicyPort(port, int(end or 0), "", proto)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text) or len(text) > 15:
        raise ValidationError(f"{path}.port", f"{text!r} is neither a port number nor a port name")
    return PolicyPort(0, 0, text, proto)


def _parse_header(raw: Any, path: str) -> tuple[str, str | None]:
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError(path, "must be 'Name' or 'Name: value'")
    name, sep, value = raw.partition(":")
    name = name.strip()
    if not name or " " in name:
        raise ValidationError(path, f"{raw!r} has no header name")
    return name.lower(), value.strip() if sep else None


_NOT_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]")  # lookaround and backreferences: Envoy's RE2 has neither


def _check_regex(value: str, path: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(path, f"{value!r} is not a valid regular expression: {exc}") from None
    if _NOT_RE2.search(value):
        raise ValidationError(path, f"{value!r} uses lookaround or a backreference, which RE2 (Envoy) does not support")
    return value


def _parse_http(raw: Any, path: str, notes: list[NotEnforced]) -> HttpRule:
    r = as_map(raw, path)
    headers = tuple(_parse_header(h, f"{path}.headers[{i}]") for i, h in enumerate(as_list(r.get("headers"),
                                                                                          f"{path}.headers")))
    unenforced = bool(r.get("headerMatches"))
    if unenforced:
        notes.append(NotEnforced(f"{path}.headerMatches", "headerMatches (with mismatch actions and secrets) is not "
                                 "enforced; this HTTP rule matches no request"))
    return HttpRule(_check_regex(get_str(r, "method", path), f"{path}.method"),
                    _check_regex(get_str(r, "path", path), f"{path}.path"),
                    _check_regex(get_str(r, "host", path), f"{path}.host"), headers, unenforced)


_UNENFORCED_PORT_FIELDS = {
    "terminatingTLS": "TLS interception is not done by cilia",
    "originatingTLS": "TLS origination is not done by cilia",
    "serverNames": "server name (SNI) rules are not enforced",
    "listener": "redirects to a CiliumEnvoyConfig listener are not enforced",
}
_UNENFORCED_L7 = ("kafka", "dns", "l7proto", "l7")


def _parse_to_ports(raw: Any, path: str, notes: list[NotEnforced], deny: bool) -> tuple[PortRule, ...]:
    out = []
    for i, tp in enumerate(as_list(raw, path)):
        tpath = f"{path}[{i}]"
        tp = as_map(tp, tpath)
        ports = []
        dropped = False
        for j, p in enumerate(as_list(tp.get("ports"), f"{tpath}.ports")):
            parsed = _parse_port(p, f"{tpath}.ports[{j}]", notes)
            if parsed is None:
                dropped = True
            else:
                ports.append(parsed)
        if dropped and not ports:
            continue  # only non-TCP ports: this entry applies to nothing cilia proxies
        for key, why in _UNENFORCED_PORT_FIELDS.items():
            if tp.get(key):
                notes.append(NotEnforced(f"{tpath}.{key}", why))
        http: tuple[HttpRule, ...] | None = None
        rules = as_map(tp.get("rules"), f"{tpath}.rules")
        if rules:
            for key in _UNENFORCED_L7:
                if rules.get(key):
                    notes.append(NotEnforced(f"{tpath}.rules.{key}", f"{key} rules are not enforced; "
                                             "this port rule allows nothing"))
                    http = ()
            items = as_list(rules.get("http"), f"{tpath}.rules.http")
            if deny and items:
                raise ValidationError(f"{tpath}.rules", "ingressDeny does not take L7 rules (as in Cilium)")
            if items:
                http = (http or ()) + tuple(_parse_http(h, f"{tpath}.rules.http[{k}]", notes)
                                            for k, h in enumerate(items))
        out.append(PortRule(tuple(ports), http))
    return tuple(out)


_L3_UNENFORCED = {
    "fromCIDR": "L3 CIDR rules are not enforced by cilia (it enforces by workload identity)",
    "fromCIDRSet": "L3 CIDR rules are not enforced by cilia (it enforces by workload identity)",
    "fromRequires": "fromRequires is not enforced",
    "fromGroups": "fromGroups (cloud provider groups) is not enforced",
    "fromNodes": "fromNodes is not enforced",
}


def _parse_ingress(raw: Any, path: str, notes: list[NotEnforced], deny: bool) -> tuple[IngressRule, ...]:
    out = []
    for i, r in enumerate(as_list(raw, path)):
        rpath = f"{path}[{i}]"
        r = as_map(r, rpath)
        has_l3 = False
        selectors: tuple[LabelSelector, ...] | None = None
        if "fromEndpoints" in r:
            has_l3 = True
            selectors = tuple(parse_cilium_selector(s, f"{rpath}.fromEndpoints[{j}]", notes)
                              for j, s in enumerate(as_list(r.get("fromEndpoints"), f"{rpath}.fromEndpoints")))
        entities = []
        for j, e in enumerate(as_list(r.get("fromEntities"), f"{rpath}.fromEntities")):
            if not isinstance(e, str) or e not in ENTITIES:
                raise ValidationError(f"{rpath}.fromEntities[{j}]", f"unknown entity {e!r}")
            has_l3 = True
            if e not in ENFORCED_ENTITIES:
                notes.append(NotEnforced(f"{rpath}.fromEntities[{j}]", f"entity {e!r} is not enforced (cilia "
                                         "enforces 'all' and 'cluster')"))
            entities.append(e)
        for key, why in _L3_UNENFORCED.items():
            if r.get(key):
                has_l3 = True
                notes.append(NotEnforced(f"{rpath}.{key}", why))
        for key in ("icmps", "authentication"):
            if r.get(key):
                notes.append(NotEnforced(f"{rpath}.{key}", f"{key} is not enforced"))
        ports = _parse_to_ports(r.get("toPorts"), f"{rpath}.toPorts", notes, deny)
        out.append(IngressRule(rpath, selectors, tuple(entities), ports, has_l3))
    return tuple(out)


def _parse_rule(raw: Any, path: str, notes: list[NotEnforced]) -> PolicyRule:
    r = as_map(raw, path)
    selector: LabelSelector | None = None
    if "endpointSelector" in r:
        selector = parse_cilium_selector(r.get("endpointSelector"), f"{path}.endpointSelector", notes)
    elif "nodeSelector" in r:
        notes.append(NotEnforced(f"{path}.nodeSelector", "host policies (nodeSelector) are not enforced"))
    else:
        raise ValidationError(path, "needs endpointSelector (or nodeSelector)")
    ingress = _parse_ingress(r["ingress"], f"{path}.ingress", notes, False) if "ingress" in r else None
    deny = _parse_ingress(r["ingressDeny"], f"{path}.ingressDeny", notes, True) if "ingressDeny" in r else None
    for key in ("egress", "egressDeny"):
        if r.get(key):
            notes.append(NotEnforced(f"{path}.{key}", "egress policy is not enforced by cilia"))
    default_deny = None
    edd = as_map(r.get("enableDefaultDeny"), f"{path}.enableDefaultDeny")
    if "ingress" in edd:
        default_deny = get_bool(edd, "ingress", f"{path}.enableDefaultDeny")
    return PolicyRule(path, selector, ingress, deny, default_deny)


def _parse(raw: Mapping[str, Any], meta: Meta, clusterwide: bool) -> NetworkPolicySpec:
    notes: list[NotEnforced] = []
    rules = []
    if raw.get("spec") is not None:
        rules.append(_parse_rule(raw["spec"], "spec", notes))
    for i, s in enumerate(as_list(raw.get("specs"), "specs")):
        rules.append(_parse_rule(s, f"specs[{i}]", notes))
    if not rules:
        raise ValidationError("spec", "is required (or specs)")
    return NetworkPolicySpec(clusterwide, tuple(rules), tuple(notes))


register_kind("CiliumNetworkPolicy", "cilium.io", ("v2",), True, lambda raw, meta: _parse(raw, meta, False),
              plural="ciliumnetworkpolicies")
register_kind("CiliumClusterwideNetworkPolicy", "cilium.io", ("v2",), False,
              lambda raw, meta: _parse(raw, meta, True), plural="ciliumclusterwidenetworkpolicies")
