"""Proxyless gRPC end to end: grpcio's own xDS client (bootstrap from `cilia bootstrap --grpc`) dials
`xds:///echo.default.svc.cluster.local:7070` and calls two real gRPC servers on loopback, with no proxy.

One client process and one channel per target for the whole module: every config change below reaches a
channel that is never re-created (the client counts channel creations).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from support.controlplane import CiliaProcess, ControlPlaneThread, ManifestDir
from support.grpc_echo import GrpcEcho
from support.manifests import docs, endpoint_slice, service
from support.net import free_port
from support.proxyless import DATA_ERRORS_ENV, ProxylessClient, grpc_bootstrap

pytestmark = pytest.mark.e2e
PROXY = "grpc~default/client"
TARGET = "xds:///echo.default.svc.cluster.local:7070"
V2_HEADER = (("x-version", "v2"),)
FLAKY = "/cilia.test.Echo/Flaky"


def write_services(md: ManifestDir, v2: GrpcEcho, *servers: GrpcEcho) -> None:
    """The Service `echo` (all of `servers`) and `echo-v2` (`v2` only)."""
    parts = [service("echo", 7070, vip="127.96.0.70", port_name="grpc", app_protocol="grpc"),
             service("echo-v2", 7070, vip="127.96.0.71", port_name="grpc", app_protocol="grpc"),
             endpoint_slice("echo-v2", [(v2.host, v2.port)], port_name="grpc")]
    parts += [endpoint_slice("echo", [(s.host, s.port)], name=f"echo-{s.name}", port_name="grpc") for s in servers]
    md.write("services.yaml", docs(*parts))


@dataclass
class World:
    cp: ControlPlaneThread
    md: ManifestDir
    a: GrpcEcho
    b: GrpcEcho
    client: ProxylessClient

    def slices(self, *servers: GrpcEcho) -> None:
        write_services(self.md, self.b, *servers)

    def proxy_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.cp.admin_json("/debug/proxies").get(PROXY, {})
        return status


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> float:
    """Seconds until `check()` held; bounded."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


def header_route(value: str, match_type: str = "Exact") -> str:
    """GAMMA producer route on Service echo:7070: `x-version` matching `value` -> echo-v2, the rest -> echo."""
    return json.dumps({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "echo-versions", "namespace": "default"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 7070}],
                 "rules": [{"matches": [{"headers": [{"type": match_type, "name": "x-version", "value": value}]}],
                            "backendRefs": [{"name": "echo-v2", "port": 7070}]},
                           {"backendRefs": [{"name": "echo", "port": 7070}]}]}})


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    a, b = GrpcEcho("grpc-a", "127.1.0.11"), GrpcEcho("grpc-b", "127.1.0.12")
    write_services(md, b, a, b)
    cp: ControlPlaneThread | None = None
    client: ProxylessClient | None = None
    try:
        cp = ControlPlaneThread([str(md.path)]).start()
        client = ProxylessClient(grpc_bootstrap(PROXY, cp.xds_port))
        # Warm up: both subchannels connected, so round robin has both to choose from.
        seen: set[str] = set()
        wait_until(lambda: bool(seen.update(client.calls(TARGET, 2))) or seen == {"grpc-a", "grpc-b"},
                   "the client reaches both servers")
        yield World(cp, md, a, b, client)
    finally:
        if client is not None:
            client.stop()
        if cp is not None:
            cp.stop()
        a.stop()
        b.stop()
        md.cleanup()


def test_round_robin_over_both_servers(world: World) -> None:
    results = world.client.calls(TARGET, 10)
    assert Counter(results) == {"grpc-a": 5, "grpc-b": 5}, results
    assert all(x != y for x, y in pairwise(results)), f"not round robin: {results}"
    # The other names of the same Service port resolve to the same backends.
    for other in ("xds:///echo.default.svc:7070", "xds:///echo.default:7070"):
        # A new channel: round robin uses a backend once its connection is READY, so on a busy machine the
        # first calls may all reach the backend that connected first; both must be used soon after.
        seen: set[str] = set()
        for _ in range(10):
            seen |= set(world.client.calls(other, 6))
            if seen == {"grpc-a", "grpc-b"}:
                break
        assert seen == {"grpc-a", "grpc-b"}


def test_unknown_target_fails_fast(world: World) -> None:
    """A name cilia does not serve is left out of the response and reported NOT_FOUND, so a client that
    reads per-resource errors fails at once (rather than after gRPC's 15 s does-not-exist timer), on its
    first channel and on a later one alike."""
    client = ProxylessClient(grpc_bootstrap("grpc~default/other", world.cp.xds_port), env=DATA_ERRORS_ENV)
    try:
        for target in ("xds:///nope.default.svc.cluster.local:7070", "xds:///echo.default.svc.cluster.local:7070",
                       "xds:///echo.default.svc.cluster.local:7071"):
            start = time.monotonic()
            result = client.calls(target, 1, timeout=10)[0]
            if "echo" in target and target.endswith(":7070"):
                assert result in ("grpc-a", "grpc-b")
                continue
            assert result.startswith("ERR UNAVAILABLE") and "does not exist" in result, result
            assert time.monotonic() - start < 3, f"{target}: failed after {time.monotonic() - start:.1f}s"
    finally:
        client.stop()


