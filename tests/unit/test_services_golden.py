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

from cilia.k8s.manifest import parse_file
from cilia.k8s.store import Store
from cilia.render import envoy as r
from cilia.render.dump import resource_json
from cilia.render.resources import CLUSTER, ENDPOINT, Resource
from cilia.translate.context import TranslateOptions
from cilia.translate.services import resolve_backend, translate_services

CASES = sorted(p for p in (Path(__file__).parent.parent / "golden" / "services").iterdir() if p.is_dir())


def run_case(case: Path) -> dict[str, Any]:
    store = Store()
    path = case / "input.yaml"
    result = parse_file(path)
    store.replace_source(path.name, result)
    snapshot = store.snapshot()
    options = case / "options.yaml"
    opts = TranslateOptions(**(yaml.safe_load(options.read_text()) if options.exists() else {}))
    part = translate_services(snapshot, opts)
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
        "issues": [str(i).replace(str(case) + "/", "") for i in (*result.issues, *part.issues)],
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_services_golden(case: Path, update_golden: bool) -> None:
    got = run_case(case)
    expected = case / "expected.yaml"
    if update_golden or not expected.exists():
        expected.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
        if not update_golden:
            pytest.fail(f"{expected} did not exist; written, review it")
    assert got == yaml.safe_load(expected.read_text())
