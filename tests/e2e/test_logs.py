"""`--log-format json`: every line `cilia serve` logs is a JSON object with time, level, logger and message,
lines about a proxy or an object carry its id/reference."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from cilia.obs.logs import configure_logging
from support.controlplane import CiliaProcess, ManifestDir

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
BAD_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: bad, namespace: default}
spec:
  clusterIP: 127.96.0.11
  ports: [{name: http, port: 99999}]
"""


def test_formatters_carry_context() -> None:
    buf = io.StringIO()
    try:
        configure_logging("info", "json", buf)
        logging.getLogger("cilia.test").warning("x %s", 1, extra={"proxy_id": "node~n1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("cilia.test").exception("failed", extra={"object": "Service default/a"})
        lines = [json.loads(line) for line in buf.getvalue().splitlines()]
        assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
            ("warning", "cilia.test", "x 1"), ("error", "cilia.test", "failed")]
        assert lines[0]["proxy_id"] == "node~n1" and "object" not in lines[0]
        assert lines[1]["object"] == "Service default/a" and "ValueError: boom" in lines[1]["exception"]
        assert lines[0]["time"].endswith("Z") and "T" in lines[0]["time"]
        buf.truncate(0)
        buf.seek(0)
        configure_logging("debug", "text", buf)
        logging.getLogger("cilia.test").info("hello", extra={"proxy_id": "node~n1"})
        text = buf.getvalue().splitlines()
        assert text[0].endswith("INFO cilia.test: hello [proxy_id=node~n1]")
    finally:
        configure_logging("warning", "text")


def _nack_once(port: int, node_id: str) -> None:
    """Open a Delta ADS stream as `node_id`, take the clusters, NACK them, close."""
    done = threading.Event()
    first = discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER)
    answered: list[Any] = []

    def requests() -> Iterator[Any]:
        yield first
        while not answered:
            if done.wait(0.05):
                return
        yield discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=answered[0].nonce,
                                                  error_detail=status_pb2.Status(code=3, message="bad cluster"))
        done.wait(3)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources(requests(), timeout=10)
        answered.append(next(stream))
        time.sleep(0.5)  # the NACK is read and logged
        done.set()
        stream.cancel()


def test_serve_logs_json_lines() -> None:
    d = ManifestDir()
    for f in QUICKSTART.glob("*.yaml"):  # a CiliumEnvoyConfig: node~ proxies get its clusters
        d.write(f.name, f.read_text())
    cp = CiliaProcess([str(d.path)], extra=["--log-format", "json"]).start()
    try:
        _nack_once(cp.xds_port, "node~n1")
        d.write("bad.yaml", BAD_SERVICE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "Service default/bad" not in cp.log.read_text():
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        cp.stop()
        d.cleanup()
    records = []
    for line in cp.log.read_text().splitlines():
        rec = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= rec.keys(), rec
        records.append(rec)
    assert any(r["message"].startswith("config revision") for r in records)
    nacks = [r for r in records if "NACKed" in r["message"]]
    assert nacks and nacks[0]["proxy_id"] == "node~n1" and nacks[0]["level"] == "warning"
    assert "bad cluster" in nacks[0]["message"]
    connected = [r for r in records if r["message"].startswith("node~n1 connected")]
    assert connected and connected[0]["proxy_id"] == "node~n1"
    bad = [r for r in records if r.get("object") == "Service default/bad"]
    assert bad and "spec.ports[0].port" in bad[0]["message"]
