"""ListenerSets (gateway.networking.k8s.io/v1): admission by their parent Gateway, and their status.

A Gateway admits ListenerSets only as its `spec.allowedListeners.namespaces.from` says: `None` (the
default) admits none, `Same` those in its own namespace, `All` any, `Selector` those whose namespace's
labels match. The Gateway reports how many it admitted in `status.attachedListenerSets`.

The listeners of admitted ListenerSets are merged into the parent Gateway's (translate/gateway.py): they
share its ports and Envoy listeners, the Gateway's own listeners first, then the ListenerSets oldest
first (creationTimestamp, then namespace/name), so on a port, hostname or protocol conflict the earlier
listener wins and the later one is reported Conflicted. Routes attach to them with a parentRef of kind
ListenerSet (optionally naming one listener in sectionName); a parentRef to the Gateway reaches only the
Gateway's own listeners.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cilia.diagnostics import Issue
from cilia.k8s.gateway import GROUP
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import ObjectStatus, TranslateOptions
from cilia.translate.gateway_common import (
    Cond,
    conditions,
    fallback_time,
    namespace_labels,
    norm_group,
    previous_status,
    route_age,
)


@dataclass(frozen=True, slots=True)
class ListenerSetResult:
    """Statuses of the ListenerSets cilia's Gateways refuse, issues, and per Gateway key (`NS/NAME`)
    the ListenerSets it admitted."""

    statuses: tuple[ObjectStatus, ...]
    issues: tuple[Issue, ...]
    admitted: Mapping[str, tuple[KubeObject, ...]]  # Gateway key -> its ListenerSets, in precedence order
    reported: frozenset[str]  # Gateway keys whose status carries attachedListenerSets

    def parent_of(self, ns: str, name: str) -> tuple[str, KubeObject] | None:
        """The Gateway key that admitted ListenerSet ns/name, and the ListenerSet; None if none did."""
        for key, sets in self.admitted.items():
            for ls in sets:
                if ls.meta.namespace == ns and ls.meta.name == name:
                    return key, ls
        return None


def admits(snapshot: InputSnapshot, gw: KubeObject, ls: KubeObject) -> bool:
    """Whether Gateway `gw`'s allowedListeners lets ListenerSet `ls` attach."""
    al = gw.spec.allowed_listeners
    if al.namespaces_from == "All":
        return True
    if al.namespaces_from == "Same":
        return bool(ls.meta.namespace == gw.meta.namespace)
    if al.namespaces_from == "Selector":
        assert al.selector is not None
        return bool(al.selector.matches(namespace_labels(snapshot, ls.meta.namespace)))
    return False


def _status(ls: KubeObject, accepted: Cond, programmed: Cond, opts: TranslateOptions,
            listeners: Sequence[Mapping[str, Any]] = ()) -> ObjectStatus:
    prev = previous_status(ls)
    conds = conditions([accepted, programmed], ls.meta.generation, prev.get("conditions"),
                       fallback_time(ls, opts.status_time), owned=("Accepted", "Programmed"))
    status: dict[str, Any] = {"conditions": conds}
    if listeners:
        status["listeners"] = list(listeners)
    return ObjectStatus(ls.api_version, ls.kind, ls.meta.namespace, ls.meta.name, ls.meta.generation, status)


def listener_set_status(ls: KubeObject, listeners: Sequence[Mapping[str, Any]], valid: int, parent_ok: bool,
                        parent: str, opts: TranslateOptions, unprogrammed: Cond | None = None) -> ObjectStatus:
    """An admitted ListenerSet's status: its listeners' stanzas (as a Gateway's), and Accepted/Programmed
    while its parent is accepted and at least one of its listeners is valid. `unprogrammed`: why the
    parent, though accepted, binds nothing (its Programmed=False condition)."""
    if not parent_ok:
        why = f"parent Gateway {parent} is not accepted"
        return _status(ls, Cond("Accepted", False, "ParentNotAccepted", why),
                       Cond("Programmed", False, "Invalid", why), opts, listeners)
    if not valid:
        why = "no listener is valid (see status.listeners)"
        return _status(ls, Cond("Accepted", False, "ListenersNotValid", why),
                       Cond("Programmed", False, "ListenersNotValid", why), opts, listeners)
    if valid < len(listeners):
        accepted = Cond("Accepted", True, "ListenersNotValid", "some listeners are not valid (see status.listeners)")
    else:
        accepted = Cond("Accepted", True, "Accepted", f"attached to Gateway {parent}")
    programmed = Cond("Programmed", True, "Programmed", f"served by Gateway {parent}") if unprogrammed is None \
        else Cond("Programmed", False, unprogrammed.reason, f"parent Gateway {parent}: {unprogrammed.message}")
    return _status(ls, accepted, programmed, opts, listeners)


def translate_listener_sets(snapshot: InputSnapshot, gateways: Mapping[str, KubeObject],
                            opts: TranslateOptions) -> ListenerSetResult:
    """Admission and status of every ListenerSet whose parentRef names one of `gateways` (cilia's, by
    `NS/NAME`). A ListenerSet whose parent is missing gets an issue; one whose parent is another
    controller's is left alone (no status)."""
    statuses: list[ObjectStatus] = []
    issues: list[Issue] = []
    admitted: dict[str, list[KubeObject]] = {}
    for ls in snapshot.list("ListenerSet"):
        ref = ls.spec.parent_ref
        if norm_group(ref.group) != GROUP or ref.kind != "Gateway":
            issues.append(Issue(str(ls.ref), "spec.parentRef",
                                f"parentRef must be a {GROUP} Gateway, got {ref.group}/{ref.kind}", severity="warning"))
            continue
        key = f"{ref.namespace}/{ref.name}"
        gw = gateways.get(key)
        if gw is None:
            if snapshot.get("Gateway", ref.namespace, ref.name) is None:
                issues.append(Issue(str(ls.ref), "spec.parentRef", f"Gateway {key} not found", severity="warning"))
            continue
        if not admits(snapshot, gw, ls):
            frm = gw.spec.allowed_listeners.namespaces_from
            why = f"Gateway {key} does not allow ListenerSets from namespace {ls.meta.namespace} " \
                  f"(spec.allowedListeners.namespaces.from: {frm})"
            statuses.append(_status(ls, Cond("Accepted", False, "NotAllowed", why),
                                    Cond("Programmed", False, "NotAllowed", why), opts))
            continue
        admitted.setdefault(key, []).append(ls)
    reported = frozenset(key for key, gw in gateways.items()
                         if gw.spec.allowed_listeners.namespaces_from != "None" or key in admitted)
    ordered = {key: tuple(sorted(sets, key=route_age)) for key, sets in admitted.items()}
    return ListenerSetResult(tuple(statuses), tuple(issues), ordered, reported)


def with_attached(status: ObjectStatus, result: ListenerSetResult, accepted: int) -> ObjectStatus:
    """A Gateway's status with `attachedListenerSets` (the admitted ListenerSets that are Accepted) added:
    for Gateways that allow ListenerSets or have some attached (absent reads as 0, so other Gateways'
    status stays as it was)."""
    key = f"{status.namespace}/{status.name}"
    if status.kind != "Gateway" or key not in result.reported:
        return status
    return replace(status, status={**status.status, "attachedListenerSets": accepted})
