"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy -> per-pod ingress authorization (Envoy RBAC at
the mesh inbound proxy), plus each policy's status.

Semantics, as in Cilium:
* `endpointSelector` picks the pods a rule applies to: in its own namespace for a CiliumNetworkPolicy,
  anywhere for a clusterwide one (which may select namespaces with `io.kubernetes.pod.namespace`).
* A pod selected by any rule with `ingress` or `ingressDeny` entries is in default deny for ingress
  (unless that rule says `enableDefaultDeny.ingress: false`): only what some `ingress` entry allows
  passes. `ingressDeny` entries are checked first and win over any allow.
* An entry allows (or denies) peers by `fromEndpoints` (label selectors; in a namespaced policy a
  selector without `io.kubernetes.pod.namespace` means the policy's namespace) and `fromEntities`
  (`all`: every peer; `cluster`: every workload of the trust domain); without any `from*` field, every
  peer. `toPorts[].ports` narrows it to ports (numbers, ranges with `endPort`, named container ports
  of the selected pod; `0` = all), and `toPorts[].rules.http[]` to HTTP requests (method, path and host
  are whole-value regular expressions; headers `Name` or `Name: value`). An entry with neither `from*`
  nor `toPorts` (`{}`) allows nothing, the usual "deny all ingress" idiom.
* Peers are identified by the SPIFFE ID of their mTLS certificate, `spiffe://TD/ns/NS/sa/SA`, so
  cilia enforces per ServiceAccount: a selector matching some pods of a ServiceAccount admits every
  pod of it (reported as a warning naming the pods). The set is recomputed from the pods' current
  labels on every change. Without mesh mTLS (no CA) no peer has an identity: `fromEndpoints` and
  `fromEntities: [cluster]` match nobody, which is reported.
* Enforcement happens in the inbound proxy of a mesh pod: its sidecar, or (mTLS only) its node's
  Envoy. Selected pods without one are counted in the status and reported.

Everything valid but not enforced (L3 CIDR rules, other entities, egress, non-HTTP L7 rules, ...) is
reported on the policy (status `notEnforced` and a warning), never silently ignored: an allow entry
whose only peers are unenforced (e.g. only `fromCIDR`) allows nothing; a deny entry of that kind
denies nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir.model import AuthzRule, HeaderMatch, HttpRequestMatch, IngressAuthz, PeerMatch
from cilia.k8s.ciliumpolicy import (
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    SERVICE_ACCOUNT_LABEL,
    IngressRule,
    NetworkPolicySpec,
    PolicyPort,
    PolicyRule,
)
from cilia.k8s.objects import KubeObject
from cilia.k8s.selector import LabelSelector
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import ObjectStatus, Partial, TranslateOptions
from cilia.translate.gateway_common import Cond, conditions, fallback_time, previous_status
from cilia.translate.meshpods import MeshPod, mesh_pods

POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
API_VERSION = "cilium.io/v2"
STAT_PREFIX = "policy_"


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod as policies see it: its labels plus the ones Cilium derives, and its identity."""

    pod: MeshPod
    labels: Mapping[str, str]

    @property
    def identity(self) -> tuple[str, str]:
        return self.pod.namespace, self.pod.service_account


def workload_labels(pod: MeshPod, namespace_labels: Mapping[str, str]) -> dict[str, str]:
    labels = dict(pod.labels)
    labels[NAMESPACE_LABEL] = pod.namespace
    labels[SERVICE_ACCOUNT_LABEL] = pod.service_account
    for k, v in namespace_labels.items():
        labels[NAMESPACE_LABELS_PREFIX + k] = v
    return labels


def has_inbound_proxy(pod: MeshPod, opts: TranslateOptions) -> bool:
    """Whether some proxy terminates this pod's inbound traffic (where policy is enforced)."""
    return pod.mode == "sidecar" or (pod.mode == "node" and bool(opts.mesh_trust_domain) and bool(pod.node))


@dataclass(slots=True)
class _PolicyReport:
    selected: set[str] = field(default_factory=set)
    enforced: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)  # field -> message
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    by_pod: Mapping[str, IngressAuthz]  # "ns/pod" -> authz, for every pod some policy selects
    statuses: tuple[ObjectStatus, ...] = ()
    issues: tuple[Issue, ...] = ()


def _selector_in_namespace(sel: LabelSelector, namespace: str) -> LabelSelector:
    if any(k == NAMESPACE_LABEL for k, _ in sel.match_labels) or \
            any(r.key == NAMESPACE_LABEL for r in sel.match_expressions):
        return sel
    return LabelSelector(tuple(sorted((*sel.match_labels, (NAMESPACE_LABEL, namespace)))), sel.match_expressions)


