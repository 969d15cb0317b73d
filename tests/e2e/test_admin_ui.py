"""The admin page `/ui` in a real headless chromium: it renders proxies, objects and the latency chart from a
live control plane with a real Envoy, loads nothing from elsewhere, and shows a NACK within 2 s of a bad
manifest. The screenshot in docs/ (README "Admin page") is taken here (`--update-golden` rewrites it)."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cec_envoy import cec, route

from cilia.obs.ui import render_page
from support.backends import EchoBackend, echo_backends
from support.browser import CHROMEDRIVER, CHROMIUM, Browser
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin-page.png"
needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="chromium + chromedriver not installed (scripts/setup.sh installs them)")

# Text of the row of one proxy / object, or "" when the page has none.
ROW = "const r = document.querySelector(`tr[data-${arguments[0]}=\"${arguments[1]}\"]`); return r ? r.innerText : '';"


@pytest.fixture
def world() -> Iterator[tuple[ManifestDir, list[EchoBackend]]]:
    md = ManifestDir()
    with echo_backends(("echo-a", "127.0.0.2"), ("other", "127.0.0.4")) as backends:
        yield md, backends
    md.cleanup()


def test_page_is_escaped_and_self_contained() -> None:
    page = render_page({"node~<x>": {"connected": True, "variant": "delta", "types": {"listeners": {
        "state": "NACKED", "last_nack": "bad <script>alert(1)</script>"}}}}, [], [
        {"severity": "error", "object": "Service a/<b>", "field": "spec", "message": "m", "text": "t <i>"}], [])
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "node~&lt;x&gt;" in page and "t &lt;i&gt;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert page.count("<script>") == 1  # the refresh script only


@needs_browser
def test_admin_page_in_headless_chromium(world: tuple[ManifestDir, list[EchoBackend]], tmp_path: Path,
                                         update_golden: bool) -> None:
    md, (a, other) = world
    port = free_port()
    md.write("services.yaml", docs(service("echo", 80, vip="127.96.0.10"), endpoint_slice("echo", [(a.host, a.port)]),
                                   service("other", 80, vip="127.96.0.11"),
                                   endpoint_slice("other", [(other.host, other.port)])))
    md.write("cec.yaml", cec(port, [route("/", "default/echo")]))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port).start()
    browser: Browser | None = None
    url = f"http://127.0.0.1:{port}"
    page = f"http://127.0.0.1:{cp.admin_port}/ui"
    try:
        envoy.wait_for(lambda: get(url + "/x").status == 200, what="listener serving")
        # A good edit gives the chart change -> ACK samples.
        two_routes = [route("/other", "default/other"), route("/", "default/echo")]
        md.write("cec.yaml", cec(port, two_routes, clusters=("default/echo", "default/other")))
        envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")
        envoy.wait_for(lambda: cp.call(lambda: cp.cp.latency_series()), timeout=5, what="latency sample")

        with urllib.request.urlopen(page, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]

        browser = Browser().start()
        browser.get(page)
        row, _ = browser.wait_for(ROW.replace("arguments[0]", "'proxy'").replace("arguments[1]", "'node~local'"), 10)
        cells = row.split("\t")
        assert cells[:4] == ["node~local", "node", "delta", "yes"], cells
        assert "SYNCED" in row and "NACKED" not in row
        cec_row = browser.run(ROW, "object", "CiliumEnvoyConfig default/demo")
        assert "Accepted" in cec_row and "Programmed" in cec_row and "True" in cec_row, cec_row
        summary = browser.run("return document.getElementById('latency-summary').innerText")
        assert "ACK(s) of changes in the last hour" in summary and "p99" in summary, summary
        assert browser.run("return document.querySelectorAll('#latency-chart circle.p50').length") >= 1
        # Nothing but the page itself and its refreshes was loaded.
        origins = browser.run("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert set(origins) <= {f"http://127.0.0.1:{cp.admin_port}"}, origins

        # A listener Envoy rejects: the open page shows the NACK (state and Envoy's text) within 2 s.
        md.write("cec.yaml", cec(port, two_routes, clusters=("default/echo", "default/other"), bad_listener=True))
        t0 = time.monotonic()
        nack_row, _ = browser.wait_for(
            "const r = document.querySelector('tr[data-proxy=\"node~local\"]');"
            "return r && r.innerText.includes('NACKED') ? r.innerText : '';", timeout=10)
        elapsed = time.monotonic() - t0
        print(f"NACK on the page {elapsed:.2f} s after the manifest was written")
        assert elapsed <= 2.0, f"NACK shown after {elapsed:.2f} s"
        assert "listeners:" in nack_row and "rror" in nack_row.split("listeners:", 1)[1], nack_row
        programmed = browser.run(ROW, "object", "CiliumEnvoyConfig default/demo")
        assert "Programmed" in programmed

        shot = tmp_path / "admin-page.png"
        browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        if update_golden:
            shutil.copyfile(shot, SCREENSHOT)
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "docs/admin-page.png (README) is missing"
    finally:
        if browser is not None:
            browser.close()
        envoy.stop()
        cp.stop()
