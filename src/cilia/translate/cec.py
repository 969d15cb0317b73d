"""CiliumEnvoyConfig / CiliumClusterwideEnvoyConfig -> bundles of user-written Envoy resources.

The resources are read with Cilium's rules (names qualified as `namespace/cec-name/name`, clusterwide
`/ccec-name/name`; config sources and circuit breakers filled in; see cec_parse.py). They stay JSON
here; rendering parses them into Envoy messages and reports what does not parse or validate. A config
with any error is rejected whole, as in Cilium: half a config is worse than none.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir.model import (
    NODE_STATIC_CLUSTERS,
    Bundle,
    LabelRequirement,
    NodeSelector,
    ProxyScope,
    RawResource,
    ServiceRedirect,
)
from cilia.k8s.cilium import EnvoyConfigSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.selector import LabelSelector
from cilia.k8s.store import InputSnapshot
from cilia.translate.cec_parse import (
    SUPPORTED_TYPES,
    T_CLUSTER,
    T_ENDPOINT,
    T_LISTENER,
    ConfigParser,
    child,
    copy_json,
    qualify,
    resource_name,
)
from cilia.translate.context import Memo, Partial, TranslateOptions
from cilia.translate.incremental import memo_enabled

CEC_SCOPE_ROLES = frozenset({"node"})
# Where listeners without an address bind (Cilium's proxy port range).
LISTENER_PORT_BASE = 10000
LISTENER_PORT_SPAN = 10000


def to_node_selector(sel: LabelSelector) -> NodeSelector:
    return NodeSelector(sel.match_labels, tuple(LabelRequirement(r.key, r.operator, r.values)  # type: ignore[arg-type]
                                               for r in sel.match_expressions))


ClusterRef = tuple[str, str, str]  # (object, field, cluster name as resolved)
Translated = tuple[Bundle | None, tuple[ServiceRedirect, ...], tuple[Issue, ...], tuple[ClusterRef, ...]]
_MEMO: Memo[Translated] = Memo()  # per config, keyed by its content


def translate_envoy_configs(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    bundles: list[Bundle] = []
    redirects: list[ServiceRedirect] = []
    issues: list[Issue] = []
    refs: list[ClusterRef] = []
    for kind in ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig"):
        for obj in snapshot.list(kind):
            done = _MEMO.get((kind, obj.content_hash))
            if done is None:
                done = _MEMO.put((kind, obj.content_hash), _translate_config(kind, obj))
            bundle, more_redirects, more_issues, more_refs = done
            if bundle is not None:
                bundles.append(bundle)
                refs.extend(more_refs)
            redirects.extend(more_redirects)
            issues.extend(more_issues)
    _MEMO.rotate()
    bundles, redirects, bound = _bind_addressless_listeners(bundles, redirects)
    issues.extend(bound)
    return Partial(bundles=tuple(bundles), redirects=tuple(redirects), issues=tuple(issues),
                   cluster_refs=tuple(refs))


def _cluster_names(b: Bundle) -> frozenset[str]:
    return frozenset([c.name for c in b.clusters] + [r.name for r in b.raw if r.type_url == T_CLUSTER])


@dataclass(slots=True)
class _Known:
    """The last call's bundles (by identity, each with its cluster names), how many of them define each
    cluster name, its refs and its answer: a call whose bundles differ in a few only updates the counts
    with those, and rechecks the refs only when a name appeared or disappeared or the refs changed."""

    bundles: dict[int, tuple[Bundle, frozenset[str]]]
    counts: dict[str, int]
    refs: list[ClusterRef]
    dangling: list[Issue]


_LAST_KNOWN: list[_Known] = []  # at most one


def dangling_cluster_refs(bundles: Iterable[Bundle], refs: Iterable[ClusterRef]) -> list[Issue]:
    """Warnings for CiliumEnvoyConfig routes to clusters that nothing defines: no config (of any
    translator) and not the node bootstrap's static clusters (NODE_STATIC_CLUSTERS)."""
    refs = list(refs)
    if not memo_enabled():
        known = set(NODE_STATIC_CLUSTERS)
        for b in bundles:
            known |= _cluster_names(b)
        return _dangling(refs, known)
    last = _LAST_KNOWN[0] if _LAST_KNOWN else None
    now: dict[int, tuple[Bundle, frozenset[str]]] = {}
    gone = dict(last.bundles) if last is not None else {}
    added: list[frozenset[str]] = []
    for b in bundles:
        if id(b) in now:
            continue  # the same object twice: its names count once
        hit = gone.pop(id(b), None)
        if hit is None:  # (the old bundles are alive in `last`, so no new object has one's id)
            hit = (b, _cluster_names(b))
            added.append(hit[1])
        now[id(b)] = hit
    if last is None:
        counts: dict[str, int] = dict.fromkeys(NODE_STATIC_CLUSTERS, 1)
        flipped = True
    else:
        counts = last.counts if not added and not gone else dict(last.counts)
        flipped = False
    for names in added:
        for name in names:
            n = counts.get(name, 0)
            counts[name] = n + 1
            flipped = flipped or n == 0
    for _, names in gone.values():
        for name in names:
            n = counts[name] - 1
            if n:
                counts[name] = n
            else:
                del counts[name]
                flipped = True
    if flipped or last is None or len(refs) != len(last.refs) or not all(map(operator.is_, refs, last.refs)):
        dangling = _dangling(refs, counts)
    else:
        dangling = last.dangling
    _LAST_KNOWN[:] = [_Known(now, counts, refs, dangling)]  # holds its bundles: ids stay unique
    return list(dangling)