class _Compiler:
    def __init__(self, workloads: list[Workload], opts: TranslateOptions) -> None:
        self.workloads = workloads
        self.opts = opts
        self.td = opts.mesh_trust_domain
        self._by_identity: dict[tuple[str, str], list[Workload]] = defaultdict(list)
        for w in workloads:
            self._by_identity[w.identity].append(w)

    def select(self, sel: LabelSelector) -> list[Workload]:
        return [w for w in self.workloads if sel.matches(w.labels)]

    def peers(self, obj: KubeObject, rule: IngressRule, clusterwide: bool,
              report: _PolicyReport) -> tuple[PeerMatch, ...]:
        if not rule.has_l3:
            return (PeerMatch("any"),)
        out: list[PeerMatch] = []
        if "all" in rule.from_entities:
            return (PeerMatch("any"),)
        if "cluster" in rule.from_entities:
            if self.td:
                out.append(PeerMatch("prefix", f"spiffe://{self.td}/"))
            else:
                report.notes[f"{rule.path}.fromEntities"] = ("mesh mTLS is off (no CA): peers have no identity, so "
                                                             "'cluster' matches nobody")
        for i, sel in enumerate(rule.from_endpoints or ()):
            if not clusterwide:
                sel = _selector_in_namespace(sel, obj.meta.namespace)
            matched = self.select(sel)
            if not self.td:
                report.notes[f"{rule.path}.fromEndpoints"] = ("mesh mTLS is off (no CA): peers have no identity, "
                                                              "so fromEndpoints matches nobody")
                continue
            idents = sorted({w.identity for w in matched})
            for ns, sa in idents:
                out.append(PeerMatch("exact", f"spiffe://{self.td}/ns/{ns}/sa/{sa}"))
                extra = sorted(w.pod.key for w in self._by_identity[(ns, sa)] if not sel.matches(w.labels))
                if extra:
                    report.warnings[f"{rule.path}.fromEndpoints[{i}]"] = (
                        f"matches pods of ServiceAccount {ns}/{sa}, whose other pods ({', '.join(extra)}) share "
                        "its identity and are admitted too (identity is per ServiceAccount)")
        return tuple(dict.fromkeys(out))

    def rules(self, obj: KubeObject, policy: str, entries: Iterable[IngressRule], w: Workload, clusterwide: bool,
              report: _PolicyReport, deny: bool) -> list[AuthzRule]:
        out: list[AuthzRule] = []
        for entry in entries:
            if not entry.has_l3 and not entry.to_ports:
                continue  # `{}`: matches nothing
            peers = self.peers(obj, entry, clusterwide, report)
            if not peers:
                continue  # nobody it can identify: matches nothing
            port_rules = entry.to_ports or (None,)
            for j, pr in enumerate(port_rules):
                name = f"{policy.replace(' ', '/')}:{entry.path}" + (f".toPorts[{j}]" if pr is not None else "")
                if pr is None:
                    out.append(AuthzRule(name, policy, peers))
                    continue
                ports = self.ports(pr.ports, w, f"{entry.path}.toPorts[{j}]", report)
                if ports is None:
                    continue  # named ports this pod does not have: nothing to allow or deny here
                http = None if pr.http is None else tuple(
                    HttpRequestMatch(h.method, h.path, h.host,
                                     tuple(HeaderMatch(n, "present") if v is None else HeaderMatch(n, "exact", v)
                                           for n, v in h.headers)) for h in pr.http if not h.unenforced)
                out.append(AuthzRule(name, policy, peers, ports, http))
        return out

    def ports(self, ports: tuple[PolicyPort, ...], w: Workload, path: str,
              report: _PolicyReport) -> tuple[tuple[int, int], ...] | None:
        """Inclusive ranges; () = every port; None = only named ports the pod lacks."""
        if not ports or any(p.port == 0 and not p.name for p in ports):
            return ()
        out: list[tuple[int, int]] = []
        for p in ports:
            if p.name:
                found = [cp.port for cp in w.pod.ports if cp.name == p.name and cp.protocol in ("TCP", "")]
                if not found:
                    report.warnings[f"{path}.ports"] = f"pod {w.pod.key} has no TCP port named {p.name!r}"
                out.extend((port, port) for port in found)
            else:
                out.append((p.port, max(p.port, p.end_port)))
        return tuple(sorted(set(out))) or None