def test_grpc_route_header_match(world: World) -> None:
    world.md.write("route.yaml", header_route("v2"))
    wait_until(lambda: set(world.client.calls(TARGET, 4, V2_HEADER)) == {"grpc-b"}, "x-version: v2 -> v2 only")
    assert world.client.calls(TARGET, 10, V2_HEADER) == ["grpc-b"] * 10
    assert Counter(world.client.calls(TARGET, 10)) == {"grpc-a": 5, "grpc-b": 5}
    assert world.client.calls(TARGET, 6, (("x-version", "v1"),)).count("grpc-a") == 3


def test_endpoint_removal_honoured_within_two_seconds(world: World) -> None:
    try:
        world.slices(world.b)  # server a leaves Service echo
        took = wait_until(lambda: world.client.calls(TARGET, 4, timeout=2) == ["grpc-b"] * 4,
                          "calls go to grpc-b only", timeout=10)
        assert took < 2.0, f"endpoint removal took {took:.2f}s to reach the client"
        assert world.client.calls(TARGET, 10) == ["grpc-b"] * 10
    finally:
        world.slices(world.a, world.b)
    wait_until(lambda: set(world.client.calls(TARGET, 4)) == {"grpc-a", "grpc-b"}, "server a back")
    assert world.client.ask(TARGET)["channels"][TARGET] == 1  # one channel all along


def _sticky(world: World, header: str) -> None:
    """Service `sticky` over both servers, balanced by ring hash (on `header`, else per client channel)."""
    annotations = {"cilia.io/lb-policy": "ring-hash", **({"cilia.io/hash-header": header} if header else {})}
    svc = json.loads(service("sticky", 7070, vip="127.96.0.73", port_name="grpc", app_protocol="grpc"))
    svc["metadata"]["annotations"] = annotations
    world.md.write("sticky.yaml", docs(json.dumps(svc), *[
        endpoint_slice("sticky", [(s.host, s.port)], name=f"sticky-{s.name}", port_name="grpc")
        for s in (world.a, world.b)]))


def test_ring_hash_when_the_service_asks(world: World) -> None:
    sticky = "xds:///sticky.default.svc.cluster.local:7070"
    try:
        _sticky(world, "x-user")
        wait_until(lambda: world.client.calls(sticky, 1, timeout=2)[0] in ("grpc-a", "grpc-b"), "sticky served")
        chosen = {}
        for user in range(16):
            got = set(world.client.calls(sticky, 4, (("x-user", f"user-{user}"),)))
            assert len(got) == 1, f"user-{user} was spread over {got}"
            chosen[user] = got.pop()
        assert set(chosen.values()) == {"grpc-a", "grpc-b"}, chosen  # 16 users on one server: p < 0.001
        # Without a hash header: one channel is one client, so all its calls stay on one server.
        _sticky(world, "")
        wait_until(lambda: len(set(world.client.calls(sticky, 8))) == 1, "hashing on the channel")
        assert len(set(world.client.calls(sticky, 12, (("x-user", "anyone"),)))) == 1
        cluster = next(c for c in world.cp.admin_json(f"/debug/config/{PROXY}")["clusters"]
                       if c["name"] == "default/sticky:7070")
        assert cluster["lbPolicy"] == "RING_HASH"
    finally:
        world.md.remove("sticky.yaml")


def test_http_route_retry(world: World) -> None:
    """HTTPRoute `retry` reaches gRPC clients as a retry policy on the statuses its HTTP codes mean."""
    flaky = "xds:///flaky.default.svc.cluster.local:7070"
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "flaky", "namespace": "default"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "flaky", "port": 7070}],
                      "rules": [{"backendRefs": [{"name": "flaky", "port": 7070}],
                                 "retry": {"codes": [503], "attempts": 2, "backoff": "10ms"}}]}}
    parts = [service("flaky", 7070, vip="127.96.0.74", port_name="grpc", app_protocol="grpc"),
             *[endpoint_slice("flaky", [(s.host, s.port)], name=f"flaky-{s.name}", port_name="grpc")
               for s in (world.a, world.b)]]
    world.a.failing = True
    try:
        world.md.write("flaky.yaml", docs(*parts))  # no retry yet: the calls round robin onto the failing server
        wait_until(lambda: any(r.startswith("ERR UNAVAILABLE") for r in world.client.calls(flaky, 4, method=FLAKY)),
                   "calls reach the failing server")
        world.md.write("flaky.yaml", docs(*parts, json.dumps(route)))
        wait_until(lambda: world.client.calls(flaky, 10, method=FLAKY) == ["grpc-b"] * 10, "retried onto grpc-b")
        before = world.a.flaky_calls
        assert world.client.calls(flaky, 10, method=FLAKY) == ["grpc-b"] * 10
        assert world.a.flaky_calls > before  # the failing server was tried, and the call retried
    finally:
        world.a.failing = False
        world.md.remove("flaky.yaml")


