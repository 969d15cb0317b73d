"""Label and field selectors with the syntax and matching rules of the Kubernetes API server."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY_RE = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_./]*[a-z0-9A-Z])?)$")


class SelectorError(ValueError):
    """A selector string the real server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        val = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and val in self.values
        if self.op in ("!=", "notin"):
            return not has or val not in self.values
        if self.op in ("gt", "lt"):
            try:
                n = int(val or "")
            except ValueError:
                return False
            return n > int(self.values[0]) if self.op == "gt" else n < int(self.values[0])
        raise AssertionError(self.op)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _check_key(key: str, text: str) -> str:
    if not _KEY_RE.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r} in {text!r}")
    return key


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse ``labelSelector``; empty means everything."""
    if not text or not text.strip():
        return ()
    reqs: list[Requirement] = []
    for part in _split_top(text):
        if not part:
            raise SelectorError(f"found ',', expected: identifier in {text!r}")
        m = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", part)
        if m:
            vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(_check_key(m.group(1), text), m.group(2), vals))
            continue
        m = re.match(r"^([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(\S*)$", part)
        if m:
            op = {"==": "=", ">": "gt", "<": "lt"}.get(m.group(2), m.group(2))
            if op in ("gt", "lt") and not m.group(3).lstrip("-").isdigit():
                raise SelectorError(f"for 'Gt', 'Lt' operators, the value must be an integer in {text!r}")
            reqs.append(Requirement(_check_key(m.group(1), text), op, (m.group(3),)))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip(), text), "!"))
            continue
        reqs.append(Requirement(_check_key(part, text), "exists"))
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str


def parse_field_selector(
    text: str | None, allowed: Callable[[str], bool], kind_desc: str, builtin: bool
) -> tuple[FieldRequirement, ...]:
    """Parse ``fieldSelector``; only fields the type supports are accepted, as on a real server."""
    if not text or not text.strip():
        return ()
    out: list[FieldRequirement] = []
    for part in _split_top(text):
        m = re.match(r"^([^=!\s]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise SelectorError(f"invalid selector: {text!r}; can't understand {part!r}")
        path = m.group(1)
        if not allowed(path):
            if builtin:
                raise SelectorError(f"field label not supported: {path}")
            raise SelectorError(
                f'"{path}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                f" (for {kind_desc})"
            )
        out.append(FieldRequirement(path, m.group(2) == "!=", m.group(3)))
    return tuple(out)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    return all((field_value(obj, r.path) == r.value) != r.negate for r in reqs)
