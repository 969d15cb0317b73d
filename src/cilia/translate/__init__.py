"""Pure translators: input snapshot -> neutral model + statuses + issues."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cilia.diagnostics import Issue
from cilia.ir.model import Bundle, EndpointSet, MeshIR, ServiceRedirect
from cilia.k8s.store import InputSnapshot
from cilia.translate.cec import translate_envoy_configs
from cilia.translate.context import ObjectStatus, Partial, TranslateOptions
from cilia.translate.services import translate_services
from cilia.translate.telemetry import apply_telemetry

Translator = Callable[[InputSnapshot, TranslateOptions], Partial]

# Order matters only for readability of output; every translator sees the same snapshot.
TRANSLATORS: tuple[Translator, ...] = (translate_services, translate_envoy_configs)


ENDPOINT_KINDS = frozenset({"EndpointSlice", "Endpoints"})


@dataclass(frozen=True, slots=True)
class TranslationResult:
    ir: MeshIR
    statuses: tuple[ObjectStatus, ...]
    issues: tuple[Issue, ...]
    partials: tuple[Partial, ...] = ()


def translate(snapshot: InputSnapshot, opts: TranslateOptions | None = None,
              previous: TranslationResult | None = None) -> TranslationResult:
    """Translate everything; with `previous`, an endpoint-only change re-runs only the Service translator."""
    opts = opts or TranslateOptions()
    fast = (previous is not None and len(previous.partials) == len(TRANSLATORS)
            and snapshot.changed_kinds and snapshot.changed_kinds <= ENDPOINT_KINDS)
    partials = []
    for i, fn in enumerate(TRANSLATORS):
        if fast and fn is not translate_services:
            assert previous is not None
            partials.append(previous.partials[i])
        else:
            partials.append(fn(snapshot, opts))
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
    node_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Node")}
    ir = apply_telemetry(MeshIR(tuple(bundles), endpoints, node_labels, tuple(redirects)), opts)
    return TranslationResult(ir, tuple(statuses), tuple(issues), tuple(partials))