def _cilia_status(world: World, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cilia", "status", "--admin", f"127.0.0.1:{world.cp.admin_port}",
                          *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_status_lists_client_acks_and_nack(world: World) -> None:
    status = json.loads(_cilia_status(world, "-o", "json"))["proxies"][PROXY]
    assert status["connected"] and status["variant"] == "sotw" and "gRPC" in status["user_agent"]
    for kind in ("listeners", "routes", "clusters", "endpoints"):
        ts = status["types"][kind]
        assert ts["state"] == "SYNCED" and ts["version_acked"] == ts["version_sent"] != "", (kind, ts)
    table = _cilia_status(world)
    row = next(line for line in table.splitlines() if line.startswith(PROXY))
    assert row.split()[1:4] == ["grpc", "yes", "sotw"] and row.count("SYNCED") == 4, row

    # A regular expression Python accepts but RE2 (gRPC's, and Envoy's) does not: gRPC NACKs the routes.
    good = status["types"]["routes"]["version_acked"]
    world.md.write("route.yaml", header_route("v(?=2)", "RegularExpression"))
    wait_until(lambda: world.proxy_status()["types"]["routes"]["state"] == "NACKED", "the client NACKs")
    routes = world.proxy_status()["types"]["routes"]
    assert routes["version_acked"] == good and "regex" in routes["last_nack"].lower()
    assert "echo.default.svc.cluster.local:7070" in routes["last_nack"]
    table = _cilia_status(world)
    row = next(line for line in table.splitlines() if line.startswith(PROXY))
    assert "NACKED" in row and "routes: xDS response validation errors" in row
    assert "invalid perl operator" in _cilia_status(world, PROXY)  # the full text, for one proxy
    # The client keeps serving with the last configuration it accepted.
    assert set(world.client.calls(TARGET, 4)) <= {"grpc-a", "grpc-b"}

    world.md.write("route.yaml", header_route("v2"))
    wait_until(lambda: world.proxy_status()["types"]["routes"]["state"] == "SYNCED", "a good route is ACKed")
    assert world.client.calls(TARGET, 4, V2_HEADER) == ["grpc-b"] * 4


def test_example_runs() -> None:
    """examples/proxyless: its manifests translate cleanly and its demo shows what the README says."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "cilia", "translate", "-f", str(root / "examples/proxyless"),
                          "--proxy", PROXY], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "echo.default.svc.cluster.local:7070" in {li["name"] for li in json.loads(out.stdout)["listeners"]}
    demo = subprocess.run([sys.executable, str(root / "examples/proxyless/demo.py")], capture_output=True,
                          text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert "['grpc-a', 'grpc-b', 'grpc-a', 'grpc-b', 'grpc-a', 'grpc-b']" in lines[1] or \
        "['grpc-b', 'grpc-a', 'grpc-b', 'grpc-a', 'grpc-b', 'grpc-a']" in lines[1], demo.stdout
    assert lines[2].endswith("['grpc-b', 'grpc-b', 'grpc-b', 'grpc-b']") and "same channel" in lines[3]
    assert any(line.startswith(PROXY) and line.count("SYNCED") == 4 for line in lines), demo.stdout


def test_mtls_client_gets_only_its_own_view(tmp_path: Path) -> None:
    """`cilia bootstrap --grpc --tls-dir`: gRPC's `tls` channel credentials with `cilia cert`'s files; the
    certificate of another gRPC client is refused with PERMISSION_DENIED, which fails the channel."""
    def cilia(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "cilia", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    ca = tmp_path / "ca"
    cilia("ca", "init", "--dir", str(ca), "--trust-domain", "mesh.test")
    server = GrpcEcho("grpc-a", "127.1.0.13")
    md = ManifestDir()
    md.write("s.yaml", docs(service("echo", 7070, vip="127.96.0.72", port_name="grpc"),
                            endpoint_slice("echo", [(server.host, server.port)], port_name="grpc")))
    tls_port = free_port()
    cp = CiliaProcess([str(md.path)], extra=["--xds-tls", f"127.0.0.1:{tls_port}", "--ca-dir", str(ca)])
    clients: list[ProxylessClient] = []
    try:
        cp.start()
        for who in ("client", "other"):
            cilia("cert", "--ca-dir", str(ca), "--proxy", f"grpc~default/{who}", "--out", str(tmp_path / who))
            clients.append(ProxylessClient(cilia("bootstrap", "--proxy", PROXY, "--grpc", "--xds",
                                                 f"127.0.0.1:{tls_port}", "--tls-dir", str(tmp_path / who))))
        own, other = clients
        assert own.calls(TARGET, 2, timeout=10) == ["grpc-a", "grpc-a"]
        peer = cp.admin_json("/debug/proxies")[PROXY]["peer"]
        assert peer["uris"] == ["spiffe://mesh.test/proxy/grpc/default/client"]
        denied = other.calls(TARGET, 1, timeout=10)[0]
        assert denied.startswith("ERR UNAVAILABLE") and "PERMISSION_DENIED" in denied, denied
    finally:
        for c in clients:
            c.stop()
        cp.stop()
        server.stop()
        md.cleanup()
