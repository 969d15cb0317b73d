"""GatewayStaticAddresses (upstream conformance/tests/gateway-static-addresses), restated.

The suite takes a usable and an unusable address from its caller (`--usable-network-addresses`,
`--unusable-network-addresses`) and puts them, after an address of a type no implementation supports,
in the Gateway's `spec.addresses`. Here `cilia serve` gets an address pool (`--gateway-address-pool`)
that holds the runner's Gateway loopback addresses (127.0.62.0/24, see runner.World.address): the usable
address is the Gateway's own one from it, the unusable one lies outside it. The suite removes one
address at a time: the fake type refuses the Gateway (Accepted=False, UnsupportedAddress); then the
unusable address keeps it from being programmed (AddressNotUsable); then it is programmed on the usable
address and reports just that one in status.addresses. Beyond the suite, the runner checks that Envoy
has no listener of the Gateway while it is not programmed, then one on the usable address, answering.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from conformance.runner import SERVE_ARGS, Expect, World, scenario
from conformance.scenarios import _generation
from support.conformance_base import INFRA

POOL = "127.0.62.0/24"  # every address runner.World.address hands out, and its default (127.0.62.250)
UNUSABLE = "127.0.63.1"  # a loopback address (bindable) outside the pool: only the pool makes it unusable
FAKE_TYPE = {"type": "test/fake-invalid-type", "value": "fake address teehee!"}
SERVE_ARGS.extend(["--gateway-address-pool", POOL])


def _envoy_listeners(w: World, gateway: str) -> list[str]:
    """The Gateway's listeners in the World's Envoy, as its admin lists them (`NAME::ADDRESS:PORT`)."""
    assert w.envoy is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{w.envoy.admin_port}/listeners", timeout=5) as r:
        lines = r.read().decode().split()
    return [ln for ln in lines if ln.startswith(f"gateway/{INFRA}/{gateway}/")]


@scenario("GatewayStaticAddresses")
def static_addresses(w: World) -> None:
    name = "gateway-static-addresses"
    usable = {"type": "IPAddress", "value": w.address(name)}
    unusable = {"type": "IPAddress", "value": UNUSABLE}
    listeners = [{"name": "http", "port": 8080, "protocol": "HTTP"}]

    def gateway(generation: int, *addresses: dict[str, str]) -> dict[str, Any]:
        return _generation(w.gateway(name, listeners, addresses=list(addresses)), generation)

    w.apply([gateway(1, FAKE_TYPE, unusable, usable)])
    w.expect_gateway(name, Accepted=("False", "UnsupportedAddress"))

    w.apply([gateway(2, unusable, usable)])  # the suite's patch removing the fake-typed address
    w.expect_gateway(name, Accepted=("True", "Accepted"), Programmed=("False", "AddressNotUsable"))
    # Nothing is bound (a sidecar's capture socket holds 0.0.0.0:8080 in this World, so ask Envoy).
    w.eventually("no Envoy listener", lambda: ", ".join(_envoy_listeners(w, name)))

    w.apply([gateway(3, usable)])  # ... and the unusable one
    ok = {"Accepted": ("True", "*"), "ResolvedRefs": ("True", "*")}
    w.expect_gateway(name, listeners={"http": {"supportedKindsInclude": ["HTTPRoute"], "attachedRoutes": 0,
                                               "conditions": ok}},
                     Accepted=("True", "Accepted"), Programmed=("True", "Programmed"))

    def one_address() -> str:
        got = (w.status("Gateway", name) or {}).get("status", {}).get("addresses")
        return "" if got == [usable] else f"status.addresses {got}, want [{usable}]"

    w.eventually("status.addresses", one_address)
    want = f"gateway/{INFRA}/{name}/8080::{usable['value']}:8080"
    w.eventually("Envoy listener", lambda: "" if _envoy_listeners(w, name) == [want] else
                 f"listeners {_envoy_listeners(w, name)}, want [{want}]")
    # The listener is bound on the usable address: no route attached, so the proxy's own 404.
    w.expect(name, Expect("/", status=404), port=8080)
