"""Debounce: a burst of edits becomes few rebuilds; an endpoint-only change is applied quickly."""

from __future__ import annotations

import time

import pytest

from cilia.app import Debounce
from support.controlplane import ControlPlaneThread, ManifestDir
from support.manifests import docs, endpoint_slice, service

pytestmark = pytest.mark.e2e


def test_burst_of_edits_is_coalesced() -> None:
    md = ManifestDir()
    md.write("svc.yaml", docs(service("echo"), endpoint_slice("echo", [("127.0.0.2", 8080)])))
    cp = ControlPlaneThread([str(md.path)], debounce=Debounce(quiet_s=0.3, max_delay_s=2.0)).start()
    try:
        before = cp.call(lambda: cp.cp.counters.rebuilds)
        for i in range(10):
            md.write(f"svc{i}.yaml", docs(service(f"s{i}", vip=f"127.96.1.{i + 1}")))
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and cp.call(lambda: cp.cp.store.snapshot_count()) < 12:
            time.sleep(0.05)
        time.sleep(0.8)
        rebuilds = cp.call(lambda: cp.cp.counters.rebuilds) - before
        assert 1 <= rebuilds <= 3, rebuilds
        config = cp.admin_json("/debug/issues")
        assert config == []
    finally:
        cp.stop()
        md.cleanup()


def test_endpoint_only_change_skips_the_quiet_period() -> None:
    md = ManifestDir()
    md.write("svc.yaml", service("echo"))
    md.write("eps.yaml", endpoint_slice("echo", [("127.0.0.2", 8080)]))
    cp = ControlPlaneThread([str(md.path)], debounce=Debounce(quiet_s=2.0, max_delay_s=4.0,
                                                              endpoint_quiet_s=0.01)).start()
    try:
        before = cp.call(lambda: cp.cp.counters.rebuilds)
        t0 = time.monotonic()
        md.write("eps.yaml", endpoint_slice("echo", [("127.0.0.3", 8080)]))
        while cp.call(lambda: cp.cp.counters.rebuilds) == before and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert took < 1.0, f"endpoint change took {took:.2f}s despite a 2 s quiet period"
        world = cp.call(lambda: cp.cp.cache.world)
        assert b"127.0.0.3" in world.pool["default/echo:80"].body
    finally:
        cp.stop()
        md.cleanup()
