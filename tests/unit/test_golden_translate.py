"""Golden tests for translation: tests/golden/translate/<case>/input.yaml -> expected.yaml.

Each case may have `proxy.txt` (proxy ids, one per line; default `node~local`); expected.yaml maps each
proxy id to what `cilia translate` prints for it, plus `issues` (the rendered issue texts).
Regenerate with `pytest --update-golden` (or CILIA_UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.identity import ProxyId
from cilia.k8s.manifest import parse_file
from cilia.k8s.store import Store
from cilia.render.dump import proxy_config_json
from cilia.render.world import render_world
from cilia.translate import translate

CASES = sorted(p for p in (Path(__file__).parent.parent / "golden" / "translate").iterdir() if p.is_dir())


def run_case(case: Path) -> dict[str, Any]:
    store = Store()
    path = case / "input.yaml"
    store.replace_source(path.name, parse_file(path))
    result = translate(store.snapshot())
    world = render_world(result.ir)
    proxies = (case / "proxy.txt").read_text().split() if (case / "proxy.txt").exists() else ["node~local"]
    out: dict[str, Any] = {p: proxy_config_json(world.for_proxy(ProxyId.parse(p))) for p in proxies}
    out["issues"] = [str(i).replace(str(case) + "/", "") for i in (*result.issues, *world.issues)]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Path, update_golden: bool) -> None:
    got = run_case(case)
    expected = case / "expected.yaml"
    if update_golden or not expected.exists():
        expected.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
        if not update_golden:
            pytest.fail(f"{expected} did not exist; written, review it")
    assert got == yaml.safe_load(expected.read_text())
