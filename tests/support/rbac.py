"""The RBAC rules of deploy/rbac.yaml, as (group, resource, verb) grants, for checking requests against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@dataclass(frozen=True)
class Grants:
    cluster: frozenset[tuple[str, str, str]]  # from the ClusterRole
    namespaced: frozenset[tuple[str, str, str]]  # from Roles (in cilia-system)
    resource_names: dict[tuple[str, str, str], tuple[str, ...]]  # grants limited to named objects (either kind)

    def allows(self, group: str, resource: str, verb: str, namespace: str | None = None, name: str | None = None,
               lease_namespace: str = "cilia-system") -> bool:
        key = (group, resource, verb)
        names = self.resource_names.get(key)
        if names is not None and name not in names:
            return False
        if key in self.cluster:
            return True
        return key in self.namespaced and namespace in (lease_namespace, None)


def _rules(role: dict[str, Any]) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str, str], tuple[str, ...]]]:
    grants: set[tuple[str, str, str]] = set()
    names: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for rule in role.get("rules") or []:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    grants.add((g, r, v))
                    if rule.get("resourceNames"):
                        names[(g, r, v)] = tuple(rule["resourceNames"])
    return grants, names


def rbac_grants() -> Grants:
    docs = load_docs(DEPLOY / "rbac.yaml")
    cluster: set[tuple[str, str, str]] = set()
    namespaced: set[tuple[str, str, str]] = set()
    names: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for d in docs:
        if d["kind"] == "ClusterRole":
            g, n = _rules(d)
            cluster |= g
            names.update(n)
        elif d["kind"] == "Role":
            g, n = _rules(d)
            namespaced |= g
            names.update(n)
    return Grants(frozenset(cluster), frozenset(namespaced), names)
