"""The conformance report's consistency with the runner, and a quick subset of the runner through
real Envoy (the whole run is `make conformance`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cilia.translate.gateway_common import SUPPORTED_FEATURES
from conformance import report, upstream
from conformance.runner import SCENARIOS, World, run, running_as_root
from conformance.scenarios import SKIPPED

DOCS = Path(__file__).resolve().parents[2] / "docs" / "conformance"


def test_every_upstream_test_is_replayed_or_skipped_with_a_reason() -> None:
    for name in upstream.TESTS:
        assert (name in SCENARIOS) != (name in SKIPPED), name
        if name in SKIPPED:
            assert SKIPPED[name].strip(), name
    assert set(SCENARIOS) <= set(upstream.TESTS) | set(upstream.LATER_TESTS)


def test_checked_in_report_matches_the_runner() -> None:
    """The report was generated from the scenarios and skip reasons as they are now."""
    outcomes = report.load_outcomes(DOCS)
    assert {o.name for o in outcomes} == set(SCENARIOS), "docs/conformance is stale: run make conformance"
    res = report.results(outcomes)
    checked_in = yaml.safe_load((DOCS / report.REPORT).read_text())
    fresh = report.build(res, checked_in["implementation"]["version"], checked_in["date"])
    assert checked_in == fresh, "docs/conformance is stale: run make conformance"
    assert (DOCS / report.TABLE).read_text() == report.table(res, outcomes)


def test_supported_features_have_their_tests_passing() -> None:
    """Every feature cilia claims: each of its upstream tests is replayed, and passed."""
    res = report.results(report.load_outcomes(DOCS))
    for name, feats in upstream.TESTS.items():
        if set(feats) <= SUPPORTED_FEATURES | upstream.CORE and set(feats) - upstream.CORE:
            assert res[name].state == "passed", f"{name} ({res[name].state}: {res[name].note})"
    for p in upstream.PROFILES:
        for f in report.profile_features(p) - SUPPORTED_FEATURES:
            assert f not in SUPPORTED_FEATURES


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if not running_as_root():
        pytest.skip("the runner binds the suite's ports (80, 443, 8080): needs root")
    w = World().start()
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(n for n, s in SCENARIOS.items() if s.fast))
def test_fast_scenarios_through_envoy(world: World, name: str) -> None:
    [outcome] = run(world, [name])
    assert outcome.passed, outcome.message
