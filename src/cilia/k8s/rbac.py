"""The API permissions cilia's Kubernetes code needs, derived from what the code calls.

`deploy/rbac.yaml` must grant exactly these (a test compares them, another checks every request the code
makes against them, and deploy/README.md justifies each in a table that a test compares too):

* ClusterRole: list/watch on every kind the source reads cluster-wide, patch on the status of the kinds
  the status writer updates, create/patch on Events, create on TokenReviews (certificate issuance), and
  get/update on the one MutatingWebhookConfiguration whose caBundle the leader keeps. No Secrets.
* Roles in cilia's own namespace: get/create/update on its Lease (leader election); get/create on the
  CA Secret `cilia-ca`; get/create/update on the ConfigMap `cilia-ca-bundle` the leader publishes.
* Role in each `--secrets-namespace` (default `cilia-secrets`): list/watch on Secrets.

Grants on one named object carry `resourceNames` (`NAMED`); `create` cannot be limited by name in RBAC.
API discovery is not needed: the source finds served versions by listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cilia.k8s.casecret import CA_SECRET_VERBS, SECRETS, CaSecretRef
from cilia.k8s.events import EVENT_VERBS, EVENTS
from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE, NAMESPACE_SCOPED_KINDS, SOURCE_VERBS
from cilia.k8s.leader import LEASE_VERBS, LEASES, LeaseConfig
from cilia.k8s.registry import KindSpec, known_kinds
from cilia.k8s.statuswriter import STATUS_KINDS, STATUS_VERBS
from cilia.k8s.tokenreview import TOKENREVIEW_VERBS, TOKENREVIEWS
from cilia.k8s.webhookca import (
    CA_CONFIGMAP,
    CA_CONFIGMAP_VERBS,
    CONFIGMAPS,
    MUTATING_WEBHOOKS,
    WEBHOOK_CA_VERBS,
    WEBHOOK_CONFIG,
)

CILIA_NAMESPACE = "cilia-system"


@dataclass(frozen=True, slots=True, order=True)
class Permission:
    """One RBAC grant: `verb` on `resource` (e.g. "gateways/status") of API `group`."""

    group: str
    resource: str
    verb: str


def cluster_permissions(kinds: Iterable[KindSpec] | None = None) -> frozenset[Permission]:
    """What the ClusterRole must grant."""
    specs = list(known_kinds() if kinds is None else kinds)
    perms = {Permission(s.group, s.plural, v) for s in specs if s.kind not in NAMESPACE_SCOPED_KINDS
             for v in SOURCE_VERBS}
    perms |= {Permission(s.group, f"{s.plural}/status", v) for s in specs if s.kind in STATUS_KINDS
              for v in STATUS_VERBS}
    perms |= {Permission(EVENTS.group, EVENTS.plural, v) for v in EVENT_VERBS}
    perms |= {Permission(TOKENREVIEWS.group, TOKENREVIEWS.plural, v) for v in TOKENREVIEW_VERBS}
    perms |= {Permission(MUTATING_WEBHOOKS.group, MUTATING_WEBHOOKS.plural, v) for v in WEBHOOK_CA_VERBS}
    return frozenset(perms)


def lease_permissions() -> frozenset[Permission]:
    """What the Role in cilia's namespace must grant for leader election."""
    return frozenset(Permission(LEASES.group, LEASES.plural, v) for v in LEASE_VERBS)


def ca_permissions() -> frozenset[Permission]:
    """What the Role in cilia's namespace must grant for the CA Secret and the published bundle."""
    return frozenset({Permission(SECRETS.group, SECRETS.plural, v) for v in CA_SECRET_VERBS} |
                     {Permission(CONFIGMAPS.group, CONFIGMAPS.plural, v) for v in CA_CONFIGMAP_VERBS})


def namespace_permissions() -> frozenset[Permission]:
    """Everything the Roles in cilia's own namespace must grant."""
    return lease_permissions() | ca_permissions()


def secret_permissions() -> frozenset[Permission]:
    """What the Role in each secrets namespace must grant: reading the Secrets there."""
    return frozenset(Permission("", "secrets", v) for v in SOURCE_VERBS)


def role_permissions(cilia_namespace: str = CILIA_NAMESPACE, secret_namespaces: Iterable[str] = (
        DEFAULT_SECRETS_NAMESPACE,)) -> Mapping[str, frozenset[Permission]]:
    """Namespace -> what the Role(s) there must grant."""
    out: dict[str, set[Permission]] = {cilia_namespace: set(namespace_permissions())}
    for ns in secret_namespaces:
        out.setdefault(ns, set()).update(secret_permissions())
    return {ns: frozenset(p) for ns, p in out.items()}


def _named() -> Mapping[Permission, tuple[str, ...]]:
    named = {Permission(LEASES.group, LEASES.plural, v): (LeaseConfig().name,) for v in LEASE_VERBS if v != "create"}
    named |= {Permission(SECRETS.group, SECRETS.plural, v): (CaSecretRef().name,)
              for v in CA_SECRET_VERBS if v != "create"}
    named |= {Permission(CONFIGMAPS.group, CONFIGMAPS.plural, v): (CA_CONFIGMAP,)
              for v in CA_CONFIGMAP_VERBS if v != "create"}
    named |= {Permission(MUTATING_WEBHOOKS.group, MUTATING_WEBHOOKS.plural, v): (WEBHOOK_CONFIG,)
              for v in WEBHOOK_CA_VERBS}
    return named


NAMED: Mapping[Permission, tuple[str, ...]] = _named()
"""Grants limited to named objects (`resourceNames`), in whichever scope grants them."""
