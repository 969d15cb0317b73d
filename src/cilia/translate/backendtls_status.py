"""Status of BackendTLSPolicies: Accepted and ResolvedRefs per ancestor (each Gateway whose routes use a
targeted Service), Conflicted for the younger of two policies on the same port."""

from __future__ import annotations

from collections.abc import Mapping

from cilia.diagnostics import Issue
from cilia.k8s.backendtls import BackendTLSPolicySpec
from cilia.k8s.gateway import GROUP
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.backendtls import age, ca_bundle
from cilia.translate.context import ObjectStatus
from cilia.translate.gateway_common import CONTROLLER, Cond, conditions, fallback_time, previous_status

Ancestor = tuple[str, str, str]  # Gateway namespace, name, controllerName


def _target_keys(obj: KubeObject) -> set[tuple[str, str]]:
    spec: BackendTLSPolicySpec = obj.spec
    return {(t.name, t.section) for t in spec.targets if t.group in ("", "core") and t.kind == "Service"}


def _conflicted_by(snapshot: InputSnapshot, obj: KubeObject) -> KubeObject | None:
    """An older policy in the same namespace with one of `obj`'s exact targets (same Service and port name)."""
    mine = _target_keys(obj)
    for other in snapshot.list("BackendTLSPolicy"):
        if other is obj or other.meta.namespace != obj.meta.namespace or age(other) >= age(obj):
            continue
        if mine & _target_keys(other):
            return other
    return None


def policy_conditions(snapshot: InputSnapshot, obj: KubeObject) -> tuple[list[Cond], Issue | None]:
    """Accepted and ResolvedRefs of one policy (the same for each of its ancestors), and the issue if any."""
    spec: BackendTLSPolicySpec = obj.spec
    bad = next((i for i, t in enumerate(spec.targets) if t.group not in ("", "core") or t.kind != "Service"), None)
    if bad is not None:
        t = spec.targets[bad]
        msg = f"spec.targetRefs[{bad}]: {t.group}/{t.kind} {t.name} is not a Service"
        return ([Cond("Accepted", False, "TargetNotFound", msg), Cond("ResolvedRefs", True, "ResolvedRefs")],
                Issue(str(obj.ref), f"spec.targetRefs[{bad}]", msg.split(": ", 1)[1]))
    if not spec.well_known:
        _, reason, message = ca_bundle(snapshot, obj)
        if reason:
            return ([Cond("Accepted", False, "NoValidCACertificate", message),
                     Cond("ResolvedRefs", False, reason, message)],
                    Issue(str(obj.ref), *message.split(": ", 1)))
    winner = _conflicted_by(snapshot, obj)
    if winner is not None:
        msg = f"BackendTLSPolicy {winner.meta.namespace}/{winner.meta.name} is older and targets the same port"
        return ([Cond("Accepted", False, "Conflicted", msg), Cond("ResolvedRefs", True, "ResolvedRefs")],
                Issue(str(obj.ref), "spec.targetRefs", msg, severity="warning"))
    return [Cond("Accepted", True, "Accepted"), Cond("ResolvedRefs", True, "ResolvedRefs")], None


def policy_statuses(snapshot: InputSnapshot, used_by: Mapping[tuple[str, str], set[Ancestor]],
                    status_time: str) -> tuple[list[ObjectStatus], list[Issue]]:
    """Status of every BackendTLSPolicy: one `ancestors` entry per Gateway whose routes use a targeted
    Service (`used_by`: Service namespace/name -> Gateways), each with the policy's conditions."""
    statuses: list[ObjectStatus] = []
    issues: list[Issue] = []
    for obj in snapshot.list("BackendTLSPolicy"):
        conds, issue = policy_conditions(snapshot, obj)
        if issue is not None:
            issues.append(issue)
        ancestors: set[Ancestor] = set()
        for name, _ in _target_keys(obj):
            ancestors |= used_by.get((obj.meta.namespace, name), set())
        prev = {}
        for a in previous_status(obj).get("ancestors") or []:
            if isinstance(a, Mapping) and isinstance(a.get("ancestorRef"), Mapping):
                r = a["ancestorRef"]
                prev[(r.get("namespace"), r.get("name"), a.get("controllerName"))] = a.get("conditions")
        ours = {c for _, _, c in ancestors}
        entries = [{"ancestorRef": {"group": GROUP, "kind": "Gateway", "namespace": ns, "name": name},
                    "controllerName": ctrl,
                    "conditions": conditions(conds, obj.meta.generation, prev.get((ns, name, ctrl)),
                                             fallback_time(obj, status_time))}
                   for ns, name, ctrl in sorted(ancestors)]
        foreign = [a for a in previous_status(obj).get("ancestors") or []
                   if isinstance(a, Mapping) and a.get("controllerName") not in ours | {CONTROLLER}]
        statuses.append(ObjectStatus(obj.api_version, obj.kind, obj.meta.namespace, obj.meta.name,
                                     obj.meta.generation, {"ancestors": [*entries, *foreign]}))
    return statuses, issues
