"""Ingress and IngressClass (networking.k8s.io/v1), validated as the API server would.

Structural rules the API server enforces (path types, absolute paths, host syntax, one backend kind)
are checked here, so a manifest the API server would refuse is refused the same way in file mode.
Whether a backend Service exists, or a TLS Secret is usable, is the translator's business.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_port, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind

CONTROLLER = "cilia.io/ingress-controller"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"

PathType = Literal["Exact", "Prefix", "ImplementationSpecific"]
PATH_TYPES: tuple[PathType, ...] = ("Exact", "Prefix", "ImplementationSpecific")
# The API server refuses these in Exact and Prefix paths (they could never match a normalised path).
INVALID_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
INVALID_PATH_SUFFIXES = ("/..", "/.")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class IngressClassSpec:
    controller: str
    is_default: bool
    created: float | None  # creationTimestamp, seconds since the epoch


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    name: str
    port: int | str  # service port number or name


@dataclass(frozen=True, slots=True)
class ResourceBackend:
    api_group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class IngressBackend:
    """Exactly one of `service` and `resource` is set."""

    service: ServiceBackend | None
    resource: ResourceBackend | None = None


@dataclass(frozen=True, slots=True)
class IngressPath:
    path: str
    path_type: PathType
    backend: IngressBackend


@dataclass(frozen=True, slots=True)
class IngressRule:
    host: str  # "" = every host
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True, slots=True)
class IngressTls:
    hosts: tuple[str, ...]  # empty = every host of this Ingress's rules
    secret_name: str


@dataclass(frozen=True, slots=True)
class IngressSpec:
    class_name: str  # spec.ingressClassName, "" when unset
    default_backend: IngressBackend | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTls, ...]
    created: float | None  # creationTimestamp, seconds since the epoch; None when not given


def parse_timestamp(raw: Mapping[str, Any], path: str = "metadata.creationTimestamp") -> float | None:
    """`metadata.creationTimestamp` as epoch seconds (YAML may already have made it a datetime)."""
    md = raw.get("metadata")
    value = md.get("creationTimestamp") if isinstance(md, Mapping) else None
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(path, f"{value!r} is not an RFC 3339 timestamp") from None
    else:
        raise ValidationError(path, f"must be a timestamp string, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def check_host(host: str, path: str) -> str:
    """A rule or TLS host: a lower-case DNS name, optionally `*.` + name; never an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValidationError(path, f"must be a DNS name, not an IP address: {host!r}")
    name = host[2:] if host.startswith("*.") else host
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        hint = " (a wildcard is allowed only as the whole first label, '*.')" if "*" in name else ""
        raise ValidationError(path, f"{host!r} is not a valid lower-case DNS name{hint}")
    return host


def _parse_backend(value: Any, path: str) -> IngressBackend:
    b = as_map(value, path, required=True)
    svc = b.get("service")
    res = b.get("resource")
    if svc is not None and res is not None:
        raise ValidationError(path, "set either service or resource, not both")
    if svc is None and res is None:
        if "serviceName" in b or "servicePort" in b:
            raise ValidationError(path, "serviceName/servicePort are networking.k8s.io/v1beta1 fields; "
                                        "in v1 write service: {name, port: {number | name}}")
        raise ValidationError(path, "one of service or resource is required")
    if res is not None:
        r = as_map(res, f"{path}.resource")
        return IngressBackend(None, ResourceBackend(get_str(r, "apiGroup", f"{path}.resource"),
                                                    get_str(r, "kind", f"{path}.resource", required=True),
                                                    get_str(r, "name", f"{path}.resource", required=True)))
    s = as_map(svc, f"{path}.service")
    name = get_str(s, "name", f"{path}.service", required=True)
    port = as_map(s.get("port"), f"{path}.service.port", required=True)
    ppath = f"{path}.service.port"
    number = get_port(port, "number", ppath)
    pname = get_str(port, "name", ppath)
    if number is not None and pname:
        raise ValidationError(ppath, "set either number or name, not both")
    if number is None and not pname:
        raise ValidationError(ppath, "a port number or name is required")
    if pname and not _PORT_NAME.match(pname):
        raise ValidationError(f"{ppath}.name", f"{pname!r} is not a valid port name")
    return IngressBackend(ServiceBackend(name, number if number is not None else pname))


