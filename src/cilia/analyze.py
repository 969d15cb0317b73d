"""`cilia analyze`: find mistakes in manifests before they are applied.

It runs what the control plane runs (parse, translate, render) on the files and reports every issue and
every negative status condition, then adds checks across objects that no single translator makes: an
Ingress and an HTTPRoute claiming the same host and path, listeners of one proxy on the same port, GAMMA
routes that no mesh pod would use, policy and node selectors that select nothing, and, with a real Envoy,
CiliumEnvoyConfig resources that Envoy rejects (`envoy --mode validate`).

Exit codes (also in `cilia analyze --help`): 0 no errors (warnings allowed unless --strict), 1 errors found
(or warnings with --strict), 2 the input could not be read or the command was misused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cilia.diagnostics import Issue
from cilia.errors import ValidationError
from cilia.identity import ProxyId
from cilia.k8s.manifest import expand_paths, iter_documents, parse_file
from cilia.k8s.objects import KubeObject
from cilia.k8s.selector import LabelSelector, parse_label_selector
from cilia.k8s.store import InputSnapshot, Store
from cilia.mesh.mode import resolve_mesh_mode
from cilia.render.dump import proxy_config_json
from cilia.render.world import RenderedWorld, render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
ENVOY_CONFIG_KINDS = ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig")
POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
ANALYZE_NODE = "cilia-analyze"  # a node with no Node object receives every CiliumEnvoyConfig
# Conditions whose value says something is wrong: (type, bad status) -> severity.
BAD_CONDITIONS = {("Accepted", "False"): "error", ("ResolvedRefs", "False"): "error",
                  ("Programmed", "False"): "error", ("Conflicted", "True"): "warning"}


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One problem. `check` says which analysis found it (input, translate, status, conflict, mesh,
    selector, envoy)."""

    severity: str  # "error" | "warning"
    object: str  # "Kind namespace/name", or "" for a file
    field: str
    message: str
    check: str
    location: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "object": self.object, "field": self.field,
                "message": self.message, "location": self.location}

    def __str__(self) -> str:
        head = ": ".join(p for p in (self.location, self.object) if p)
        body = f"{self.field}: {self.message}" if self.field else self.message
        return f"{self.severity} [{self.check}] {head}: {body}" if head else f"{self.severity} [{self.check}] {body}"


@dataclass(slots=True)
class Report:
    findings: list[Finding] = field(default_factory=list)
    objects: int = 0
    files: int = 0
    envoy: str = "skipped"  # "validated N config(s)", "skipped (no envoy on PATH)", ...

    def exit_code(self, strict: bool = False) -> int:
        if any(f.severity == "error" for f in self.findings):
            return EXIT_FINDINGS
        return EXIT_FINDINGS if strict and self.findings else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        errors = sum(f.severity == "error" for f in self.findings)
        return {"files": self.files, "objects": self.objects, "errors": errors,
                "warnings": len(self.findings) - errors, "envoy": self.envoy,
                "findings": [f.as_dict() for f in self.findings]}

    def text(self) -> str:
        lines = [str(f) for f in self.findings]
        errors = sum(f.severity == "error" for f in self.findings)
        lines.append(f"{self.files} file(s), {self.objects} object(s): {errors} error(s), "
                     f"{len(self.findings) - errors} warning(s); Envoy validation: {self.envoy}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class RawDoc:
    """A document of a kind cilia does not read itself (policies, workloads), kept as YAML data."""

    kind: str
    namespace: str
    name: str
    body: Mapping[str, Any]
    location: str

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


# -- input -------------------------------------------------------------------------------------------------
def load(paths: Sequence[str]) -> tuple[Store, list[RawDoc], int]:
    """The store (as `cilia serve -f` would fill it) and the raw policy / workload documents."""
    store = Store()
    files = expand_paths(paths)
    raw: list[RawDoc] = []
    for path in files:
        store.replace_source(str(path), parse_file(path))
        try:
            docs = list(iter_documents(path))
        except Exception:  # parse_file has reported it
            continue
        for index, doc in docs:
            if isinstance(doc, Mapping) and doc.get("kind") in (*POLICY_KINDS, *WORKLOAD_KINDS):
                md: Mapping[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), Mapping) else {}
                raw.append(RawDoc(str(doc["kind"]), str(md.get("namespace") or ""), str(md.get("name") or "?"),
                                  doc, f"{path}#{index}"))
    return store, raw, len(files)


