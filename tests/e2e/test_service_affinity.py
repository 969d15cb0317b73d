"""ClusterMesh global Service with affinity through a real Envoy: with local endpoints every request
stays local; when the local EndpointSlice is removed, requests fail over to the remote cluster with
no failed request, and come back when it returns."""

from __future__ import annotations

import json
import threading
import time

import pytest

from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice
from support.net import free_port

pytestmark = pytest.mark.e2e


def manifests(local: EchoBackend | None, remote: EchoBackend) -> str:
    svc = json.dumps({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "api", "namespace": "default", "annotations": {
                          "service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}},
                      "spec": {"clusterIP": "127.96.4.1", "ports": [{"name": "http", "port": 80}]}})
    ing = json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                      "metadata": {"name": "api", "namespace": "default"},
                      "spec": {"ingressClassName": "cilia",
                               "defaultBackend": {"service": {"name": "api", "port": {"number": 80}}}}})
    parts = [svc, ing, endpoint_slice("api", [(remote.host, remote.port)], name="api-east",
                                      labels={"cilia.io/cluster": "east"})]
    if local is not None:
        parts.append(endpoint_slice("api", [(local.host, local.port)], name="api-local"))
    return docs(*parts)


class Hammer:
    """Requests in a loop (bounded in time) recording which backend answered, or the failure."""

    def __init__(self, url: str, limit_s: float = 10.0) -> None:
        self.url = url
        self.limit_s = limit_s
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                r = get(self.url, timeout=2)
                what = str(r.json()["backend"]) if r.status == 200 else f"HTTP {r.status}"
            except OSError as exc:
                what = f"error {exc}"
            self.seen.append((time.monotonic(), what))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_for(self, backend: str, after: float, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, w in self.seen if t >= after and w == backend), None)
            if hit is not None:
                return hit
            time.sleep(0.01)
        raise TimeoutError(f"{backend} never answered; last: {self.seen[-5:]}")


def test_affinity_local_then_failover_and_back() -> None:
    md = ManifestDir()
    with echo_backends(("local", "127.0.0.2"), ("remote", "127.0.0.3")) as (local, remote):
        md.write("all.yaml", manifests(local, remote))
        port = free_port()
        opts = TranslateOptions(ingress_address="127.0.0.1", ingress_http_port=port, ingress_https_port=free_port())
        cp = ControlPlaneThread([str(md.path)], translate=opts).start()
        envoy = Envoy("ingress~cilia", cp.xds_port)
        url = f"http://127.0.0.1:{port}/"
        try:
            envoy.start()
            envoy.wait_for(lambda: get(url).status == 200, what="ingress serving")
            assert {get(url).json()["backend"] for _ in range(100)} == {"local"}  # 100 % local

            with Hammer(url) as h:
                time.sleep(0.2)
                edit = time.monotonic()
                md.write("all.yaml", manifests(None, remote))  # the local EndpointSlice is gone
                switched = h.wait_for("remote", edit)
                time.sleep(0.3)
                back_edit = time.monotonic()
                md.write("all.yaml", manifests(local, remote))  # and back
                back = h.wait_for("local", back_edit)
                time.sleep(0.3)
            answers = [w for _, w in h.seen]
            failures = [w for w in answers if w not in ("local", "remote")]
            assert failures == [], failures[:5]
            during = [w for t, w in h.seen if switched <= t < back_edit]
            assert during and set(during) == {"remote"}  # after the switch, never local again
            after = [w for t, w in h.seen if t > back + 0.05]
            assert after and set(after) == {"local"}  # priority 0 again once local endpoints return
            assert switched - edit < 1.5 and back - back_edit < 1.5
            assert len(answers) > 50, len(answers)
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()