def _check_path(value: str, path_type: PathType, path: str) -> str:
    if path_type in ("Exact", "Prefix"):
        if not value:
            raise ValidationError(path, f"is required for pathType {path_type}")
        if not value.startswith("/"):
            raise ValidationError(path, f"must be an absolute path (start with '/'), got {value!r}")
        for seq in INVALID_PATH_SEQUENCES:
            if seq in value:
                raise ValidationError(path, f"must not contain {seq!r}, got {value!r}")
        for suffix in INVALID_PATH_SUFFIXES:
            if value.endswith(suffix):
                raise ValidationError(path, f"must not end with {suffix!r}, got {value!r}")
    elif value and not value.startswith("/"):
        raise ValidationError(path, f"must be an absolute path (start with '/'), got {value!r}")
    return value


def _parse_rule(value: Any, path: str) -> IngressRule:
    r = as_map(value, path)
    host = get_str(r, "host", path)
    if host:
        check_host(host, f"{path}.host")
    http = as_map(r.get("http"), f"{path}.http")
    if r.get("http") is not None and not as_list(http.get("paths"), f"{path}.http.paths"):
        raise ValidationError(f"{path}.http.paths", "must have at least one path")
    paths = []
    for j, p in enumerate(as_list(http.get("paths"), f"{path}.http.paths")):
        ppath = f"{path}.http.paths[{j}]"
        p = as_map(p, ppath)
        ptype = get_str(p, "pathType", ppath, required=True)
        if ptype not in PATH_TYPES:
            raise ValidationError(f"{ppath}.pathType", f"must be one of {', '.join(PATH_TYPES)}, got {ptype!r}")
        value = _check_path(get_str(p, "path", ppath), ptype, f"{ppath}.path")  # type: ignore[arg-type]
        paths.append(IngressPath(value, ptype, _parse_backend(p.get("backend"), f"{ppath}.backend")))  # type: ignore[arg-type]
    return IngressRule(host, tuple(paths))


def _parse_ingress(raw: Mapping[str, Any], meta: Meta) -> IngressSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    default = None
    if spec.get("defaultBackend") is not None:
        default = _parse_backend(spec.get("defaultBackend"), "spec.defaultBackend")
    elif spec.get("backend") is not None:
        raise ValidationError("spec.backend", "is a networking.k8s.io/v1beta1 field; in v1 use spec.defaultBackend")
    rules = tuple(_parse_rule(r, f"spec.rules[{i}]") for i, r in enumerate(as_list(spec.get("rules"), "spec.rules")))
    if default is None and not rules:
        raise ValidationError("spec", "either defaultBackend or rules must be specified")
    tls = []
    for i, t in enumerate(as_list(spec.get("tls"), "spec.tls")):
        tpath = f"spec.tls[{i}]"
        t = as_map(t, tpath)
        hosts = []
        for j, h in enumerate(as_list(t.get("hosts"), f"{tpath}.hosts")):
            if not isinstance(h, str):
                raise ValidationError(f"{tpath}.hosts[{j}]", f"must be a string, got {type(h).__name__}")
            hosts.append(check_host(h, f"{tpath}.hosts[{j}]"))
        tls.append(IngressTls(tuple(hosts), get_str(t, "secretName", tpath)))
    class_name = get_str(spec, "ingressClassName", "spec")
    return IngressSpec(class_name, default, rules, tuple(tls), parse_timestamp(raw))


def _parse_ingress_class(raw: Mapping[str, Any], meta: Meta) -> IngressClassSpec:
    spec = as_map(raw.get("spec"), "spec")
    controller = get_str(spec, "controller", "spec", required=True)
    is_default = meta.annotations.get(DEFAULT_CLASS_ANNOTATION, "").lower() == "true"
    return IngressClassSpec(controller, is_default, parse_timestamp(raw))


register_kind("Ingress", "networking.k8s.io", ("v1",), True, _parse_ingress, plural="ingresses")
register_kind("IngressClass", "networking.k8s.io", ("v1",), False, _parse_ingress_class, plural="ingressclasses")
