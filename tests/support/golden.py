"""Golden-file helpers shared by the translation goldens: tests/golden/<stage>/<case>/input.yaml ->
expected.yaml. Expected files are compared as data (YAML), so key order never matters; regenerate with
`pytest --update-golden` (or CILIA_UPDATE_GOLDEN=1) and review the diff."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.diagnostics import Issue
from cilia.identity import ProxyId
from cilia.k8s.manifest import FileResult, parse_file
from cilia.k8s.store import InputSnapshot, Store
from cilia.render.dump import proxy_config_json
from cilia.render.world import RenderedWorld, render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def golden_cases(stage: str) -> list[Path]:
    return sorted(p for p in (GOLDEN / stage).iterdir() if (p / "input.yaml").is_file())


def case_options(case: Path, defaults: Mapping[str, Any] | None = None) -> TranslateOptions:
    """TranslateOptions from `defaults` overlaid with the case's options.yaml, if any."""
    fields = dict(defaults or {})
    extra = case / "options.yaml"
    if extra.is_file():
        fields.update(yaml.safe_load(extra.read_text()) or {})
    # YAML lists become tuples: options are frozen and hashed (memo keys).
    return TranslateOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def case_proxies(case: Path, default: Iterable[str]) -> list[str]:
    """Proxy ids from the case's proxy.txt (one per line), else `default`."""
    listed = case / "proxy.txt"
    return listed.read_text().split() if listed.is_file() else list(default)


def load_case(case: Path) -> tuple[InputSnapshot, FileResult]:
    path = case / "input.yaml"
    parsed = parse_file(path)
    store = Store()
    store.replace_source(path.name, parsed)
    return store.snapshot(), parsed


def translate_case(case: Path, opts: TranslateOptions | None = None
                   ) -> tuple[InputSnapshot, TranslationResult, RenderedWorld]:
    snapshot, _ = load_case(case)
    result = translate(snapshot, opts or TranslateOptions())
    return snapshot, result, render_world(result.ir)


def proxy_config(world: RenderedWorld, proxy: str) -> dict[str, list[Any]]:
    return proxy_config_json(world.for_proxy(ProxyId.parse(proxy)), redact=False)


def issue_texts(case: Path, *groups: Iterable[Issue]) -> list[str]:
    """Issue texts with the case directory cut from file locations, so they do not depend on the checkout."""
    return [str(i).replace(str(case) + "/", "") for group in groups for i in group]


def assert_golden(case: Path, got: Any, update: bool) -> None:
    expected = case / "expected.yaml"
    if update:
        expected.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
    if not expected.is_file():
        pytest.fail(f"{expected} is missing: run with --update-golden and review it")
    assert got == yaml.safe_load(expected.read_text()), \
        f"{case.name}: output differs from {expected} (run with --update-golden to accept)"