# -- checks ------------------------------------------------------------------------------------------------
def issue_findings(issues: Iterable[Issue], check: str) -> list[Finding]:
    return [Finding(i.severity if i.severity in ("error", "warning") else "warning", i.object, i.field, i.message,
                    check, i.location) for i in issues]


def _conditions(status: Any, path: str = "status") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(status, Mapping):
        for key, value in status.items():
            if key == "conditions" and isinstance(value, list):
                yield from ((f"{path}.conditions", c) for c in value if isinstance(c, Mapping))
            elif key != "parentRef":
                yield from _conditions(value, f"{path}.{key}")
    elif isinstance(status, list):
        for i, item in enumerate(status):
            yield from _conditions(item, f"{path}[{i}]")


def status_findings(statuses: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Negative conditions of the status cilia would write (Gateway API: unresolved backends, certificates,
    conflicts; routes not accepted ...)."""
    out = []
    for st in statuses:
        md = st.get("metadata", {})
        ref = f"{st['kind']} {md['namespace']}/{md['name']}" if md.get("namespace") else f"{st['kind']} {md['name']}"
        for where, cond in _conditions(st.get("status", {})):
            severity = BAD_CONDITIONS.get((str(cond.get("type")), str(cond.get("status"))))
            if severity is None:
                continue
            out.append(Finding(severity, ref, f"{where}[type={cond.get('type')}]",
                               f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": "), "status"))
    return out


def _served(statuses: Iterable[Mapping[str, Any]], kind: str) -> set[tuple[str, str]]:
    """(namespace, name) of objects of `kind` that cilia serves: an Ingress with a status; a route accepted
    by at least one cilia Gateway."""
    out = set()
    for st in statuses:
        if st["kind"] != kind:
            continue
        md = st["metadata"]
        if kind == "Ingress":
            out.add((md.get("namespace", ""), md["name"]))
            continue
        for parent in st.get("status", {}).get("parents", ()):
            if parent.get("parentRef", {}).get("kind", "Gateway") != "Gateway":
                continue
            if any(c.get("type") == "Accepted" and c.get("status") == "True" for c in parent.get("conditions", ())):
                out.add((md.get("namespace", ""), md["name"]))
    return out


def _ingress_paths(obj: KubeObject) -> Iterator[tuple[str, str, str]]:
    for rule in obj.spec.rules:
        for p in rule.paths:
            kind = "Exact" if p.path_type == "Exact" else "Prefix"
            yield rule.host, kind, p.path or "/"


def _route_paths(obj: KubeObject) -> Iterator[tuple[str, str, str]]:
    for host in obj.spec.hostnames or ("",):
        for rule in obj.spec.rules:
            for m in rule.matches or (None,):
                if m is None or m.path is None:
                    yield host, "Prefix", "/"
                elif m.path.type in ("Exact", "PathPrefix"):
                    yield host, "Exact" if m.path.type == "Exact" else "Prefix", m.path.value


def conflict_findings(snapshot: InputSnapshot, statuses: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """The same host and path routed both by an Ingress and by an HTTPRoute on a Gateway: which one a client
    reaches depends on the address its DNS name resolves to (or, on one shared port, on listener order)."""
    served_ing = _served(statuses, "Ingress")
    served_routes = _served(statuses, "HTTPRoute")
    claims: dict[tuple[str, str, str], str] = {}
    for ing in snapshot.list("Ingress"):
        if (ing.meta.namespace, ing.meta.name) in served_ing:
            for key in _ingress_paths(ing):
                claims.setdefault(key, str(ing.ref))
    out = []
    for route in snapshot.list("HTTPRoute"):
        if (route.meta.namespace, route.meta.name) not in served_routes:
            continue
        seen = set()
        for host, kind, path in _route_paths(route):
            other = claims.get((host, kind, path))
            if other and (host, path) not in seen:
                seen.add((host, path))
                out.append(Finding("warning", str(route.ref), "spec.rules",
                                   f"host {host or '*'} path {path} ({kind}) is also routed by {other}; clients "
                                   "reach one or the other depending on the address they connect to", "conflict"))
    return out


def proxies_of(snapshot: InputSnapshot, statuses: Sequence[Mapping[str, Any]]) -> list[ProxyId]:
    """The proxies the manifests imply: each node (Node objects, pods' nodeName; else one stand-in), each
    Gateway, each IngressClass with an Ingress served."""
    nodes = {n.meta.name for n in snapshot.list("Node")}
    nodes |= {p.spec.node_name for p in snapshot.list("Pod") if getattr(p.spec, "node_name", "")}
    ids = [ProxyId("node", n) for n in sorted(nodes or {ANALYZE_NODE})]
    ids += [ProxyId("gateway", f"{g.meta.namespace}/{g.meta.name}") for g in snapshot.list("Gateway")]
    classes = {c.meta.name for c in snapshot.list("IngressClass")}
    ids += [ProxyId("ingress", c) for c in sorted(classes)]
    return ids


def _endpoints(listener: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Where a listener binds: its address and its additional addresses."""
    out = []
    for addr in [listener.get("address", {}), *(a.get("address", {}) for a in listener.get("additionalAddresses", []))]:
        sa = addr.get("socketAddress")
        if isinstance(sa, Mapping) and "portValue" in sa:
            out.append((str(sa.get("address", "")), int(sa["portValue"])))
    return out


def port_findings(world: RenderedWorld, proxies: Iterable[ProxyId]) -> list[Finding]:
    """Two listeners of one proxy on the same port (same address, or one of them a wildcard): Envoy binds
    only one of them."""
    out = []
    for proxy in proxies:
        label = "node~* (every node)" if proxy == ProxyId("node", ANALYZE_NODE) else str(proxy)
        cfg = proxy_config_json(world.for_proxy(proxy))
        bound: list[tuple[str, int, str]] = []
        for lst in cfg["listeners"]:
            if lst.get("bindToPort") is False:
                continue
            mine = _endpoints(lst)
            for addr, port in mine:
                for other_addr, other_port, other_name in bound:
                    if port == other_port and (addr == other_addr or "0.0.0.0" in (addr, other_addr)
                                               or "::" in (addr, other_addr)):
                        out.append(Finding("error", "", "", f"proxy {label}: listeners {other_name} ({other_addr}:"
                                                            f"{other_port}) and {lst['name']} ({addr}:{port}) "
                                                            "bind the same port", "conflict"))
            bound.extend((addr, port, str(lst["name"])) for addr, port in mine)
    return out


@dataclass(frozen=True, slots=True)
class PodLike:
    """A pod or a workload's pod template, as far as selectors and the mesh mode care."""

    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    ref: str


def pods_of(snapshot: InputSnapshot, raw: Sequence[RawDoc]) -> list[PodLike]:
    out = [PodLike(p.meta.namespace, dict(p.meta.labels), dict(p.meta.annotations), str(p.ref))
           for p in snapshot.list("Pod")]
    for doc in raw:
        if doc.kind not in WORKLOAD_KINDS:
            continue
        spec = doc.body.get("spec") or {}
        if doc.kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        md = ((spec.get("template") or {}).get("metadata")) or {}
        out.append(PodLike(doc.namespace or "default", {str(k): str(v) for k, v in (md.get("labels") or {}).items()},
                           {str(k): str(v) for k, v in (md.get("annotations") or {}).items()},
                           f"{doc.ref} spec.template"))
    return out


def mesh_findings(snapshot: InputSnapshot, pods: Sequence[PodLike], opts: TranslateOptions) -> list[Finding]:
    """GAMMA routes (parentRef a Service) that no mesh pod would use: only traffic from pods in mode node or
    sidecar goes through a proxy; a consumer route applies to clients in its own namespace only."""
    def in_mesh(pod: PodLike) -> bool:
        ns = snapshot.get("Namespace", "", pod.namespace)
        try:
            mode = resolve_mesh_mode(dict(ns.meta.labels) if ns else None, dict(ns.meta.annotations) if ns else None,
                                     pod.labels, pod.annotations, opts.mesh_default_mode)  # type: ignore[arg-type]
        except ValueError:
            return False
        return mode != "off"

    meshed = [p for p in pods if in_mesh(p)]
    out = []
    for kind in ("HTTPRoute", "GRPCRoute"):
        for route in snapshot.list(kind):
            for i, parent in enumerate(route.spec.parent_refs):
                if parent.kind != "Service" or parent.group not in ("", "core"):
                    continue
                producer = parent.namespace == route.meta.namespace
                clients = meshed if producer else [p for p in meshed if p.namespace == route.meta.namespace]
                if clients:
                    continue
                scope = "anywhere" if producer else f"in namespace {route.meta.namespace}"
                out.append(Finding("warning", str(route.ref), f"spec.parentRefs[{i}]",
                                   f"no pod {scope} is in the mesh (cilia.io/mesh: node|sidecar, default "
                                   f"{opts.mesh_default_mode}), so no traffic to Service {parent.namespace}/"
                                   f"{parent.name} goes through this route", "mesh"))
    return out


def _selector(raw: Any, where: str) -> LabelSelector | None:
    try:
        return parse_label_selector(raw, where)
    except ValidationError:
        return None  # the control plane reports malformed selectors where it reads them


def selector_findings(snapshot: InputSnapshot, raw: Sequence[RawDoc], pods: Sequence[PodLike]) -> list[Finding]:
    """Policies whose endpoint/pod selector selects no pod (checked when the input has pods or workloads),
    and CiliumEnvoyConfig nodeSelectors that select no Node (checked when the input has Node objects)."""
    out = []
    if pods:
        for doc in raw:
            if doc.kind not in POLICY_KINDS:
                continue
            spec = doc.body.get("spec") or {}
            if doc.kind == "NetworkPolicy":
                checks = [("spec.podSelector", spec.get("podSelector"))]
            else:
                specs = [("spec", spec)] if spec else []
                specs += [(f"specs[{i}]", s) for i, s in enumerate(doc.body.get("specs") or [])]
                checks = [(f"{w}.endpointSelector", s.get("endpointSelector")) for w, s in specs
                          if isinstance(s, Mapping) and "endpointSelector" in s]
            for where, sel_raw in checks:
                sel = _selector(sel_raw, where)
                if sel is None:
                    continue
                scope = [p for p in pods if doc.kind == "CiliumClusterwideNetworkPolicy"
                         or p.namespace == (doc.namespace or "default")]
                if not any(sel.matches(p.labels) for p in scope):
                    out.append(Finding("warning", doc.ref, where, "selects no pod in the input (it has no effect "
                                       "on the workloads given)", "selector", doc.location))
    nodes = list(snapshot.list("Node"))
    if nodes:
        for kind in ENVOY_CONFIG_KINDS:
            for obj in snapshot.list(kind):
                sel = obj.spec.node_selector
                if sel is not None and not any(sel.matches(n.meta.labels) for n in nodes):
                    out.append(Finding("warning", str(obj.ref), "spec.nodeSelector",
                                       f"selects none of the {len(nodes)} Node(s) in the input", "selector"))
    return out


# -- Envoy validation --------------------------------------------------------------------------------------
def find_envoy() -> str | None:
    here = str(Path(sys.executable).parent)
    return shutil.which("envoy") or shutil.which("envoy", path=here)


def _strip_type(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "@type"}


def validation_bootstrap(config: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A bootstrap that holds one proxy's rendered listeners (their RDS routes inlined), clusters and
    secrets as static resources, so `envoy --mode validate` checks all of them without a control plane."""
    routes = {r["name"]: _strip_type(r) for r in config.get("routes", [])}

    def inline(listener: Mapping[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(_strip_type(listener)))
        chains = [*out.get("filterChains", []), *([out["defaultFilterChain"]] if "defaultFilterChain" in out else [])]
        for chain in chains:
            for flt in chain.get("filters", []):
                tc = flt.get("typedConfig", {})
                rds = tc.pop("rds", None) if isinstance(tc, dict) else None
                if rds is not None:
                    tc["routeConfig"] = routes.get(rds.get("routeConfigName", ""), {"name": "missing"})
        return out

    return {
        "node": {"id": f"node~{ANALYZE_NODE}", "cluster": "cilia-analyze"},
        "static_resources": {
            "listeners": [inline(x) for x in config.get("listeners", [])],
            "clusters": [*(_strip_type(c) for c in config.get("clusters", [])), {
                "name": "cilia-xds", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "cilia-xds", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}],
            "secrets": [_strip_type(s) for s in config.get("secrets", [])],
        },
        "dynamic_resources": {"ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "cilia-xds"}}]}},
    }


def envoy_validate(envoy: str, config: Mapping[str, list[Any]], timeout: float = 60) -> str:
    """'' when Envoy accepts the config, else its error text."""
    with tempfile.TemporaryDirectory(prefix="cilia-analyze-") as tmp:
        path = os.path.join(tmp, "bootstrap.json")
        with open(path, "w") as f:
            json.dump(validation_bootstrap(config), f)
        proc = subprocess.run([envoy, "--mode", "validate", "-c", path, "--log-level", "critical"],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 0:
        return ""
    lines = [_envoy_message(ln, path) for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    wanted = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
    return " ".join((wanted or lines or [f"exit code {proc.returncode}"])[-3:])


def _envoy_message(line: str, bootstrap: str) -> str:
    """An Envoy log line without its `[time][thread][level][logger] [file:line]` prefix and without the
    name of the temporary bootstrap file."""
    line = line.strip()
    while line.startswith("["):
        end = line.find("]")
        if end < 0:
            break
        line = line[end + 1:].lstrip()
    return line.replace(f"error initializing configuration '{bootstrap}': ", "")


def envoy_findings(snapshot: InputSnapshot, opts: TranslateOptions, envoy: str,
                   rejected: set[str]) -> tuple[list[Finding], int]:
    """Each CiliumEnvoyConfig alone (with every other kind of object) rendered for a node and checked by
    Envoy; a rejection is reported on that config."""
    out = []
    checked = 0
    others = [o for kind, objs in snapshot.objects.items() if kind not in ENVOY_CONFIG_KINDS for o in objs.values()]
    for kind in ENVOY_CONFIG_KINDS:
        for obj in snapshot.list(kind):
            if str(obj.ref) in rejected:
                continue  # already reported: it does not translate
            single = InputSnapshot.of([*others, obj])
            world = render_world(translate(single, opts).ir)
            config = proxy_config_json(world.for_proxy(ProxyId("node", ANALYZE_NODE)), redact=False)
            if not any(config.values()):
                continue
            checked += 1
            error = envoy_validate(envoy, config)
            if error:
                out.append(Finding("error", str(obj.ref), "spec.resources", f"Envoy rejects it: {error}", "envoy"))
    return out, checked


# -- the whole analysis ------------------------------------------------------------------------------------
def analyze(paths: Sequence[str], opts: TranslateOptions | None = None, *, envoy: str | None = None) -> Report:
    """Run every check; `envoy` is the binary to validate CiliumEnvoyConfigs with (None: skip). Raises
    SourceError when a path does not exist."""
    opts = opts or TranslateOptions()
    store, raw, files = load(paths)
    snapshot = store.snapshot()
    result: TranslationResult = translate(snapshot, opts)
    world = render_world(result.ir)
    statuses = [s.as_dict() for s in result.statuses]
    report = Report(files=files, objects=snapshot.count())
    issues = list(dict.fromkeys((*snapshot.issues, *result.issues, *world.issues)))
    report.findings += issue_findings(issues, "translate")
    report.findings += status_findings(statuses)
    report.findings += conflict_findings(snapshot, statuses)
    report.findings += port_findings(world, proxies_of(snapshot, statuses))
    pods = pods_of(snapshot, raw)
    report.findings += mesh_findings(snapshot, pods, opts)
    report.findings += selector_findings(snapshot, raw, pods)
    if envoy:
        rejected = {i.object for i in issues if i.severity == "error"}
        found, checked = envoy_findings(snapshot, opts, envoy, rejected)
        report.findings += found
        report.envoy = f"{checked} CiliumEnvoyConfig(s) checked by {envoy}"
    locations = {str(o.ref): str(o.origin) for objs in snapshot.objects.values() for o in objs.values() if o.origin}
    locations |= {d.ref: d.location for d in raw}
    report.findings = sorted(dict.fromkeys(with_location(report.findings, locations)),
                             key=lambda f: (f.severity != "error", f.object, f.location, f.field, f.message))
    return report


def with_location(findings: Iterable[Finding], locations: Mapping[str, str]) -> list[Finding]:
    """Fill in the file#document of findings whose object the input names."""
    return [f if f.location or f.object not in locations else replace(f, location=locations[f.object])
            for f in findings]


__all__ = ["EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "Finding", "Report", "analyze", "find_envoy"]
