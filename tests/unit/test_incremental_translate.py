"""Translators whose input kinds did not change are not run again, and the result is the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilia.k8s.manifest import parse_file, parse_text
from cilia.k8s.store import Store
from cilia.translate import ALL_KINDS, TRANSLATORS, translate

GOLDEN = Path(__file__).parent.parent / "golden"
INPUTS = sorted(GOLDEN.glob("*/*/input.yaml"))


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.parent.name}/{p.parent.name}" for p in INPUTS])
def test_incremental_equals_full_for_every_single_kind_edit(path: Path) -> None:
    """For each kind in a golden input, drop that kind's objects: the incremental translation must
    equal a from-scratch translation of the same objects."""
    result = parse_file(path)
    kinds = sorted({o.kind for o in result.objects})
    for kind in kinds:
        store = Store()
        store.replace_source("f", result)
        before = translate(store.snapshot())
        assert all(ALL_KINDS not in r for r in before.reads), "translators read only through list/get"
        kept = [o for o in result.objects if o.kind != kind]
        store.replace_source("f", type(result)(result.path, True, tuple(kept), ()))
        snap = store.snapshot()
        inc = translate(snap, None, before)
        full = translate(snap)
        assert inc.ir == full.ir, kind
        assert inc.statuses == full.statuses, kind
        assert sorted(map(str, inc.issues)) == sorted(map(str, full.issues)), kind


def test_an_unrelated_edit_reuses_other_translators() -> None:
    text = (GOLDEN / "translate/cec-qualification/input.yaml").read_text()
    store = Store()
    store.replace_source("f", parse_text(text, "f"))
    first = translate(store.snapshot())
    store.replace_source("f", parse_text(text.replace("connect_timeout: 2s", "connect_timeout: 3s"), "f"))
    second = translate(store.snapshot(), None, first)
    assert 0 < second.reused < len(TRANSLATORS), "only translators reading CiliumEnvoyConfig ran again"
    assert second.ir != first.ir
