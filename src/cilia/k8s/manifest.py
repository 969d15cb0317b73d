"""Read manifests from files and directories: multi-document YAML, JSON, and `List` kinds."""

from __future__ import annotations

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
from cilia.untrusted import (
    MAX_DOCUMENTS_PER_FILE,
    MAX_MANIFEST_BYTES,
    AliasBudget,
    InputLimitError,
    load_yaml_documents,
    loads_json,
)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
__all__ = ["MANIFEST_SUFFIXES", "MAX_MANIFEST_BYTES", "FileResult", "expand_paths", "parse_file", "parse_text"]


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
    """(document index, raw document), `List` items expanded; at most MAX_DOCUMENTS_PER_FILE of them."""
    if path.endswith(".json"):
        docs: Iterator[tuple[int, Any]] = iter([(0, loads_json(text))])
    else:
        docs = load_yaml_documents(text)
    count = 0
    for index, doc in docs:
        for item in _flatten(index, doc):
            count += 1
            if count > MAX_DOCUMENTS_PER_FILE:
                raise InputLimitError("", f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file")
            yield item


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
    """Every object of one file. A file that cannot be parsed at all (or is over a limit as a whole) is
    `ok=False`; a document that is invalid (or too deep, or an alias bomb) is an issue on that document."""
    try:
        docs = list(_documents(text, path))
    except InputLimitError as exc:
        return FileResult(path, False, (), (Issue("", "", f"refused: {exc}", path),))
    except (yaml.YAMLError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return FileResult(path, False, (), (Issue("", "", f"cannot parse: {exc}".replace("\n", " "), path),))
    objects: list[KubeObject] = []
    issues: list[Issue] = []
    rejected: list[tuple[str, str, str]] = []
    aliases = None if path.endswith(".json") else AliasBudget()  # JSON cannot share or loop
    for index, doc in docs:
        origin = Origin(path, index)
        try:
            objects.append(parse_object(doc, origin, aliases=aliases))
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