def _dangling(refs: Iterable[ClusterRef], known: Container[str]) -> list[Issue]:
    return [Issue(obj, where, f"cluster {name!r} is defined by no config nor by the node bootstrap: Envoy rejects "
                              "a listener whose inline routes use it, and answers 503 on other routes to it",
                  severity="warning")
            for obj, where, name in refs if name not in known]


def _has_address(body: Mapping[str, Any]) -> bool:
    return any(k in body for k in ("address", "internal_listener", "internalListener", "api_listener",
                                   "apiListener"))


def _explicit_port(body: Mapping[str, Any]) -> int:
    sock = child(child(body, "address"), "socket_address")
    port = child(sock, "port_value") if sock is not None else None
    return port if isinstance(port, int) else 0


def _bind_addressless_listeners(bundles: list[Bundle], redirects: list[ServiceRedirect]
                                ) -> tuple[list[Bundle], list[ServiceRedirect], list[Issue]]:
    """Cilium leaves a CEC listener's address out and binds it to a proxy port of its own, where the
    Services redirected to it (`spec.services`) arrive. cilia does the same: such a listener binds
    127.0.0.1 on a port derived from its name (stable across restarts and replicas, probing past ports
    already taken). Every redirect record carries its listener's port, so the node agent can send the
    Service's traffic there."""
    raws = [(b, r) for b in bundles for r in b.raw if r.type_url == T_LISTENER]
    taken = {_explicit_port(r.body) for _, r in raws if _has_address(r.body)}
    assigned: dict[str, int] = {}
    issues: list[Issue] = []
    for _, r in sorted(raws, key=lambda br: br[1].name):
        if _has_address(r.body):
            continue
        port = LISTENER_PORT_BASE + int.from_bytes(hashlib.blake2b(r.name.encode(), digest_size=4).digest()) \
            % LISTENER_PORT_SPAN
        while port in taken:
            port = LISTENER_PORT_BASE + (port - LISTENER_PORT_BASE + 1) % LISTENER_PORT_SPAN
        taken.add(port)
        assigned[r.name] = port
        issues.append(Issue(", ".join(r.sources), f"{r.field}.address",
                            f"not set: listener {r.name!r} binds 127.0.0.1:{port}", severity="info"))
    ports = {r.name: _explicit_port(r.body) for _, r in raws if _has_address(r.body)} | assigned
    redirects = [replace(x, listener_port=ports.get(x.listener, 0)) for x in redirects]
    if not assigned:
        return bundles, redirects, issues
    out = []
    for b in bundles:
        if not any(r.name in assigned for r in b.raw if r.type_url == T_LISTENER):
            out.append(b)
            continue
        new_raw = tuple(
            replace(r, body={**r.body, "address": {"socket_address": {"address": "127.0.0.1",
                                                                      "port_value": assigned[r.name]}}})
            if r.type_url == T_LISTENER and r.name in assigned else r for r in b.raw)
        out.append(replace(b, raw=new_raw))
    return out, redirects, issues


