"""Two `cilia serve --kubernetes` replicas electing a leader on a real API server's Lease (as cilia's
ServiceAccount): only the leader writes status and Events; killed, it is replaced within the lease
duration; every status change is written exactly once, none twice and none lost. The API server's audit
log tells the replicas apart by their user agent (`cilia/VERSION (IDENTITY)`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.controlplane import CiliaProcess
from support.realkube import CILIA_USER, RealCluster, ref

NS = "ha"
LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.3
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def cec(broken: bool = False) -> dict[str, Any]:
    resources: list[dict[str, Any]] = [{"@type": LISTENER, "name": "l", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 15999}}, "filter_chains": [{"filters": []}]}]
    if broken:
        resources.append({"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "x"})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": "demo", "namespace": NS},
            "spec": {"resources": resources}}


@pytest.fixture
def replicas(cluster: RealCluster, cilia_kubeconfig: Path) -> Iterator[dict[str, CiliaProcess]]:
    cluster.kubectl("create", "namespace", NS)
    cluster.apply(cec())
    procs = {name: CiliaProcess([], extra=[
        "--kubernetes", "--kubeconfig", str(cilia_kubeconfig), "--leader-identity", name,
        "--lease-duration", str(LEASE_S), "--lease-renew-deadline", str(RENEW_S), "--lease-retry-period", str(RETRY_S),
        "--status-min-interval", "0.2", "--event-min-interval", "1"]) for name in ("r1", "r2")}
    try:
        for p in procs.values():
            p.start(timeout=60)
        yield procs
    finally:
        for p in procs.values():
            p.stop()
        cluster.delete_namespace(NS)


def holder(c: RealCluster) -> str:
    return str(c.get("lease", "cilia-leader", "-n", "cilia-system")["spec"].get("holderIdentity") or "")


def writes(c: RealCluster, resource: str, subresource: str = "") -> dict[str, int]:
    """Writes by cilia on objects of `resource` in the test namespace, by replica (from the user agent)."""
    out: dict[str, int] = {}
    for e in c.audit(lambda e: e["user"]["username"] == CILIA_USER and e["verb"] in ("create", "patch", "update")
                     and ref(e).get("namespace") == NS and ref(e).get("resource") == resource
                     and ref(e).get("subresource", "") == subresource):
        assert e["responseStatus"]["code"] in (200, 201), e
        who = e["userAgent"].rsplit("(", 1)[-1].rstrip(")")
        out[who] = out.get(who, 0) + 1
    return out


def accepted(c: RealCluster) -> str:
    conds = (c.get("cec", "demo", "-n", NS).get("status") or {}).get("conditions") or ()
    return next((x["status"] for x in conds if x["type"] == "Accepted"), "")


def test_one_writer_and_failover_within_the_lease_duration(cluster: RealCluster,
                                                            replicas: dict[str, CiliaProcess]) -> None:
    c = cluster
    leader = c.wait_for("a leader", lambda: holder(c) in replicas and holder(c), timeout=30)
    follower = next(n for n in replicas if n != leader)
    c.wait_for("status written", lambda: accepted(c) == "True", timeout=30)
    time.sleep(1.5)  # both replicas have long seen the object: a follower that wrote would show by now
    assert writes(c, "ciliumenvoyconfigs", "status") == {leader: 1}
    transitions = c.get("lease", "cilia-leader", "-n", "cilia-system")["spec"].get("leaseTransitions", 0)

    # The leader dies without releasing the Lease; the config breaks while nobody leads.
    proc = replicas[leader].proc
    assert proc is not None
    proc.kill()
    proc.wait(10)
    t0 = time.monotonic()
    c.apply(cec(broken=True))
    c.wait_for("takeover", lambda: holder(c) == follower, timeout=LEASE_S + 10, interval=0.05)
    took = time.monotonic() - t0
    # Within the lease duration plus two (jittered) retry periods of the last renewal, with slack for 2 cores.
    assert took <= LEASE_S + 2 * 1.2 * RETRY_S + 1.5, took
    lease = c.get("lease", "cilia-leader", "-n", "cilia-system")["spec"]
    assert lease["leaseTransitions"] == transitions + 1

    # The change made while nobody led is written once, by the new leader; nothing is written twice.
    c.wait_for("new leader writes", lambda: accepted(c) == "False", timeout=30)
    c.wait_for("Event", lambda: writes(c, "events").get(follower) == 1, timeout=30)
    time.sleep(1.5)
    assert writes(c, "ciliumenvoyconfigs", "status") == {leader: 1, follower: 1}
    assert writes(c, "events") == {follower: 1}
    (ev,) = [e for e in c.get("events.v1.events.k8s.io", "-n", NS)["items"] if e["regarding"]["name"] == "demo"]
    assert ev["reportingInstance"] == follower and ev["reason"] == "ConfigRejected"

    # A clean stop releases the Lease at once.
    replicas[follower].stop()
    c.wait_for("released", lambda: holder(c) == "", timeout=10)
