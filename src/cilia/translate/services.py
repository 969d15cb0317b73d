"""Services + EndpointSlices (or core Endpoints) -> the shared EDS pool, and backend lookups.

Naming follows Cilium so CiliumEnvoyConfig clusters find their endpoints: `ns/svc` carries every
port's endpoints, `ns/svc:PORT` (service port number) and `ns/svc:NAME` (named ports) one port's.

Rules:
- Endpoint conditions (KEP-1672): ready endpoints take traffic; terminating endpoints that are still
  serving take it only when no endpoint of that port is ready anywhere; the rest never do. With
  `publishNotReadyAddresses` every endpoint counts as ready, as the API asks of every consumer.
- Ports: a slice port is matched to the Service port by name. A slice without ports (hand-written,
  file mode) takes the numeric targetPort, a named targetPort looked up in the Pod it points to, or
  the Service port.
- Locality: zone from the endpoint's `zone`, else its Node's `topology.kubernetes.io/zone` label;
  region from the Node's `topology.kubernetes.io/region`.
- ClusterMesh: slices labelled `cilia.io/cluster: NAME` from other clusters count only for Services
  annotated `service.cilium.io/global: "true"`; their localities carry the cluster name as sub_zone.
  `service.cilium.io/affinity: local|remote|none` puts the preferred side at priority 0 and the other
  at 1, so Envoy fails over only when the preferred side has no healthy endpoint.
- Upstream protocol: `appProtocol` decides when set (`kubernetes.io/h2c`, `grpc`, `h2c`, `http2` ->
  HTTP/2 with prior knowledge; anything else HTTP/1.1); without it, a port named `grpc`, `h2c` or
  `http2` (or `grpc-...`, except `grpc-web`) means HTTP/2.
- Headless Services (`clusterIP: None`) have no VIP but the same endpoints, so their pool entries are
  the same; ExternalName Services have no endpoints and resolve to a DNS cluster for the name.
- Mesh mTLS (`mesh_trust_domain` set): an endpoint whose address is a mesh pod's IP says which inbound
  proxy terminates mesh mTLS for it (`Endpoint.mesh_tls`: `sidecar`, or `node/NODE` for a node-mode
  pod), so mesh clients wrap only those connections in mTLS; other endpoints stay plaintext.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

from cilia.diagnostics import Issue
from cilia.ir.model import Cluster, Endpoint, EndpointSet, HashPolicy, LocalityEndpoints, UpstreamProtocol
from cilia.k8s.core import EndpointSliceSpec, PodSpec, ServicePort, ServiceSpec, SliceEndpoint
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot, Stamp
from cilia.mesh.mode import MeshMode, resolve_mesh_mode
from cilia.translate import incremental
from cilia.translate.context import Memo, Partial, TranslateOptions

CLUSTER_LABEL = "cilia.io/cluster"
LB_POLICY_ANNOTATION = "cilia.io/lb-policy"
HASH_HEADER_ANNOTATION = "cilia.io/hash-header"
LB_POLICIES = {"round-robin": "ROUND_ROBIN", "ring-hash": "RING_HASH"}
GLOBAL_ANNOTATION = "service.cilium.io/global"
AFFINITY_ANNOTATION = "service.cilium.io/affinity"
HTTP2_APP_PROTOCOLS = frozenset({"kubernetes.io/h2c", "h2c", "grpc", "http2"})
HTTP2_PORT_NAMES = ("grpc", "h2c", "http2")
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"


def eds_name(namespace: str, service: str, port: int | str | None = None) -> str:
    return f"{namespace}/{service}" if port is None else f"{namespace}/{service}:{port}"


def upstream_protocol(port: ServicePort) -> UpstreamProtocol:
    """HTTP/2 (prior knowledge) or HTTP/1.1 towards the endpoints of this Service port."""
    return _protocol_of(port.app_protocol, port.name)


@functools.lru_cache(maxsize=4096)  # a cluster's port names and appProtocols are few; its ports are not
def _protocol_of(app_protocol: str, port_name: str) -> UpstreamProtocol:
    app = app_protocol.lower()
    if app:
        return "http2" if app in HTTP2_APP_PROTOCOLS else "http1"
    name = port_name.lower()
    if name.startswith("grpc-web"):
        return "http1"
    if any(name == p or name.startswith(p + "-") for p in HTTP2_PORT_NAMES):
        return "http2"
    return "http1"


@dataclass(frozen=True, slots=True)
class BackendLookup:
    """A resolved Service backend: the cluster to use, or why there is none."""

    cluster: Cluster | None
    service_port: ServicePort | None
    reason: str = ""  # "BackendNotFound" / "PortNotFound" when cluster is None
    message: str = ""


def resolve_backend(snapshot: InputSnapshot, namespace: str, name: str, port: int | str | None,
                    protocol: UpstreamProtocol | None = None) -> BackendLookup:
    """The cluster serving `namespace/name:port`, shaped for HTTP (protocol from appProtocol) or TCP."""
    obj = snapshot.get("Service", namespace, name)
    if obj is None:
        return BackendLookup(None, None, "BackendNotFound", f"Service {namespace}/{name} not found")
    svc: ServiceSpec = obj.spec
    if svc.type == "ExternalName":
        # A DNS alias: the client's port is used as is (targetPort means nothing for a CNAME).
        if isinstance(port, str):
            named = svc.port(port)
            if named is None:
                return BackendLookup(None, None, "PortNotFound",
                                     f"Service {namespace}/{name} (ExternalName) has no port named {port!r}")
            sp = named
        elif port is None:
            if len(svc.ports) != 1:
                return BackendLookup(None, None, "PortNotFound",
                                     f"Service {namespace}/{name} is ExternalName: a port number is required")
            sp = svc.ports[0]
        else:
            sp = svc.port(port) or ServicePort("", port, port, "TCP", "")
        proto = protocol or upstream_protocol(sp)
        cluster = Cluster(name=f"{namespace}/{name}:{sp.port}", discovery="STRICT_DNS", protocol=proto,
                          dns_name=svc.external_name, dns_port=sp.port, sources=(str(obj.ref),))
        return BackendLookup(cluster, sp)
    if port is None:
        if len(svc.ports) != 1:
            return BackendLookup(None, None, "PortNotFound",
                                 f"Service {namespace}/{name} has {len(svc.ports)} ports: name one")
        sp = svc.ports[0]
    else:
        found = svc.port(port)
        if found is None:
            what = f"port {port}" if isinstance(port, int) else f"port named {port!r}"
            hint = " (a headless Service needs its ports listed to be used as a backend)" \
                if svc.headless and not svc.ports else ""
            return BackendLookup(None, None, "PortNotFound", f"Service {namespace}/{name} has no {what}{hint}")
        sp = found
    if sp.protocol not in ("TCP", ""):
        return BackendLookup(None, sp, "PortNotFound", f"Service {namespace}/{name} port {sp.port} is "
                                                       f"{sp.protocol}; only TCP ports can be backends")
    proto = protocol or upstream_protocol(sp)
    cname = eds_name(namespace, name, sp.port)
    lb, hashing = _balancing(obj.meta.annotations)
    return BackendLookup(Cluster(name=cname, eds_name=cname, protocol=proto, sources=(str(obj.ref),), lb_policy=lb,
                                 hash_policy=hashing), sp)


def _balancing(annotations: Mapping[str, str]) -> tuple[Literal["ROUND_ROBIN", "RING_HASH"],
                                                        tuple[HashPolicy, ...]]:
    """`cilia.io/lb-policy: ring-hash` hashes requests onto a ring of the endpoints: on the header
    `cilia.io/hash-header` names, else on the client (Envoy: its source IP; gRPC: its channel). An invalid
    value means round robin (reported by `translate_services`)."""
    if LB_POLICIES.get(annotations.get(LB_POLICY_ANNOTATION, "").strip().lower()) != "RING_HASH":
        return "ROUND_ROBIN", ()
    header = annotations.get(HASH_HEADER_ANNOTATION, "").strip().lower()
    if header:
        return "RING_HASH", (HashPolicy("header", header),)
    return "RING_HASH", (HashPolicy("source_ip"), HashPolicy("grpc_channel"))


def _slices_for(snapshot: InputSnapshot, svc_obj: KubeObject,
                by_service: dict[tuple[str, str], list[KubeObject]]) -> tuple[list[EndpointSliceSpec], tuple[str, ...]]:
    """The Service's slices (EndpointSlices, else core Endpoints), and the content hashes they came from."""
    objs = by_service.get((svc_obj.meta.namespace, svc_obj.meta.name), [])
    if objs:
        return [o.spec for o in objs], tuple(o.content_hash for o in objs)
    eps = snapshot.get("Endpoints", svc_obj.meta.namespace, svc_obj.meta.name)
    if eps is None:
        return [], ()
    return list(eps.spec.slices), (eps.content_hash,)


