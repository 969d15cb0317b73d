"""Which kinds cilia reads, how each is validated, and the envelope common to all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_map, get_int, get_str, str_map
from cilia.k8s.objects import KubeObject, Meta, Origin, content_hash
from cilia.untrusted import AliasBudget, check_tree

SpecParser = Callable[[Mapping[str, Any], Meta], Any]


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    group: str
    versions: tuple[str, ...]
    namespaced: bool
    parse: SpecParser
    plural: str


_KINDS: dict[str, KindSpec] = {}

# Kinds cilia does not consume but that commonly sit in the same manifests; they are skipped quietly.
IGNORED_KINDS = frozenset({
    "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob",
    "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "PersistentVolumeClaim", "PersistentVolume", "NetworkPolicy", "HorizontalPodAutoscaler",
    "PodDisruptionBudget", "Lease", "Event", "LimitRange", "ResourceQuota", "PriorityClass",
    "BackendTLSPolicy", "StorageClass",
})


def register_kind(kind: str, group: str, versions: tuple[str, ...], namespaced: bool, parse: SpecParser,
                  plural: str | None = None) -> None:
    _KINDS[kind] = KindSpec(kind, group, versions, namespaced, parse, plural or kind.lower() + "s")


def kind_spec(kind: str) -> KindSpec | None:
    return _KINDS.get(kind)


def known_kinds() -> tuple[KindSpec, ...]:
    return tuple(_KINDS.values())


def parse_meta(raw: Mapping[str, Any], namespaced: bool) -> Meta:
    md = as_map(raw.get("metadata"), "metadata", required=True)
    name = get_str(md, "name", "metadata", required=True)
    if not name:
        raise ValidationError("metadata.name", "must not be empty")
    namespace = get_str(md, "namespace", "metadata", default="default" if namespaced else "")
    if not namespaced:
        namespace = ""
    return Meta(
        name=name,
        namespace=namespace,
        uid=get_str(md, "uid", "metadata"),
        generation=get_int(md, "generation", "metadata", default=0) or 0,
        resource_version=str(md.get("resourceVersion") or ""),
        labels=str_map(md.get("labels"), "metadata.labels"),
        annotations=str_map(md.get("annotations"), "metadata.annotations"),
        deletion_timestamp=md.get("deletionTimestamp"),
    )


class IgnoredKind(Exception):
    """The document is a kind cilia knowingly skips."""


def parse_object(raw: Any, origin: Origin | None = None, *, aliases: AliasBudget | None = None) -> KubeObject:
    """Validate one raw document into a KubeObject, or raise ValidationError naming the field.

    Every object from any source comes through here, so the limits on untrusted input are checked here
    first (nesting depth, string keys; for YAML, `aliases` is the file's alias budget)."""
    check_tree(raw, aliases=aliases)
    if not isinstance(raw, Mapping):
        raise ValidationError("", f"document must be a mapping, got {type(raw).__name__}")
    kind = get_str(raw, "kind", "", required=True)
    api_version = get_str(raw, "apiVersion", "", required=True)
    spec = _KINDS.get(kind)
    if spec is None:
        if kind in IGNORED_KINDS:
            raise IgnoredKind(kind)
        raise ValidationError("kind", f"unknown kind {kind!r} (cilia reads: {', '.join(sorted(_KINDS))})")
    group, _, version = api_version.rpartition("/")
    if group != spec.group or version not in spec.versions:
        want = ", ".join(f"{spec.group + '/' if spec.group else ''}{v}" for v in spec.versions)
        raise ValidationError("apiVersion", f"{kind} must have apiVersion {want}, got {api_version!r}")
    meta = parse_meta(raw, spec.namespaced)
    body = spec.parse(raw, meta)
    return KubeObject(api_version, kind, meta, body, raw, content_hash(raw), origin)
