"""Read manifests from files and directories: multi-document YAML, JSON, and `List` kinds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cilia.diagnostics import Issue
from cilia.errors import SourceError, ValidationError
from cilia.k8s import kinds as _kinds  # noqa: F401  (registers kinds)
from cilia.k8s.objects import KubeObject, Origin
from cilia.k8s.registry import IgnoredKind, parse_object

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class FileResult:
    """What one file yielded. `ok` is False when the file as a whole could not be read or parsed."""

    path: str
    ok: bool
    objects: tuple[KubeObject, ...]
    issues: tuple[Issue, ...]
    # Keys of documents that were present but failed validation: their last good version is kept.
    rejected: tuple[tuple[str, str, str], ...] = ()


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named directly, plus every manifest file below named directories, sorted."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in MANIFEST_SUFFIXES
                              and not any(part.startswith(".") for part in f.relative_to(path).parts)))
        elif path.exists():
            out.append(path)
        else:
            raise SourceError(f"{path}: no such file or directory")
    return out


def _documents(text: str, path: str) -> Iterator[tuple[int, Any]]:
    if path.endswith(".json"):
        doc = json.loads(text)
        yield from _flatten(0, doc)
        return
    for index, doc in enumerate(yaml.load_all(text, Loader=_Loader)):
        if doc is None:
            continue
        yield from _flatten(index, doc)


def _flatten(index: int, doc: Any) -> Iterator[tuple[int, Any]]:
    if isinstance(doc, Mapping) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List") \
            and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield index, item
    else:
        yield index, doc


def _describe(doc: Any) -> tuple[str, tuple[str, str, str] | None]:
    if not isinstance(doc, Mapping):
        return "", None
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "?"
    raw_md = doc.get("metadata")
    md: Mapping[str, Any] = raw_md if isinstance(raw_md, Mapping) else {}
    name = str(md["name"]) if isinstance(md.get("name"), str) else "?"
    ns = str(md["namespace"]) if isinstance(md.get("namespace"), str) else ""
    label = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
    return label, (str(kind), ns, str(name))


def parse_text(text: str, path: str) -> FileResult:
    try:
        docs = list(_documents(text, path))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        return FileResult(path, False, (), (Issue("", "", f"cannot parse: {exc}".replace("\n", " "), path),))
    objects: list[KubeObject] = []
    issues: list[Issue] = []
    rejected: list[tuple[str, str, str]] = []
    for index, doc in docs:
        origin = Origin(path, index)
        try:
            objects.append(parse_object(doc, origin))
        except IgnoredKind:
            continue
        except ValidationError as exc:
            label, key = _describe(doc)
            issues.append(Issue(label, exc.field, exc.message, str(origin)))
            if key is not None:
                rejected.append(key)
    return FileResult(path, True, tuple(objects), tuple(issues), tuple(rejected))


def iter_documents(path: Path) -> Iterator[tuple[int, Any]]:
    """(document index, parsed document) of a manifest file, List kinds flattened; raises on bad YAML/JSON.
    For readers of kinds cilia does not model (`cilia analyze` reads policies and workloads)."""
    yield from _documents(path.read_text(), str(path))


def parse_file(path: Path) -> FileResult:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            return FileResult(str(path), False, (), (
                Issue("", "", f"file is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte manifest limit", str(path)),))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return FileResult(str(path), False, (), (Issue("", "", f"cannot read: {exc}", str(path)),))
    return parse_text(text, str(path))
