"""The direct ClusterLoadAssignment writer must serialise exactly as the message builder does."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cilia.ir import model as ir
from cilia.render import envoy as r


def _random_set(rng: random.Random, name: str) -> ir.EndpointSet:
    locs = []
    for _ in range(rng.randint(0, 3)):
        eps = tuple(ir.Endpoint(rng.choice(["10.0.0.1", "fd00::1", "127.1.2.3", "x" * rng.randint(1, 300)]),
                                rng.choice([0, 1, 80, 127, 128, 8080, 65535, 1 << 20]),
                                rng.choice(["HEALTHY", "UNHEALTHY", "DRAINING"]),
                                rng.choice(["", "pod-1", "é-host"]),
                                rng.choice(["", "", "", "sidecar", "node/n1"]))
                    for _ in range(rng.choice([0, 1, 2, 5, 200])))
        locs.append(ir.LocalityEndpoints(eps, zone=rng.choice(["", "z1"]), region=rng.choice(["", "r1"]),
                                         sub_zone=rng.choice(["", "c2"]), priority=rng.choice([0, 0, 1, 200])))
    return ir.EndpointSet(name, tuple(locs), ("src",))


@pytest.mark.parametrize("seed", range(40))
def test_bytes_equal_message_serialisation(seed: int) -> None:
    rng = random.Random(seed)
    memo: dict[int, Any] = {}
    for i in range(10):
        es = _random_set(rng, rng.choice(["", f"ns/svc-{i}", "n" * 200]))
        want = r.render_endpoints(es).SerializeToString(deterministic=True)
        assert r.endpoints_bytes(es) == want
        assert r.endpoints_bytes(es, memo) == want
        again = ir.EndpointSet("other", es.localities, ())  # shares the localities: memo hit
        assert r.endpoints_bytes(again, memo) == \
            r.render_endpoints(again).SerializeToString(deterministic=True)


def test_bad_port_fails_as_the_message_builder_does() -> None:
    es = ir.EndpointSet("c", (ir.LocalityEndpoints((ir.Endpoint("10.0.0.1", -1),)),))
    with pytest.raises(ValueError):
        r.render_endpoints(es)
    with pytest.raises(ValueError):
        r.endpoints_bytes(es)