# Endpoint sets per Service, keyed by the Service's and its slices' content, the Pods a named target
# port is resolved through, Node topology labels and options.
_MEMO: Memo[tuple[dict[str, EndpointSet], tuple[Issue, ...]]] = Memo()


def _endpoint_port(sp: ServicePort, slc: EndpointSliceSpec, ep: SliceEndpoint,
                   pods: dict[str, PodSpec]) -> int | None:
    for p in slc.ports:
        if p.name == sp.name:
            return p.port
    if isinstance(sp.target_port, int):
        return sp.target_port if not slc.ports else None
    if isinstance(sp.target_port, str) and ep.target_pod in pods:
        for cp in pods[ep.target_pod].ports:
            if cp.name == sp.target_port:
                return cp.port
    if sp.target_port is None and not slc.ports:
        return sp.port
    return None


Entry = tuple[str, str, str, Endpoint]  # (cluster, region, zone, endpoint)


def _localities(entries: Iterable[Entry], affinity: str, local_cluster: str,
                is_global: bool) -> tuple[LocalityEndpoints, ...]:
    groups: dict[tuple[str, str, str], list[Endpoint]] = defaultdict(list)
    for cluster, region, zone, ep in entries:
        groups[(cluster, region, zone)].append(ep)
    out = []
    for (cluster, region, zone), eps in sorted(groups.items()):
        priority = 0
        if is_global and affinity == "local":
            priority = 0 if cluster == local_cluster else 1
        elif is_global and affinity == "remote":
            priority = 0 if cluster != local_cluster else 1
        unique = (eps[0],) if len(eps) == 1 else tuple(sorted(set(eps), key=lambda e: (e.address, e.port, e.hostname)))
        out.append(LocalityEndpoints(unique,
                                     zone=zone, region=region, sub_zone=cluster if is_global else "",
                                     priority=priority))
    # Envoy requires priorities to be contiguous from 0.
    used = sorted({loc.priority for loc in out})
    if used == list(range(len(used))):
        return tuple(out)  # already are (always, outside ClusterMesh affinity)
    remap = {p: i for i, p in enumerate(used)}
    return tuple(LocalityEndpoints(loc.endpoints, loc.zone, loc.region, loc.sub_zone, remap[loc.priority])
                 for loc in out)


