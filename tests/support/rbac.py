"""The RBAC rules of deploy/rbac.yaml and the permission table of deploy/README.md, as grants to check
requests and each other against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CLUSTER = "cluster"  # the scope of ClusterRole grants

Grant = tuple[str, str, str]  # (API group, resource, verb)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@dataclass(frozen=True)
class Grants:
    cluster: frozenset[Grant]  # from the ClusterRole(s)
    roles: Mapping[str, frozenset[Grant]]  # namespace -> grants of the Roles there
    resource_names: Mapping[tuple[str, str, str, str], tuple[str, ...]]  # (scope, group, resource, verb) -> names

    @property
    def namespaced(self) -> frozenset[Grant]:
        return frozenset(g for grants in self.roles.values() for g in grants)

    def scoped(self) -> dict[str, set[tuple[str, str, str, tuple[str, ...]]]]:
        """scope ("cluster" or a namespace) -> {(group, resource, verb, names)}: the shape of the README table."""
        out: dict[str, set[tuple[str, str, str, tuple[str, ...]]]] = {}
        for scope, grants in ((CLUSTER, self.cluster), *self.roles.items()):
            for g, r, v in grants:
                out.setdefault(scope, set()).add((g, r, v, self.resource_names.get((scope, g, r, v), ())))
        return out

    def allows(self, group: str, resource: str, verb: str, namespace: str | None = None, name: str | None = None,
               lease_namespace: str = "cilia-system", namespaces: Mapping[str, str] | None = None) -> bool:
        """Whether a request is granted. `lease_namespace` / `namespaces` map the namespaces of deploy/ to
        those a test uses (cilia-system -> lease_namespace; others as given, else unchanged)."""
        key = (group, resource, verb)
        rename = {"cilia-system": lease_namespace, **(namespaces or {})}
        scopes = [(CLUSTER, self.cluster)]
        if namespace is not None:  # a Role never grants a request across namespaces
            scopes += [(ns, g) for ns, g in self.roles.items() if rename.get(ns, ns) == namespace]
        for scope, grants in scopes:
            if key in grants:
                names = self.resource_names.get((scope, *key))
                if names is None or name in names:
                    return True
        return False


def _rules(role: dict[str, Any], scope: str, names: dict[tuple[str, str, str, str], tuple[str, ...]]) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role.get("rules") or []:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    grants.add((g, r, v))
                    if rule.get("resourceNames"):
                        names[(scope, g, r, v)] = tuple(rule["resourceNames"])
    return grants


def rbac_grants(docs: list[dict[str, Any]] | None = None) -> Grants:
    docs = load_docs(DEPLOY / "rbac.yaml") if docs is None else docs
    cluster: set[Grant] = set()
    roles: dict[str, set[Grant]] = {}
    names: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
    for d in docs:
        if d["kind"] == "ClusterRole":
            cluster |= _rules(d, CLUSTER, names)
        elif d["kind"] == "Role":
            ns = d["metadata"]["namespace"]
            roles.setdefault(ns, set()).update(_rules(d, ns, names))
    return Grants(frozenset(cluster), {ns: frozenset(g) for ns, g in roles.items()}, names)


def readme_permissions(path: Path = DEPLOY / "README.md") -> dict[str, set[tuple[str, str, str, tuple[str, ...]]]]:
    """The table under `## Permissions`: scope -> {(group, resource, verb, names)}; every row must say why."""
    lines = path.read_text().splitlines()
    start = lines.index("## Permissions")
    out: dict[str, set[tuple[str, str, str, tuple[str, ...]]]] = {}
    header_seen = False
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header_seen:
            assert cells == ["scope", "API group", "resources", "names", "verbs", "why"], cells
            header_seen = True
            continue
        if set(line) <= {"|", "-", " "}:
            continue
        scope, group, resources, names, verbs, why = cells
        assert why, f"README permission without a reason: {line}"
        group = "" if group == "core" else group
        name_t = tuple(n.strip() for n in names.split(",") if n.strip())
        for r in resources.split(","):
            for v in verbs.split(","):
                out.setdefault(scope, set()).add((group, r.strip(), v.strip(), name_t))
    assert header_seen, "no permission table under ## Permissions"
    return out
