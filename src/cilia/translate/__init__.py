"""Pure translators: input snapshot -> neutral model + statuses + issues."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

from cilia.diagnostics import Issue
from cilia.ir.model import Bundle, EndpointSet, MeshIR, ServiceRedirect
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot, Stamp
from cilia.translate.cec import dangling_cluster_refs, translate_envoy_configs
from cilia.translate.context import ObjectStatus, Partial, TranslateOptions
from cilia.translate.egress import translate_egress
from cilia.translate.gateway import translate_gateway
from cilia.translate.grpc import GRPC_ROLE, translate_grpc
from cilia.translate.incremental import Reads
from cilia.translate.ingress import translate_ingresses
from cilia.translate.mesh import translate_mesh
from cilia.translate.policy import translate_policies
from cilia.translate.redirect import translate_redirects
from cilia.translate.services import translate_services
from cilia.translate.telemetry import apply_telemetry

Translator = Callable[[InputSnapshot, TranslateOptions], Partial]

# Order matters only for readability of output; every translator sees the same snapshot.
TRANSLATORS: tuple[Translator, ...] = (
    translate_services,
    translate_envoy_configs,
    translate_mesh,
    translate_grpc,
    translate_policies,
    translate_redirects,
    translate_ingresses,
    translate_gateway,
    translate_egress,
)


ENDPOINT_KINDS = frozenset({"EndpointSlice", "Endpoints"})
ALL_KINDS = "*"


class ReadRecorder:
    """A view of a snapshot that records which kinds a translator read.

    A translator whose kinds did not change since the previous translation is not run again; its
    previous output is reused. Recording what was actually read (rather than declaring it) keeps that
    safe as translators evolve: reading anything but `list`/`get`/`count` counts as reading everything.
    """

    __slots__ = ("_snapshot", "kinds")

    def __init__(self, snapshot: InputSnapshot) -> None:
        self._snapshot = snapshot
        self.kinds: set[str] = set()

    def list(self, kind: str) -> Iterator[KubeObject]:
        self.kinds.add(kind)
        return self._snapshot.list(kind)

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        self.kinds.add(kind)
        return self._snapshot.get(kind, namespace, name)

    def count(self, kind: str | None = None) -> int:
        self.kinds.add(kind or ALL_KINDS)
        return self._snapshot.count(kind)

    def note_reads(self, reads: Reads) -> None:
        """A memoised unit was reused: it depends on the kinds it read."""
        self.kinds |= reads.kind_names

    def __getattr__(self, name: str) -> Any:
        self.kinds.add(ALL_KINDS)
        return getattr(self._snapshot, name)


@dataclass(frozen=True, slots=True)
class TranslationResult:
    ir: MeshIR
    statuses: tuple[ObjectStatus, ...]
    issues: tuple[Issue, ...]
    partials: tuple[Partial, ...] = ()
    reads: tuple[frozenset[str], ...] = ()  # per translator, the kinds it read
    opts: TranslateOptions | None = None
    reused: int = 0  # how many translators' outputs came from `previous`
    stamp: Stamp | None = None  # the store's snapshot translated


def _changed_kinds(previous: TranslationResult | None, snapshot: InputSnapshot,
                   opts: TranslateOptions) -> frozenset[str] | None:
    """The kinds changed since `previous` was translated; None when that is unknown (translate all).
    From the store's record when both snapshots come from it (so a snapshot taken and not translated
    loses nothing, and one that changed nothing reuses everything), else the snapshot's own."""
    if (previous is None or len(previous.partials) != len(TRANSLATORS) or previous.opts is None
            or _compared(previous.opts) != _compared(opts)):
        return None
    changes = snapshot.changes_after(previous.stamp)
    if changes is not None:
        return changes[0]
    return snapshot.changed_kinds or None


def _compared(opts: TranslateOptions) -> TranslateOptions:
    """The options as far as every translator reads them: not the status time (the next translation's
    own), nor whether gRPC targets are built (only translate_grpc reads that; it is run again)."""
    return replace(opts, status_time="", grpc_targets=True)


def _stable_bundles(part: Partial, before: Partial) -> Partial:
    """`part` with each bundle equal to the previous run's bundle of that key replaced by that very object,
    so rendering reuses it whole. Equality of unchanged (shared) nodes is an identity check."""
    if not part.bundles or not before.bundles:
        return part
    old = {b.key: b for b in before.bundles}
    bundles = tuple(prev if (prev := old.get(b.key)) is not None and prev is not b and prev == b else b
                    for b in part.bundles)
    if all(x is y for x, y in zip(bundles, part.bundles, strict=True)):
        return part
    return replace(part, bundles=bundles)


def translate(snapshot: InputSnapshot, opts: TranslateOptions | None = None,
              previous: TranslationResult | None = None) -> TranslationResult:
    """Translate everything. With `previous` (built from the snapshot before this one, whose
    `changed_kinds` say what changed since), translators that read none of the changed kinds are not
    run again."""
    opts = opts or TranslateOptions()
    changed = _changed_kinds(previous, snapshot, opts)
    reuse = changed is not None
    partials: list[Partial] = []
    reads: list[frozenset[str]] = []
    reused = 0
    grpc_flipped = previous is not None and previous.opts is not None and \
        previous.opts.grpc_targets != opts.grpc_targets
    for i, fn in enumerate(TRANSLATORS):
        if previous is not None and changed is not None and not (grpc_flipped and fn is translate_grpc):
            was = previous.reads[i]
            if ALL_KINDS not in was and not (was & changed):
                partials.append(previous.partials[i])
                reads.append(was)
                reused += 1
                continue
        recorder = ReadRecorder(snapshot)
        part = fn(cast(InputSnapshot, recorder), opts)
        if reuse:
            assert previous is not None
            part = _stable_bundles(part, previous.partials[i])
        partials.append(part)
        reads.append(frozenset(recorder.kinds))
    bundles: list[Bundle] = []
    endpoints: dict[str, EndpointSet] = {}
    redirects: list[ServiceRedirect] = []
    statuses: list[ObjectStatus] = []
    issues = list(snapshot.issues)
    for part in partials:
        bundles.extend(part.bundles)
        endpoints.update(part.endpoints)
        redirects.extend(part.redirects)
        statuses.extend(part.statuses)
        issues.extend(part.issues)
    refs = [r for part in partials for r in part.cluster_refs]
    if refs:
        issues.extend(dangling_cluster_refs(bundles, refs))
    node_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Node")}
    ir = apply_telemetry(MeshIR(tuple(bundles), endpoints, node_labels, tuple(redirects),
                                frozenset() if opts.grpc_targets else GRPC_ROLE), opts)
    return TranslationResult(ir, tuple(statuses), tuple(issues), tuple(partials), tuple(reads), opts, reused,
                             snapshot.stamp)