def mesh_tls_by_ip(snapshot: InputSnapshot, opts: TranslateOptions) -> dict[str, str]:
    """Pod IP -> `Endpoint.mesh_tls` for mesh pods (empty without mesh mTLS). Bad mode values are the
    mesh translator's to report; such pods count as outside the mesh here."""
    if not opts.mesh_trust_domain:
        return {}
    namespaces = {o.meta.name: o.meta for o in snapshot.list("Namespace")}
    out: dict[str, str] = {}
    for obj in snapshot.list("Pod"):
        spec: PodSpec = obj.spec
        if spec.host_network or spec.phase in ("Succeeded", "Failed") or not spec.pod_ips:
            continue
        ns = namespaces.get(obj.meta.namespace)
        try:
            mode = resolve_mesh_mode(ns.labels if ns else None, ns.annotations if ns else None, obj.meta.labels,
                                     obj.meta.annotations, cast(MeshMode, opts.mesh_default_mode))
        except ValueError:
            continue
        tag = "sidecar" if mode == "sidecar" else f"node/{spec.node_name}" if mode == "node" and spec.node_name \
            else ""
        if tag:
            for ip in spec.pod_ips:
                out.setdefault(ip, tag)
    return out


@dataclass(slots=True)
class _Last:
    """The last full or delta run's inputs (kind mappings, by identity) and per-Service results, so an
    edit to a few Services or EndpointSlices recomputes those alone."""

    opts: TranslateOptions
    maps: dict[str, object]  # kind -> the mapping read (Pod, Node, Namespace, Endpoints: must be the same)
    services: Mapping[tuple[str, str], KubeObject]
    slices: Mapping[tuple[str, str], KubeObject]
    slice_keys: dict[tuple[str, str], set[tuple[str, str]]]  # Service key -> its slices' keys
    per_service: dict[tuple[str, str], tuple[dict[str, EndpointSet], tuple[Issue, ...], bool]]
    pods: dict[str, PodSpec]
    node_labels: dict[str, Mapping[str, str]]
    mesh_tls: dict[str, str]
    pool: dict[str, EndpointSet]
    issues: tuple[Issue, ...]
    kinds: tuple[str, ...]  # kinds the run read
    stamp: Stamp | None = None  # the store's snapshot it was made from


