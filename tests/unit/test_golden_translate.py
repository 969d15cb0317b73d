"""Golden tests for translation: tests/golden/translate/<case>/input.yaml -> expected.yaml.

Each case may have `proxy.txt` (proxy ids, one per line; default `node~local`); expected.yaml maps each
proxy id to what `cilia translate` prints for it, plus `issues` (the rendered issue texts).
Regenerate with `pytest --update-golden` (or CILIA_UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.golden import assert_golden, case_proxies, golden_cases, issue_texts, proxy_config, translate_case

CASES = golden_cases("translate")


def run_case(case: Path) -> dict[str, Any]:
    _, result, world = translate_case(case)
    out: dict[str, Any] = {p: proxy_config(world, p) for p in case_proxies(case, ["node~local"])}
    out["issues"] = issue_texts(case, result.issues, world.issues)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)
