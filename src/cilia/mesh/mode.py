"""Mesh mode selection: which data path serves a pod (shared node Envoy, a sidecar, the pod's own gRPC
library talking xDS (`proxyless`: no proxy, no traffic redirection), or none).

The key `cilia.io/mesh` may be set as a label or an annotation on the Namespace and overridden on
the Pod. Precedence, first present wins:

    pod annotation > pod label > namespace annotation > namespace label > cluster default

Only the value that wins is validated: a pod that states a valid mode is not blocked by a stale
value further down the chain, while a bad winning value is an error (never silently ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

MeshMode = Literal["node", "sidecar", "proxyless", "off"]

MESH_MODE_KEY = "cilia.io/mesh"
MESH_MODES: tuple[MeshMode, ...] = get_args(MeshMode)


def parse_mesh_mode(value: object, where: str) -> MeshMode:
    """Check one mesh mode value; `where` names the object and key for the error message."""
    if isinstance(value, str):
        for mode in MESH_MODES:
            if value == mode:
                return mode
    hint = " (an unquoted YAML off/on/yes/no reads as a boolean: quote it)" if isinstance(value, bool) else ""
    raise ValueError(f"{where}: invalid value {value!r}; expected one of {', '.join(MESH_MODES)}{hint}")


def resolve_mesh_mode(
    namespace_labels: Mapping[str, str] | None,
    namespace_annotations: Mapping[str, str] | None,
    pod_labels: Mapping[str, str] | None,
    pod_annotations: Mapping[str, str] | None,
    default: MeshMode,
    *,
    namespace: str = "",
    pod_ref: str = "Pod",
) -> MeshMode:
    """Return the effective mesh mode of a pod.

    `namespace` (a name) and `pod_ref` (e.g. `"Pod shop/web-0"` or `"Deployment shop/web
    spec.template"`) only name the objects in error messages.
    Raises ValueError naming the object and key when the winning value is not a known mode.
    """
    ns_name = f"Namespace {namespace!r}" if namespace else "Namespace"
    chain: tuple[tuple[Mapping[str, str] | None, str], ...] = (
        (pod_annotations, f"{pod_ref} annotation"),
        (pod_labels, f"{pod_ref} label"),
        (namespace_annotations, f"{ns_name} annotation"),
        (namespace_labels, f"{ns_name} label"),
    )
    for source, where in chain:
        if source and MESH_MODE_KEY in source:
            return parse_mesh_mode(source[MESH_MODE_KEY], f"{where} {MESH_MODE_KEY}")
    return parse_mesh_mode(default, "cluster default mesh mode")
