"""Kubernetes label selectors (matchLabels + matchExpressions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """An empty selector matches everything, as in Kubernetes."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


def parse_label_selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise ValidationError(path, f"must be a mapping, got {type(raw).__name__}")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise ValidationError(f"{path}.matchLabels", "must be a mapping of strings")
    match_labels = []
    for k, v in labels.items():
        if not isinstance(v, str):
            raise ValidationError(f"{path}.matchLabels.{k}", "must be a string")
        match_labels.append((str(k), v))
    exprs = raw.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise ValidationError(f"{path}.matchExpressions", "must be a list")
    reqs = []
    for i, e in enumerate(exprs):
        epath = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, Mapping) or not isinstance(e.get("key"), str):
            raise ValidationError(f"{epath}.key", "is required")
        op = e.get("operator")
        if op not in OPERATORS:
            raise ValidationError(f"{epath}.operator", f"must be one of {', '.join(OPERATORS)}, got {op!r}")
        values = e.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{epath}.values", "must be a list of strings")
        if op in ("In", "NotIn") and not values:
            raise ValidationError(f"{epath}.values", f"must be non-empty for {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValidationError(f"{epath}.values", f"must be empty for {op}")
        reqs.append(Requirement(e["key"], op, tuple(values)))
    return LabelSelector(tuple(sorted(match_labels)), tuple(reqs))
