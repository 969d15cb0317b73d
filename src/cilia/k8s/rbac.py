"""The API permissions cilia's Kubernetes code needs, derived from what the code calls.

`deploy/rbac.yaml` must grant exactly these (a test compares them, another checks every request the code
makes against them, and deploy/README.md justifies each in a table that a test compares too):

* ClusterRole: list/watch on every kind the source reads cluster-wide, patch on the status of the kinds
  the status writer updates. Secrets are not among them.
* Role in cilia's own namespace: get/create/update on its Lease (leader election).
* Role in each `--secrets-namespace` (default `cilia-secrets`): list/watch on Secrets.

API discovery is not needed: the source finds served versions by listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE, NAMESPACE_SCOPED_KINDS, SOURCE_VERBS
from cilia.k8s.leader import LEASE_VERBS, LEASES
from cilia.k8s.registry import KindSpec, known_kinds
from cilia.k8s.statuswriter import STATUS_KINDS, STATUS_VERBS

CILIA_NAMESPACE = "cilia-system"


@dataclass(frozen=True, slots=True, order=True)
class Permission:
    """One RBAC grant: `verb` on `resource` (e.g. "gateways/status") of API `group`."""

    group: str
    resource: str
    verb: str


def cluster_permissions(kinds: Iterable[KindSpec] | None = None) -> frozenset[Permission]:
    """What the ClusterRole must grant: reading every kind read cluster-wide, patching the status of some."""
    specs = list(known_kinds() if kinds is None else kinds)
    perms = {Permission(s.group, s.plural, v) for s in specs if s.kind not in NAMESPACE_SCOPED_KINDS
             for v in SOURCE_VERBS}
    perms |= {Permission(s.group, f"{s.plural}/status", v) for s in specs if s.kind in STATUS_KINDS
              for v in STATUS_VERBS}
    return frozenset(perms)


def lease_permissions() -> frozenset[Permission]:
    """What the Role in cilia's namespace must grant for leader election."""
    return frozenset(Permission(LEASES.group, LEASES.plural, v) for v in LEASE_VERBS)


def secret_permissions() -> frozenset[Permission]:
    """What the Role in each secrets namespace must grant: reading the Secrets there."""
    return frozenset(Permission("", "secrets", v) for v in SOURCE_VERBS)


def role_permissions(cilia_namespace: str = CILIA_NAMESPACE, secret_namespaces: Iterable[str] = (
        DEFAULT_SECRETS_NAMESPACE,)) -> Mapping[str, frozenset[Permission]]:
    """Namespace -> what the Role(s) there must grant."""
    out: dict[str, set[Permission]] = {cilia_namespace: set(lease_permissions())}
    for ns in secret_namespaces:
        out.setdefault(ns, set()).update(secret_permissions())
    return {ns: frozenset(p) for ns, p in out.items()}