_LAST: list[_Last] = []  # at most one; any mismatch with the new inputs means a full run


def _kind(root: InputSnapshot, kind: str) -> Mapping[tuple[str, str], KubeObject]:
    return root.objects.get(kind) or {}


def translate_services(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    root = incremental.root_snapshot(snapshot)
    if root is None or not incremental.memo_enabled():
        return _translate_services(snapshot, opts)  # leaves _LAST as it is: still true of its inputs
    last = _LAST[0] if _LAST else None
    if last is not None:
        done = _delta(last, root, opts)
        if done is not None:
            for kind in last.kinds:
                snapshot.list(kind)  # the same reads as a full run (the caller records kinds)
            return done
    _LAST.clear()
    per_service: dict[tuple[str, str], tuple[dict[str, EndpointSet], tuple[Issue, ...], bool]] = {}
    part = _translate_services(snapshot, opts, per_service)
    _LAST.append(_remember(root, opts, part, per_service))
    return part


_SAME_KINDS = ("Pod", "Node", "Namespace", "Endpoints")


def _remember(root: InputSnapshot, opts: TranslateOptions, part: Partial,
              per_service: dict[tuple[str, str], tuple[dict[str, EndpointSet], tuple[Issue, ...], bool]]) -> _Last:
    services = _kind(root, "Service")
    slices = _kind(root, "EndpointSlice")
    slice_keys: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for key, obj in slices.items():
        slice_keys[(key[0], obj.spec.service_name)].add(key)
    pod_objs = {f"{o.meta.namespace}/{o.meta.name}": o for o in _kind(root, "Pod").values()}
    node_labels = {o.meta.name: o.meta.labels for o in _kind(root, "Node").values()}
    kinds = {"EndpointSlice", "Pod", "Node", "Service"}
    if opts.mesh_trust_domain:
        kinds.add("Namespace")
    if any(r[2] for r in per_service.values()):
        kinds.add("Endpoints")
    return _Last(opts, {k: root.objects.get(k) for k in _SAME_KINDS}, services, slices, dict(slice_keys),
                 per_service, {k: o.spec for k, o in pod_objs.items()}, node_labels, mesh_tls_by_ip(root, opts),
                 dict(part.endpoints), part.issues, tuple(sorted(kinds)), root.stamp)


def _changed(root: InputSnapshot, last: _Last, kind: str, now: Mapping[tuple[str, str], KubeObject],
             before: Mapping[tuple[str, str], KubeObject]) -> list[tuple[str, str]]:
    """Keys of `kind` added, changed or removed since `last`: from the store's record of changes when it
    has one, else by comparing the two mappings object by object."""
    changes = root.changes_after(last.stamp)
    if changes is not None:
        return [(ns, name) for k, ns, name in changes[1] if k == kind]
    changed = [k for k, o in now.items() if before.get(k) is not o]
    return changed + [k for k in before if k not in now]


def _one_service(root: InputSnapshot, last: _Last, key: tuple[str, str]) -> tuple[dict[str, EndpointSet],
                                                                                  tuple[Issue, ...], bool]:
    """One Service's endpoint sets and issues, and whether it read core Endpoints (it has no slices)."""
    svc_obj = last.services[key]
    if svc_obj.spec.type == "ExternalName":
        return {}, (), False
    objs = [last.slices[k] for k in sorted(last.slice_keys.get(key, ()))]
    if objs:
        slices = [o.spec for o in objs]
    else:
        eps = root.get("Endpoints", key[0], key[1])
        slices = list(eps.spec.slices) if eps is not None else []
    pool, issues = _service_endpoints(svc_obj, slices, last.pods, last.node_labels, last.opts, last.mesh_tls)
    return pool, issues, not objs


def _delta(last: _Last, root: InputSnapshot, opts: TranslateOptions) -> Partial | None:
    """The result from `last` plus the Services whose object or slices changed; None: run in full."""
    if not (opts is last.opts or opts == last.opts) or \
            any(root.objects.get(k) is not v for k, v in last.maps.items()):
        return None
    services, slices = _kind(root, "Service"), _kind(root, "EndpointSlice")
    touched: set[tuple[str, str]] = set()
    if services is not last.services:
        if services.keys() != last.services.keys():
            return None  # added or removed: their place in the order changes
        touched.update(_changed(root, last, "Service", services, last.services))
    slice_keys = last.slice_keys
    if slices is not last.slices:
        old_slices = last.slices
        changed = _changed(root, last, "EndpointSlice", slices, old_slices)
        slice_keys = dict(slice_keys) if changed else slice_keys
        copied: set[tuple[str, str]] = set()  # the sets are last's: copy one before changing it
        for k in changed:
            for obj in (old_slices.get(k), slices.get(k)):
                if obj is None:
                    continue
                svc_key = (k[0], obj.spec.service_name)
                touched.add(svc_key)
                if svc_key not in copied:
                    copied.add(svc_key)
                    slice_keys[svc_key] = set(slice_keys.get(svc_key, ()))
                keys = slice_keys.setdefault(svc_key, set())
                if obj is slices.get(k):
                    keys.add(k)
                else:
                    keys.discard(k)
                    if not keys:
                        del slice_keys[svc_key]
    trial = _Last(opts, last.maps, services, slices, slice_keys, dict(last.per_service), last.pods,
                  last.node_labels, last.mesh_tls, last.pool, last.issues, last.kinds, root.stamp)
    pool = dict(last.pool)
    issues_changed = False
    for key in touched:
        if key not in services:
            continue  # slices of a Service that does not exist
        before = last.per_service[key]
        now = _one_service(root, trial, key)
        if list(now[0]) != list(before[0]) or now[2] != before[2]:
            return None  # other endpoint names (their place in the order), or Endpoints read or not
        pool.update(now[0])
        issues_changed = issues_changed or now[1] != before[1]
        trial.per_service[key] = now
    if issues_changed:
        trial.issues = tuple(i for key in sorted(services) for i in trial.per_service[key][1])
    trial.pool = pool
    _LAST[0] = trial
    return Partial(endpoints=pool, issues=trial.issues)


def _translate_services(snapshot: InputSnapshot, opts: TranslateOptions, per_service: dict[
        tuple[str, str], tuple[dict[str, EndpointSet], tuple[Issue, ...], bool]] | None = None) -> Partial:
    """Every Service in turn; `per_service` (when given) collects each one's result, for `_delta`."""
    by_service: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
    for obj in snapshot.list("EndpointSlice"):
        by_service[(obj.meta.namespace, obj.spec.service_name)].append(obj)
    pod_objs = {f"{o.meta.namespace}/{o.meta.name}": o for o in snapshot.list("Pod")}
    pods = {k: o.spec for k, o in pod_objs.items()}
    node_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Node")}
    topology = tuple(sorted((n, labels.get(ZONE_LABEL, ""), labels.get(REGION_LABEL, ""))
                            for n, labels in node_labels.items()))
    mesh_tls = mesh_tls_by_ip(snapshot, opts)
    pool: dict[str, EndpointSet] = {}
    issues: list[Issue] = []
    for svc_obj in snapshot.list("Service"):
        svc: ServiceSpec = svc_obj.spec
        if svc.type == "ExternalName":
            if per_service is not None:
                per_service[(svc_obj.meta.namespace, svc_obj.meta.name)] = ({}, (), False)
            continue
        slices, slice_hashes = _slices_for(snapshot, svc_obj, by_service)
        via_pods: tuple[str, ...] = ()
        if any(isinstance(sp.target_port, str) for sp in svc.ports):
            targets = sorted({ep.target_pod for slc in slices for ep in slc.endpoints if ep.target_pod})
            via_pods = tuple(pod_objs[t].content_hash if t in pod_objs else "" for t in targets)
        tags = tuple(mesh_tls.get(a, "") for slc in slices for ep in slc.endpoints for a in ep.addresses) \
            if mesh_tls else ()
        key = (svc_obj.content_hash, slice_hashes, via_pods, topology, opts.local_cluster, tags)
        cached = _MEMO.get(key)
        if cached is None:
            cached = _service_endpoints(svc_obj, slices, pods, node_labels, opts, mesh_tls)
            _MEMO.put(key, cached)
        pool.update(cached[0])
        issues.extend(cached[1])
        if per_service is not None:
            key2 = (svc_obj.meta.namespace, svc_obj.meta.name)
            per_service[key2] = (cached[0], cached[1], not by_service.get(key2))
    _MEMO.rotate()
    return Partial(endpoints=pool, issues=tuple(issues))


def _service_endpoints(svc_obj: KubeObject, slices: list[EndpointSliceSpec], pods: dict[str, PodSpec],
                       node_labels: dict[str, Mapping[str, str]], opts: TranslateOptions,
                       mesh_tls: Mapping[str, str]) -> tuple[dict[str, EndpointSet], tuple[Issue, ...]]:
    svc: ServiceSpec = svc_obj.spec
    pool: dict[str, EndpointSet] = {}
    issues: list[Issue] = []
    ref = str(svc_obj.ref)
    annotations = svc_obj.meta.annotations
    is_global = annotations.get(GLOBAL_ANNOTATION, "").lower() == "true" if annotations else False
    affinity = annotations.get(AFFINITY_ANNOTATION, "none").lower() if annotations else "none"
    if affinity not in ("local", "remote", "none"):
        issues.append(Issue(ref, f"metadata.annotations.{AFFINITY_ANNOTATION}",
                            f"must be local, remote or none, got {affinity!r}; using none", severity="warning"))
        affinity = "none"
    policy = annotations.get(LB_POLICY_ANNOTATION) if annotations else None
    if policy is not None and policy.strip().lower() not in LB_POLICIES:
        issues.append(Issue(ref, f"metadata.annotations.{LB_POLICY_ANNOTATION}",
                            f"must be {' or '.join(LB_POLICIES)}, got {policy!r}; using round-robin"))
    if HASH_HEADER_ANNOTATION in annotations and (policy or "").strip().lower() != "ring-hash":
        issues.append(Issue(ref, f"metadata.annotations.{HASH_HEADER_ANNOTATION}",
                            f"has no effect without {LB_POLICY_ANNOTATION}: ring-hash", severity="warning"))
    if affinity != "none" and not is_global:
        issues.append(Issue(ref, f"metadata.annotations.{AFFINITY_ANNOTATION}",
                            f"has no effect without {GLOBAL_ANNOTATION}: \"true\"", severity="warning"))
    slices = [s for s in slices if is_global or s.labels.get(CLUSTER_LABEL, opts.local_cluster) == opts.local_cluster]
    all_ports: list[Entry] = []
    port_locs: list[tuple[LocalityEndpoints, ...]] = []
    for sp in svc.ports:
        if sp.protocol not in ("TCP", ""):
            continue
        ready: list[Entry] = []
        fallback: list[Entry] = []
        for slc in slices:
            if slc.address_type == "FQDN":
                continue
            cluster = slc.labels.get(CLUSTER_LABEL, opts.local_cluster)
            for ep in slc.endpoints:
                port = _endpoint_port(sp, slc, ep, pods)
                if port is None:
                    continue
                labels = node_labels.get(ep.node_name, {})
                zone = ep.zone or labels.get(ZONE_LABEL, "")
                region = labels.get(REGION_LABEL, "")
                for addr in ep.addresses:
                    entry = (cluster, region, zone, Endpoint(addr, port, "HEALTHY", ep.hostname,
                                                             mesh_tls.get(addr, "")))
                    if ep.ready or svc.publish_not_ready:
                        ready.append(entry)
                    elif ep.serving and ep.terminating:
                        fallback.append(entry)
        # Terminating-but-serving endpoints take traffic only when nothing is ready (KEP-1672).
        chosen = ready or fallback
        all_ports.extend(chosen)
        locs = _localities(chosen, affinity, opts.local_cluster, is_global)
        port_locs.append(locs)
        names = [eds_name(svc_obj.meta.namespace, svc_obj.meta.name, sp.port)]
        if sp.name:
            names.append(eds_name(svc_obj.meta.namespace, svc_obj.meta.name, sp.name))
        for n in names:
            pool[n] = EndpointSet(n, locs, (ref,))
    whole = eds_name(svc_obj.meta.namespace, svc_obj.meta.name)
    # One port: the whole Service's endpoints are that port's (the very same tuple: rendered once).
    whole_locs = port_locs[0] if len(port_locs) == 1 else \
        _localities(all_ports, affinity, opts.local_cluster, is_global)
    pool[whole] = EndpointSet(whole, whole_locs, (ref,))
    return pool, tuple(issues)
