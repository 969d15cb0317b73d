"""Resource types the fake API server knows, and the defaults a cilia cluster needs.

A resource is stored once per (group, plural) and served at every version it lists, the way
CRDs with conversion strategy ``None`` and multi-version built-ins behave: only ``apiVersion``
changes between versions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
READ_VERBS: tuple[str, ...] = ("get", "list", "watch")

_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Sort key putting the version Kubernetes prefers first (v2 > v1 > v1beta2 > v1beta1 > v1alpha1)."""
    m = _VERSION_RE.match(version)
    if not m:
        return (3, 0, 0)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor)


@dataclass(frozen=True)
class ResourceType:
    """One kind the server serves: identity, scope, served versions and storage semantics."""

    group: str
    plural: str
    kind: str
    namespaced: bool
    versions: tuple[str, ...]
    status_subresource: bool = False
    builtin: bool = False  # built-in type: strategic merge patch accepted, unconditional PUT allowed
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    selectable_fields: tuple[str, ...] = ()  # field selector paths beyond metadata.name/namespace
    status_default_json: str = field(default="", compare=False)  # .status a new object starts with

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def preferred_version(self) -> str:
        return sorted(self.versions, key=version_priority)[0]

    @property
    def group_resource(self) -> str:
        """``plural`` or ``plural.group`` as Kubernetes names it in error messages."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred_version
        return v if not self.group else f"{self.group}/{v}"

    def status_default(self) -> dict[str, Any] | None:
        return json.loads(self.status_default_json) if self.status_default_json else None


def _pending(*types: str) -> str:
    conds = [
        {
            "type": t,
            "status": "Unknown",
            "reason": "Pending",
            "message": "Waiting for controller",
            "lastTransitionTime": "1970-01-01T00:00:00Z",
        }
        for t in types
    ]
    return json.dumps({"conditions": conds})


CORE = ""
GATEWAY = "gateway.networking.k8s.io"
CILIUM = "cilium.io"

POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)

DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        CORE,
        "namespaces",
        "Namespace",
        False,
        ("v1",),
        True,
        True,
        ("ns",),
        selectable_fields=("status.phase",),
    ),
    ResourceType(
        CORE, "nodes", "Node", False, ("v1",), True, True, ("no",), selectable_fields=("spec.unschedulable",)
    ),
    ResourceType(
        CORE,
        "pods",
        "Pod",
        True,
        ("v1",),
        True,
        True,
        ("po",),
        ("all",),
        selectable_fields=POD_FIELDS,
        status_default_json='{"phase": "Pending"}',
    ),
    ResourceType(
        CORE,
        "services",
        "Service",
        True,
        ("v1",),
        True,
        True,
        ("svc",),
        ("all",),
        selectable_fields=("spec.clusterIP", "spec.type"),
        status_default_json='{"loadBalancer": {}}',
    ),
    ResourceType(CORE, "secrets", "Secret", True, ("v1",), False, True, selectable_fields=("type",)),
    ResourceType(CORE, "configmaps", "ConfigMap", True, ("v1",), False, True, ("cm",)),
    ResourceType(CORE, "endpoints", "Endpoints", True, ("v1",), False, True, ("ep",)),
    ResourceType("discovery.k8s.io", "endpointslices", "EndpointSlice", True, ("v1",), False, True),
    ResourceType(
        "networking.k8s.io",
        "ingresses",
        "Ingress",
        True,
        ("v1",),
        True,
        True,
        ("ing",),
        status_default_json='{"loadBalancer": {}}',
    ),
    ResourceType("networking.k8s.io", "ingressclasses", "IngressClass", False, ("v1",), False, True),
    ResourceType("coordination.k8s.io", "leases", "Lease", True, ("v1",), False, True),
    ResourceType("events.k8s.io", "events", "Event", True, ("v1",), False, True, ("ev",)),
    ResourceType(
        GATEWAY,
        "gatewayclasses",
        "GatewayClass",
        False,
        ("v1", "v1beta1"),
        True,
        short_names=("gc",),
        categories=("gateway-api",),
        status_default_json=_pending("Accepted"),
    ),
    ResourceType(
        GATEWAY,
        "gateways",
        "Gateway",
        True,
        ("v1", "v1beta1"),
        True,
        short_names=("gtw",),
        categories=("gateway-api",),
        status_default_json=_pending("Accepted", "Programmed"),
    ),
    ResourceType(
        GATEWAY, "httproutes", "HTTPRoute", True, ("v1", "v1beta1"), True, categories=("gateway-api",)
    ),
    ResourceType(GATEWAY, "grpcroutes", "GRPCRoute", True, ("v1",), True, categories=("gateway-api",)),
    ResourceType(
        GATEWAY,
        "referencegrants",
        "ReferenceGrant",
        True,
        ("v1", "v1beta1"),
        False,
        short_names=("refgrant",),
        categories=("gateway-api",),
    ),
    ResourceType(GATEWAY, "tlsroutes", "TLSRoute", True, ("v1alpha2",), True, categories=("gateway-api",)),
    ResourceType(GATEWAY, "tcproutes", "TCPRoute", True, ("v1alpha2",), True, categories=("gateway-api",)),
    ResourceType(GATEWAY, "backendtlspolicies", "BackendTLSPolicy", True, ("v1", "v1alpha3"), True,
                 short_names=("btlspolicy",), categories=("gateway-api",)),
    ResourceType(GATEWAY, "listenersets", "ListenerSet", True, ("v1",), True, categories=("gateway-api",)),
    ResourceType(
        CILIUM,
        "ciliumenvoyconfigs",
        "CiliumEnvoyConfig",
        True,
        ("v2",),
        True,
        short_names=("cec",),
        categories=("cilium",),
    ),
    ResourceType(
        CILIUM,
        "ciliumclusterwideenvoyconfigs",
        "CiliumClusterwideEnvoyConfig",
        False,
        ("v2",),
        True,
        short_names=("ccec",),
        categories=("cilium",),
    ),
    ResourceType(CILIUM, "ciliumnetworkpolicies", "CiliumNetworkPolicy", True, ("v2",), True, short_names=("cnp",),
                 categories=("cilium",)),
    ResourceType(CILIUM, "ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", False, ("v2",), True,
                 short_names=("ccnp",), categories=("cilium",)),
    ResourceType(CILIUM, "ciliumegressgatewaypolicies", "CiliumEgressGatewayPolicy", False, ("v2",),
                 short_names=("cegp",), categories=("cilium",)),
)

CRD_RESOURCE = ResourceType(
    "apiextensions.k8s.io",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    False,
    ("v1",),
    True,
    True,
    ("crd", "crds"),
    verbs=READ_VERBS,
)
"""Read-only view of the CRDs the server has installed, kept in step with install/uninstall."""


def crd_object(rtype: ResourceType) -> dict[str, Any]:
    """The CustomResourceDefinition a real cluster would hold for ``rtype``."""
    names: dict[str, Any] = {
        "plural": rtype.plural,
        "singular": rtype.singular,
        "kind": rtype.kind,
        "listKind": rtype.list_kind,
    }
    if rtype.short_names:
        names["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        names["categories"] = list(rtype.categories)
    storage = rtype.preferred_version
    versions = []
    for v in sorted(rtype.versions, key=version_priority):
        entry: dict[str, Any] = {
            "name": v,
            "served": True,
            "storage": v == storage,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }
        if rtype.status_subresource:
            entry["subresources"] = {"status": {}}
        versions.append(entry)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{rtype.plural}.{rtype.group}"},
        "spec": {
            "group": rtype.group,
            "names": names,
            "scope": "Namespaced" if rtype.namespaced else "Cluster",
            "versions": versions,
        },
        "status": {
            "acceptedNames": names,
            "storedVersions": [storage],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": "1970-01-01T00:00:00Z",
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": "1970-01-01T00:00:00Z",
                },
            ],
        },
    }