def compile_policies(snapshot: InputSnapshot, opts: TranslateOptions,
                     pods: list[MeshPod] | None = None) -> CompiledPolicies:
    """Per-pod authorization and per-policy status. Pure: the same snapshot gives the same result."""
    policies = [o for kind in POLICY_KINDS for o in snapshot.list(kind)]
    if not policies:
        return CompiledPolicies({})
    if pods is None:
        pods, _ = mesh_pods(snapshot, opts)
    ns_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Namespace")}
    workloads = [Workload(p, workload_labels(p, ns_labels.get(p.namespace, {}))) for p in pods]
    comp = _Compiler(workloads, opts)
    allow: dict[str, list[AuthzRule]] = defaultdict(list)
    deny: dict[str, list[AuthzRule]] = defaultdict(list)
    default_deny: dict[str, bool] = {}
    sources: dict[str, list[str]] = defaultdict(list)
    statuses = []
    issues: list[Issue] = []
    for obj in sorted(policies, key=lambda o: (o.kind, o.meta.namespace, o.meta.name)):
        spec: NetworkPolicySpec = obj.spec
        policy = str(obj.ref)
        report = _PolicyReport()
        for note in spec.not_enforced:
            report.notes[note.field] = note.message
        for rule in spec.rules:
            _apply_rule(comp, obj, policy, rule, spec.clusterwide, report, allow, deny, default_deny, sources, opts)
        statuses.append(_status(obj, report, opts))
        ref = str(obj.ref)
        issues.extend(Issue(ref, f, f"not enforced: {m}", severity="warning") for f, m in sorted(report.notes.items()))
        issues.extend(Issue(ref, f, m, severity="warning") for f, m in sorted(report.warnings.items()))
        unenforced = sorted(report.selected - report.enforced)
        if unenforced:
            issues.append(Issue(ref, "spec.endpointSelector", f"selects {len(unenforced)} pod(s) without a mesh "
                                f"inbound proxy, where it is not enforced: {', '.join(unenforced[:5])}"
                                + (" ..." if len(unenforced) > 5 else ""), severity="warning"))
    by_pod = {key: IngressAuthz(tuple(allow[key]), tuple(deny[key]), default_deny.get(key, False), STAT_PREFIX,
                                tuple(dict.fromkeys(sources[key])))
              for key in sorted(set(allow) | set(deny) | set(default_deny))}
    return CompiledPolicies(by_pod, tuple(statuses), tuple(issues))


def _apply_rule(comp: _Compiler, obj: KubeObject, policy: str, rule: PolicyRule, clusterwide: bool,
                report: _PolicyReport, allow: dict[str, list[AuthzRule]], deny: dict[str, list[AuthzRule]],
                default_deny: dict[str, bool], sources: dict[str, list[str]], opts: TranslateOptions) -> None:
    if rule.endpoint_selector is None:
        return
    sel = rule.endpoint_selector if clusterwide else _selector_in_namespace(rule.endpoint_selector,
                                                                            obj.meta.namespace)
    has_ingress = bool(rule.ingress) or bool(rule.ingress_deny)
    for w in comp.select(sel):
        key = w.pod.key
        report.selected.add(key)
        if has_inbound_proxy(w.pod, opts):
            report.enforced.add(key)
        sources[key].append(str(obj.ref))
        if has_ingress and rule.default_deny_ingress is not False:
            default_deny[key] = True
        elif has_ingress:
            default_deny.setdefault(key, False)
        allow[key].extend(comp.rules(obj, policy, rule.ingress or (), w, clusterwide, report, deny=False))
        deny[key].extend(comp.rules(obj, policy, rule.ingress_deny or (), w, clusterwide, report, deny=True))


def _status(obj: KubeObject, report: _PolicyReport, opts: TranslateOptions) -> ObjectStatus:
    notes = [f"{f}: {m}" for f, m in sorted(report.notes.items())]
    if notes:
        cond = Cond("Enforced", False, "PartiallyEnforced", f"{len(notes)} part(s) of this policy are not "
                                                                "enforced; see notEnforced")
    else:
        cond = Cond("Enforced", True, "Enforced", "every rule is enforced at the mesh inbound proxies")
    prev = previous_status(obj)
    status: dict[str, Any] = {
        "conditions": conditions([cond], obj.meta.generation, prev.get("conditions"),
                                 fallback_time(obj, opts.status_time)),
        "selectedPods": len(report.selected),
        "enforcedPods": len(report.enforced),
    }
    if notes:
        status["notEnforced"] = notes
    return ObjectStatus(API_VERSION, obj.kind, obj.meta.namespace, obj.meta.name, obj.meta.generation, status)


def translate_policies(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    """Registered in TRANSLATORS for the statuses and issues; the mesh translator puts the per-pod
    authorization into the inbound listeners (both call `compile_policies`)."""
    compiled = compile_policies(snapshot, opts)
    return Partial(statuses=compiled.statuses, issues=compiled.issues)
