"""Golden tests for the Service translation: tests/golden/services/<case>/input.yaml -> expected.yaml.

expected.yaml holds the Envoy JSON of every EDS pool entry (`endpoints`), the cluster each Service
port resolves to as a backend (`clusters`: by number and, for named ports, by name; ExternalName ->
DNS cluster), the lookups that fail (`unresolved`), and the issues. A case may add `options.yaml`
(TranslateOptions fields, e.g. local_cluster) and `lookups.yaml` (extra [namespace, name, port]).
Regenerate with `pytest --update-golden` and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.render import envoy as r
from cilia.render.dump import resource_json
from cilia.render.resources import CLUSTER, ENDPOINT, Resource
from cilia.translate.services import resolve_backend, translate_services
from support.golden import assert_golden, case_options, golden_cases, issue_texts, load_case

CASES = golden_cases("services")


def run_case(case: Path) -> dict[str, Any]:
    snapshot, result = load_case(case)
    part = translate_services(snapshot, case_options(case))
    lookups: list[tuple[str, str, int | str | None]] = []
    for svc in snapshot.list("Service"):
        for sp in svc.spec.ports:
            lookups.append((svc.meta.namespace, svc.meta.name, sp.port))
            if sp.name:
                lookups.append((svc.meta.namespace, svc.meta.name, sp.name))
    extra = case / "lookups.yaml"
    if extra.exists():
        lookups += [tuple(x) for x in yaml.safe_load(extra.read_text())]  # type: ignore[misc]
    clusters: dict[str, Any] = {}
    unresolved: list[str] = []
    for ns, name, port in lookups:
        look = resolve_backend(snapshot, ns, name, port)
        if look.cluster is None:
            unresolved.append(f"{ns}/{name} port {port!r}: {look.reason}: {look.message}")
        else:
            clusters[look.cluster.name] = resource_json(Resource.of(CLUSTER, look.cluster.name,
                                                                    r.render_cluster(look.cluster)))
    return {
        "endpoints": [resource_json(Resource.of(ENDPOINT, n, r.render_endpoints(part.endpoints[n])))
                      for n in sorted(part.endpoints)],
        "clusters": [clusters[n] for n in sorted(clusters)],
        "unresolved": unresolved,
        "issues": issue_texts(case, result.issues, part.issues),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_services_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)
