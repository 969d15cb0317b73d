"""`cilia serve --webhook`: the injection webhook served by the control plane process, over HTTPS,
deciding the mode from the Namespace objects the control plane knows."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path

import pytest

from support.certs import TestCA
from support.controlplane import CiliaProcess, ManifestDir
from support.net import free_port

pytestmark = pytest.mark.e2e


def review(namespace: str, uid: str = "u-1") -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "operation": "CREATE", "object": pod}}).encode()


def test_serve_webhook_uses_namespace_modes(tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.issue("localhost")
    (tmp_path / "tls.crt").write_bytes(leaf.cert)
    (tmp_path / "tls.key").write_bytes(leaf.key)
    md = ManifestDir()
    md.write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {cilia.io/mesh: sidecar}}\n"
                        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: lab, labels: {cilia.io/mesh: node}}\n")
    port = free_port()
    cp = CiliaProcess([str(md.path)], extra=["--webhook", f"127.0.0.1:{port}", "--tls-cert", str(tmp_path / "tls.crt"),
                                             "--tls-key", str(tmp_path / "tls.key")]).start()
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    try:
        def post(body: bytes) -> tuple[int, dict[str, object]]:
            req = urllib.request.Request(f"https://localhost:{port}/mutate", data=body, method="POST",
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    return resp.status, json.load(resp)
            except urllib.error.HTTPError as err:
                return err.code, {"body": err.read().decode()}

        status, out = post(review("shop"))
        assert status == 200
        response = out["response"]
        assert isinstance(response, dict) and response["uid"] == "u-1" and response["allowed"] is True
        patch = json.loads(base64.b64decode(str(response["patch"])))
        assert any(op["path"].startswith("/spec/initContainers") for op in patch)
        status, out = post(review("lab", "u-2"))
        assert status == 200 and "patch" not in out["response"]  # type: ignore[operator]
        status, out = post(b"{not json")
        assert status == 400 and "JSON" in str(out["body"]).upper()
        status, out = post(review("shop", "u-3"))
        assert status == 200, "still serving after a malformed review"
    finally:
        cp.stop()
        md.cleanup()
