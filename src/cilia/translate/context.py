"""Inputs every translator shares, and the shape of what each returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cilia.diagnostics import Issue
from cilia.ir.model import Bundle, EndpointSet, ServiceRedirect


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    ingress_http_port: int = 80
    ingress_https_port: int = 443
    ingress_address: str = "0.0.0.0"
    ingress_status_address: str = ""  # reported in Ingress status.loadBalancer; empty = ingress_address
    ingress_default_mode: str = "dedicated"  # Ingresses without ingress.cilia.io/loadbalancer-mode: dedicated|shared
    local_cluster: str = "default"  # ClusterMesh: the name of this cluster
    mesh_default_mode: str = "off"  # node | sidecar | proxyless | off
    mesh_capture_port: int = 15001
    mesh_inbound_port: int = 15006
    # Bind addresses of the mesh listeners. "pod-ip" (sidecar listeners only) binds the pod's own IP,
    # which gives each sidecar a listener of its own (several sidecars sharing one network namespace).
    mesh_capture_address: str = "127.0.0.1"  # node~ outbound capture listener
    mesh_sidecar_capture_address: str = "127.0.0.1"  # sidecar~ outbound capture listener
    mesh_inbound_address: str = "0.0.0.0"  # sidecar~ inbound listener
    cluster_domain: str = "cluster.local"  # DNS suffix of Service names (proxyless gRPC targets)
    # Build the proxyless gRPC targets (translate/grpc.py). `cilia serve` starts without them and turns them
    # on when the first gRPC client connects: until then they cost nothing (at 5,000 Services, ~0.4 s of
    # every translation from scratch); the model says which roles it left out (MeshIR.deferred_roles).
    grpc_targets: bool = True
    # Mesh mTLS: the CA's trust domain (the control plane sets it when it has a CA); empty = plaintext mesh.
    mesh_trust_domain: str = ""
    mesh_node_inbound_address: str = "127.0.0.1"  # node~ inbound listener (mTLS only), on mesh_inbound_port
    mesh_mtls_default: str = "permissive"  # strict | permissive, for namespaces without cilia.io/mtls
    gateway_address: str = "0.0.0.0"  # Gateway listeners bind here unless spec.addresses names an IPAddress
    # CIDRs a Gateway's spec.addresses must fall in (GatewayStaticAddresses); empty = any IP address.
    gateway_address_pool: tuple[str, ...] = ()
    # lastTransitionTime for a status condition that is new or changed; empty: the object's
    # creationTimestamp, else the epoch (translate/gateway_common.py). Unchanged conditions keep theirs.
    status_time: str = ""
    envoy_otel_collector: str = ""  # HOST:PORT of an OTLP/gRPC collector for Envoy's tracer; empty = off
    envoy_tracing_sampling: float = 100.0  # percent of requests traced when tracing is on
    envoy_tracing_service_name: str = "envoy"
    envoy_listener_stat_prefix: bool = False  # set each generated listener's stat_prefix to its name
    # Controller names whose IngressClasses / GatewayClasses cilia serves: its own, plus any claimed with
    # --ingress-controller-name / --gateway-controller-name (e.g. Cilium's, to serve Cilium users' classes).
    ingress_controllers: tuple[str, ...] = ("cilia.io/ingress-controller",)
    gateway_controllers: tuple[str, ...] = ("cilia.io/gateway-controller",)
    # Kubernetes mode: the only namespaces cilia reads Secrets in (--secrets-namespace); None: all (file mode).
    # Only used to say why a referenced Secret is missing.
    secret_namespaces: tuple[str, ...] | None = None
    # Egress gateways: the gateway node's IPv4 addresses (None: unknown, not checked) and its interfaces'
    # first IPv4 addresses, (name, address), for `spec.egressGateway.interface` (file mode: this machine).
    egress_local_ips: tuple[str, ...] | None = None
    egress_interfaces: tuple[tuple[str, str], ...] = ()
    # Gateway nodes' tunnel listener (HTTP/2 CONNECT from node proxies); "node-ip": the node's address.
    egress_tunnel_address: str = "0.0.0.0"
    egress_tunnel_port: int = 15008


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """The status stanza cilia writes (Kubernetes) or shows (file mode) for one object."""

    api_version: str
    kind: str
    namespace: str
    name: str
    generation: int
    status: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        md: dict[str, Any] = {"name": self.name, "generation": self.generation}
        if self.namespace:
            md["namespace"] = self.namespace
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": md, "status": self.status}


@dataclass(frozen=True, slots=True)
class Partial:
    """What one translator produced."""

    bundles: tuple[Bundle, ...] = ()
    endpoints: Mapping[str, EndpointSet] = field(default_factory=dict)
    redirects: tuple[ServiceRedirect, ...] = ()
    statuses: tuple[ObjectStatus, ...] = ()
    issues: tuple[Issue, ...] = ()
    # CiliumEnvoyConfig references to clusters, (object, field, cluster), checked against all bundles
    cluster_refs: tuple[tuple[str, str, str], ...] = ()


V = TypeVar("V")


class Memo(Generic[V]):
    """Results of a pure per-object translation from the last two runs, keyed by everything the result
    depends on (content hashes, options). An unchanged input yields the very same output objects, so
    rendering finds them by identity and a one-object edit costs one object. Values are a pure function
    of their key, so sharing a memo between control planes in one process is safe."""

    def __init__(self) -> None:
        self._current: dict[Any, V] = {}
        self._previous: dict[Any, V] = {}

    def get(self, key: Any) -> V | None:
        hit = self._current.get(key)
        if hit is None:
            hit = self._previous.get(key)
            if hit is not None:
                self._current[key] = hit
        return hit

    def peek(self, key: Any) -> V | None:
        """The value without marking it used."""
        hit = self._current.get(key)
        return self._previous.get(key) if hit is None else hit

    def forget(self, key: Any) -> None:
        self._current.pop(key, None)
        self._previous.pop(key, None)

    def put(self, key: Any, value: V) -> V:
        self._current[key] = value
        return value

    def rotate(self) -> None:
        """End of a run: forget what it did not use."""
        self._previous, self._current = self._current, {}
