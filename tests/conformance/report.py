"""The ConformanceReport (upstream format) and a table of every upstream test with its result or the
reason it is skipped, both under docs/conformance/, computed from the runner's outcomes."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cilia.translate.gateway_common import SUPPORTED_FEATURES
from conformance import upstream
from conformance.runner import Outcome
from conformance.scenarios import SKIPPED

REPORT = "cilia-report.yaml"
TABLE = "README.md"
RESULTS = "results.json"


@dataclass(frozen=True)
class Result:
    name: str
    state: str  # passed | failed | skipped
    note: str = ""  # failure message or skip reason


def results(outcomes: Iterable[Outcome]) -> dict[str, Result]:
    """Every upstream test of the target version (and the later ones replayed) -> its result."""
    out: dict[str, Result] = {}
    for o in outcomes:
        out[o.name] = Result(o.name, "passed" if o.passed else "failed", o.message)
    for name in upstream.TESTS:
        if name not in out:
            out[name] = Result(name, "skipped", SKIPPED.get(name, "not replayed"))
    return out


def _block(res: list[Result]) -> dict[str, Any]:
    passed = [r for r in res if r.state == "passed"]
    failed = [r for r in res if r.state == "failed"]
    skipped = [r for r in res if r.state == "skipped"]
    outcome = "failure" if failed else ("partial" if skipped else "success")
    out: dict[str, Any] = {"result": outcome,
                           "statistics": {"Failed": len(failed), "Passed": len(passed), "Skipped": len(skipped)}}
    if failed:
        out["failedTests"] = sorted(r.name for r in failed)
    if skipped:
        out["skippedTests"] = sorted(r.name for r in skipped)
    return out


def profile_features(profile: str) -> set[str]:
    feats: set[str] = set()
    for f in upstream.TESTS.values():
        if profile in upstream.profiles_of(f):
            feats.update(f)
    return feats - upstream.PROFILE_CORE[profile]


def build(res: Mapping[str, Result], version: str, date: str) -> dict[str, Any]:
    profiles = []
    for p in upstream.PROFILES:
        tests = [res[n] for n, f in upstream.TESTS.items() if p in upstream.profiles_of(f)]
        core = [r for r in tests if upstream.is_core(upstream.TESTS[r.name], p)]
        ext = [r for r in tests if not upstream.is_core(upstream.TESTS[r.name], p)]
        feats = profile_features(p)
        supported = sorted(feats & SUPPORTED_FEATURES)
        # Only tests of supported features count in the extended result, as upstream runs them.
        ext = [r for r in ext if set(upstream.TESTS[r.name]) - upstream.PROFILE_CORE[p] <= SUPPORTED_FEATURES]
        cb, eb = _block(core), _block(ext)
        eb["supportedFeatures"] = supported
        eb["unsupportedFeatures"] = sorted(feats - SUPPORTED_FEATURES)
        summary = (f"Core tests {'succeeded' if cb['result'] == 'success' else cb['result']} "
                   f"({cb['statistics']['Passed']} passed, {cb['statistics']['Skipped']} skipped). "
                   f"Extended tests {'succeeded' if eb['result'] == 'success' else eb['result']} "
                   f"({eb['statistics']['Passed']} passed, {eb['statistics']['Skipped']} skipped).")
        profiles.append({"name": p, "core": cb, "extended": eb, "summary": summary})
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ConformanceReport", "date": date,
            "gatewayAPIVersion": upstream.VERSION, "gatewayAPIChannel": upstream.CHANNEL,
            "implementation": {"organization": "cilia", "project": "cilia",
                               "url": "README.md", "version": version,
                               "contact": ["see README.md of the cilia repository"]},
            "mode": "default", "profiles": profiles}


def table(res: Mapping[str, Result], outcomes: Iterable[Outcome]) -> str:
    later = {o.name: o for o in outcomes if o.name in upstream.LATER_TESTS}
    lines = [
        "# Gateway API conformance",
        "",
        f"cilia targets Gateway API **{upstream.VERSION}** ({upstream.CHANNEL} channel). The report "
        f"[`{REPORT}`]({REPORT}) is in the upstream `ConformanceReport` format; this page lists every upstream "
        "test of that version with its result here, and why a skipped test is skipped.",
        "",
        "Regenerate both with `make conformance` (as root: the runner binds the suite's ports 80, 443 and 8080 "
        "on loopback addresses). `make test` checks that this page, the report and the runner agree and "
        "replays a quick subset through Envoy.",
        "",
        "| test | features | result | note |",
        "|---|---|---|---|",
    ]
    for name in sorted(upstream.TESTS):
        r = res[name]
        feats = ", ".join(f for f in upstream.TESTS[name] if f not in ("Gateway",))
        lines.append(f"| {name} | {feats} | {r.state} | {r.note.replace('|', '/')} |")
    if later:
        lines += ["", "Tests of later upstream releases that the runner replays too:", "",
                  "| test | result | note |", "|---|---|---|"]
        for name, o in sorted(later.items()):
            lines.append(f"| {name} | {'passed' if o.passed else 'failed'} | {o.message} |")
    return "\n".join(lines) + "\n"


def write(outcomes: list[Outcome], out: Path, version: str = "") -> None:
    from importlib.metadata import version as pkg_version
    res = results(outcomes)
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = build(res, version or pkg_version("cilia"), date)
    (out / REPORT).write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    (out / TABLE).write_text(table(res, outcomes))
    (out / RESULTS).write_text(json.dumps({o.name: {"passed": o.passed, "message": o.message}
                                           for o in outcomes}, indent=1, sort_keys=True) + "\n")


def load_outcomes(out: Path) -> list[Outcome]:
    data = json.loads((out / RESULTS).read_text())
    return [Outcome(n, bool(v["passed"]), str(v["message"])) for n, v in data.items()]
