"""Typed Kubernetes objects: a common envelope plus a kind-specific frozen spec."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VOLATILE_METADATA = ("resourceVersion", "managedFields", "selfLink")


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Identifies an object; `namespace` is empty for cluster-scoped kinds."""

    kind: str
    namespace: str
    name: str
    group: str = ""
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        text = self._text
        if text is None:  # worked out once: every IR node names its sources with it
            text = f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"
            object.__setattr__(self, "_text", text)
        return text


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    deletion_timestamp: str | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object came from: a file and document index, or an API server."""

    source: str
    document: int | None = None

    def __str__(self) -> str:
        return f"{self.source}#{self.document}" if self.document is not None else self.source


@dataclass(frozen=True, slots=True, eq=False)
class KubeObject:
    """An object as the store holds it. Equality is by content, not by resourceVersion."""

    api_version: str
    kind: str
    meta: Meta
    spec: Any
    raw: Mapping[str, Any]
    content_hash: str
    origin: Origin | None = None
    _ref: ObjectRef | None = field(default=None, init=False, repr=False)

    @property
    def ref(self) -> ObjectRef:
        ref = self._ref
        if ref is None:  # made once: translators ask for it for every node they make
            ref = ObjectRef(self.kind, self.meta.namespace, self.meta.name, self.api_version.rpartition("/")[0])
            object.__setattr__(self, "_ref", ref)
        return ref

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KubeObject) and self.content_hash == other.content_hash

    def __hash__(self) -> int:
        return hash(self.content_hash)


def content_hash(raw: Mapping[str, Any]) -> str:
    """Hash of an object minus fields that change without meaning (resourceVersion, managedFields)."""
    meta = dict(raw.get("metadata") or {})
    for key in VOLATILE_METADATA:
        meta.pop(key, None)
    body = {k: v for k, v in raw.items() if k != "metadata"}
    body["metadata"] = meta
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()
