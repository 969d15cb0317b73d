"""Mesh pods: every pod with its mesh mode, as the mesh, policy and redirect translators see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from cilia.diagnostics import Issue
from cilia.k8s.core import ContainerPort, PodSpec
from cilia.k8s.store import InputSnapshot
from cilia.mesh.mode import MESH_MODE_KEY, MeshMode, resolve_mesh_mode
from cilia.translate.context import TranslateOptions


@dataclass(frozen=True, slots=True)
class MeshPod:
    namespace: str
    name: str
    mode: MeshMode
    node: str
    ips: tuple[str, ...]
    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...]
    ref: str
    service_account: str = "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def mesh_pods(snapshot: InputSnapshot, opts: TranslateOptions) -> tuple[list[MeshPod], list[Issue]]:
    """Every pod with its mesh mode (mode `off` included); bad mode values become issues."""
    pods: list[MeshPod] = []
    issues: dict[tuple[str, str], Issue] = {}
    for obj in snapshot.list("Pod"):
        spec: PodSpec = obj.spec
        if spec.host_network or spec.phase in ("Succeeded", "Failed"):
            continue
        ns_obj = snapshot.get("Namespace", "", obj.meta.namespace)
        ns_labels = ns_obj.meta.labels if ns_obj is not None else None
        ns_annotations = ns_obj.meta.annotations if ns_obj is not None else None
        try:
            mode = resolve_mesh_mode(ns_labels, ns_annotations, obj.meta.labels, obj.meta.annotations,
                                     cast(MeshMode, opts.mesh_default_mode),
                                     namespace=obj.meta.namespace, pod_ref=str(obj.ref))
        except ValueError as exc:
            if MESH_MODE_KEY in obj.meta.annotations or MESH_MODE_KEY in obj.meta.labels:
                where = "annotations" if MESH_MODE_KEY in obj.meta.annotations else "labels"
                issue = Issue(str(obj.ref), f"metadata.{where}.{MESH_MODE_KEY}", f"{exc}; pod left out of the mesh")
            elif ns_obj is not None and (MESH_MODE_KEY in ns_obj.meta.annotations or
                                         MESH_MODE_KEY in ns_obj.meta.labels):
                where = "annotations" if MESH_MODE_KEY in ns_obj.meta.annotations else "labels"
                issue = Issue(str(ns_obj.ref), f"metadata.{where}.{MESH_MODE_KEY}",
                              f"{exc}; its pods are left out of the mesh")
            else:
                issue = Issue("TranslateOptions", "mesh_default_mode", str(exc))
            issues.setdefault((issue.object, issue.field), issue)
            continue
        pods.append(MeshPod(obj.meta.namespace, obj.meta.name, mode, spec.node_name, spec.pod_ips,
                            obj.meta.labels, spec.ports, str(obj.ref),
                            spec.service_account or "default"))
    return pods, list(issues.values())
