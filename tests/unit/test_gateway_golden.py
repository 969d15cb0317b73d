"""Gateway API goldens: tests/golden/gateway/<case>/input.yaml -> expected.yaml.

expected.yaml holds, for the proxies named on the input's `# proxies:` line (default
`gateway~default/gw`), the Envoy resources they receive (listeners, routes, clusters, secrets), then
every Gateway API status stanza and every issue; a case's options.yaml sets TranslateOptions fields.
Regenerate with `--update-golden` (or CILIA_UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.golden import assert_golden, case_options, proxy_config, translate_case

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "gateway"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())
GATEWAY_KINDS = {"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "BackendTLSPolicy"}


def _proxies(text: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith("# proxies:"):
            return line.split(":", 1)[1].split()
    return ["gateway~default/gw"]


def render_case(case: Path) -> dict[str, Any]:
    text = (case / "input.yaml").read_text()
    _, result, world = translate_case(case, case_options(case))
    out: dict[str, Any] = {"proxies": {}}
    for proxy in _proxies(text):
        cfg = proxy_config(world, proxy)
        cfg.pop("endpoints")  # the shared EDS pool: the Service translator's golden business
        out["proxies"][proxy] = cfg
    out["statuses"] = [s.as_dict() for s in result.statuses if s.kind in GATEWAY_KINDS]
    out["issues"] = [f"{i.severity}: {i.object}: {i.field}: {i.message}" for i in (*result.issues, *world.issues)]
    return out


def test_cases_present() -> None:
    want = {"http-basic", "matches", "precedence", "filters", "redirects-rewrites", "mirror-weights-timeouts",
            "invalid-backends", "reference-grant", "listener-conflicts", "https-certs", "tls-passthrough-tcp",
            "attachment", "addresses", "grpc-route", "gamma", "status-preserved", "isolation", "foreign-class",
            "frontend-validation"}
    assert want <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_gateway_golden(name: str, update_golden: bool) -> None:
    assert_golden(GOLDEN / name, render_case(GOLDEN / name), update_golden)


@pytest.mark.parametrize("name", CASES)
def test_every_condition_observes_the_generation(name: str) -> None:
    data = render_case(GOLDEN / name)
    for st in data["statuses"]:
        gen = st["metadata"]["generation"]
        stanzas = [st["status"], *st["status"].get("listeners", []), *st["status"].get("parents", [])]
        for stanza in stanzas:
            for c in stanza.get("conditions", []):
                if c.get("reason") in ("Fine",) or "theirs" in c.get("message", ""):
                    continue  # another controller's condition, kept as it was
                assert c["observedGeneration"] == gen, (name, st["metadata"], c)
                assert c["lastTransitionTime"]