def _translate_config(kind: str, obj: KubeObject) -> Translated:
    spec: EnvoyConfigSpec = obj.spec
    ref = str(obj.ref)
    ns = obj.meta.namespace
    issues: list[Issue] = []
    bad = False
    bodies: list[tuple[int, str, dict[str, Any]]] = []
    for i, res in enumerate(spec.resources):
        type_url = res["@type"]
        if type_url not in SUPPORTED_TYPES:
            issues.append(Issue(ref, f"spec.resources[{i}].@type",
                                f"unsupported resource type {type_url!r} (supported: Listener, "
                                "RouteConfiguration, Cluster, ClusterLoadAssignment, Secret)"))
            bad = True
            continue
        body = copy_json(dict(res))
        if not resource_name(type_url, body):
            field = "cluster_name" if type_url == T_ENDPOINT else "name"
            issues.append(Issue(ref, f"spec.resources[{i}].{field}", "is required"))
            bad = True
            continue
        bodies.append((i, type_url, body))
    defined = frozenset(resource_name(t, b) for _, t, b in bodies if t == T_CLUSTER)
    parser = ConfigParser(ns, obj.meta.name, defined)
    raws: list[RawResource] = []
    seen: set[tuple[str, str]] = set()
    for i, type_url, body in bodies:
        parser.parse(type_url, body, f"spec.resources[{i}]")
        qname = resource_name(type_url, body)
        if (type_url, qname) in seen:
            issues.append(Issue(ref, f"spec.resources[{i}].name",
                                f"duplicate {type_url.rsplit('.', 1)[-1]} name {qname!r}"))
            bad = True
            continue
        seen.add((type_url, qname))
        raws.append(RawResource(type_url, qname, body, (ref,), f"spec.resources[{i}]"))
    parser.check()
    for f in parser.findings:
        issues.append(Issue(ref, f.field, f.message, severity=f.severity))
        bad = bad or f.severity == "error"
    if bad:
        return None, (), tuple(issues), ()  # rejected whole: half a config is worse than none
    selector = to_node_selector(spec.node_selector) if spec.node_selector is not None else None
    scope = ProxyScope(CEC_SCOPE_ROLES, None, selector)
    listeners = [r.name for r in raws if r.type_url == T_LISTENER]
    redirects = []
    for i, s in enumerate(spec.services):
        # As Cilium: a namespaced config redirects only Services of its own namespace; an entry without
        # `listener` goes to the config's last listener.
        svc_ns = s.namespace
        if ns and svc_ns != ns:
            issues.append(Issue(ref, f"spec.services[{i}].namespace",
                                f"a CiliumEnvoyConfig redirects only Services in its own namespace: {ns}/{s.name} "
                                f"is redirected, not {svc_ns}/{s.name}", severity="warning"))
            svc_ns = ns
        target = qualify(ns, obj.meta.name, s.listener, force=True) if s.listener else (listeners or [""])[-1]
        if target not in listeners:
            issues.append(Issue(ref, f"spec.services[{i}].listener",
                                f"this config has no listener {s.listener or '(any)'!r}: Service {svc_ns}/"
                                f"{s.name} is not redirected", severity="warning"))
            continue
        redirects.append(ServiceRedirect(svc_ns, s.name, s.ports, target, scope, (ref,)))
    bundle = Bundle(key=f"cec:{kind}:{ns}/{obj.meta.name}", scope=scope, raw=tuple(raws), sources=(ref,))
    return bundle, tuple(redirects), tuple(issues), tuple((ref, f, c) for f, c in parser.cluster_refs)
