"""Hostile manifests and reviews against `cilia serve`: the process stays up, real Envoy keeps serving the
previous config, and the bad input is named in /debug/issues and the log (the webhook answers 400).

The reported case: a ~600 KB JSON file nested 100,000 levels deep, dropped into the watched directory,
used to end the server with a RecursionError; the same body made the webhook answer 500.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.backends import echo_backends
from support.certs import TestCA
from support.controlplane import CiliaProcess, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import backend, find_status, gateway, gateway_class, http_route, listener, parent_condition
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e

DEEP_JSON = '{"a":' * 100_000 + "1" + "}" * 100_000
ALIAS_BOMB = "apiVersion: v1\nkind: Service\nmetadata: {name: lol}\nspec:\n  l0: &l0 [lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
SELF_ALIAS = "apiVersion: v1\nkind: Service\nmetadata: {name: loop}\nspec: &s {ports: [{port: 80, x: *s}]}\n"
DEEP_YAML = "- " * 100_000 + "x\n"


def _review(namespace: str, uid: str) -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "operation": "CREATE", "object": pod}}).encode()


def test_hostile_files_and_reviews_leave_the_served_config_in_place(tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.issue("localhost")
    (tmp_path / "tls.crt").write_bytes(leaf.cert)
    (tmp_path / "tls.key").write_bytes(leaf.key)
    md = ManifestDir()
    port, webhook_port = free_port(), free_port()
    route = http_route("web", [{"backendRefs": [backend("echo")]}])
    with echo_backends(("a", "127.0.0.2")) as (a,):
        md.write("app.yaml", docs(gateway_class(), gateway("gw", [listener("http", port)], address="127.0.0.1"),
                                  service("echo"), endpoint_slice("echo", [(a.host, a.port)])))
        md.write("route.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": [json.loads(route)]}))
        cp = CiliaProcess([str(md.path)], extra=[
            "--webhook", f"127.0.0.1:{webhook_port}", "--tls-cert", str(tmp_path / "tls.crt"),
            "--tls-key", str(tmp_path / "tls.key")]).start()
        envoy = Envoy("gateway~default/gw", cp.xds_port).start()
        url = f"http://127.0.0.1:{port}/"

        def issues_for(name: str) -> list[str]:
            where = str(md.path / name)
            return [i["text"] for i in cp.admin_json("/debug/issues") if i["location"].startswith(where)]

        def still_serving() -> None:
            assert cp.proc is not None and cp.proc.poll() is None, cp.log.read_text()[-3000:]
            assert get(url).json()["backend"] == "a"
            config = cp.admin_json("/debug/config/gateway~default/gw")
            assert [r["name"] for r in config["routes"]] == [f"gateway/default/gw/{port}"]
            assert "default/echo" in json.dumps(config["routes"])
            web = find_status(cp.admin_json("/debug/status"), "HTTPRoute", "web")
            assert parent_condition(web, "Accepted") == ("True", "Accepted")

        try:
            envoy.wait_for(lambda: get(url).status == 200, timeout=20, what="initial config")
            still_serving()

            # 1. The reported file, over the file that defines the route: refused, the route keeps serving.
            md.write("route.json", DEEP_JSON)
            envoy.wait_for(lambda: issues_for("route.json"), what="issue on route.json")
            assert issues_for("route.json") == [
                f"{md.path / 'route.json'}: refused: nested deeper than 100 levels (at line 1 column 501)"]
            still_serving()
            # ... and the same content as a new file.
            md.write("deep.json", DEEP_JSON)
            envoy.wait_for(lambda: issues_for("deep.json"), what="issue on deep.json")

            # 2. YAML: an alias bomb, an alias into itself, nesting past the parser's limit.
            md.write("bomb.yaml", ALIAS_BOMB)
            md.write("loop.yaml", SELF_ALIAS)
            md.write("deep.yaml", DEEP_YAML)
            envoy.wait_for(lambda: all(issues_for(f) for f in ("bomb.yaml", "loop.yaml", "deep.yaml")), timeout=15,
                           what="issues on the YAML files")
            (bomb,) = issues_for("bomb.yaml")
            assert bomb.startswith(f"{md.path / 'bomb.yaml'}#0: Service lol: spec.l") and \
                "YAML aliases expand to more than 100000 nodes in this file" in bomb
            assert issues_for("loop.yaml") == [
                f"{md.path / 'loop.yaml'}#0: Service loop: spec.ports[0].x: refers to itself through a YAML alias"]
            (deep,) = issues_for("deep.yaml")
            assert "cannot parse" in deep and "maximum nesting depth" in deep
            still_serving()
            log = cp.log.read_text()
            for name in ("route.json", "deep.json", "bomb.yaml", "loop.yaml", "deep.yaml"):
                assert str(md.path / name) in log, name
            assert "Traceback" not in log and "RecursionError" not in log

            # 3. The webhook: the same deep body is a 400, and it goes on answering.
            ctx = ssl.create_default_context(cadata=ca.pem.decode())

            def post(body: bytes) -> tuple[int, str]:
                req = urllib.request.Request(f"https://localhost:{webhook_port}/mutate", data=body, method="POST",
                                             headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                        return resp.status, resp.read().decode()
                except urllib.error.HTTPError as err:
                    return err.code, err.read().decode()

            assert post(DEEP_JSON.encode()) == (
                400, "bad AdmissionReview: body is nested deeper than 102 levels (at line 1 column 511)\n")
            status, body = post(_review("default", "u-1"))
            assert status == 200 and json.loads(body)["response"]["uid"] == "u-1"

            # 4. Fixing the file brings edits through again; removing the bad ones clears their issues.
            md.write("route.json", http_route("web", [{"backendRefs": [backend("echo")],
                                                       "matches": [{"path": {"type": "PathPrefix",
                                                                             "value": "/v2"}}]}]))
            for name in ("deep.json", "bomb.yaml", "loop.yaml", "deep.yaml"):
                md.remove(name)
            envoy.wait_for(lambda: get(url).status == 404 and get(url + "v2").status == 200, what="edit served")
            envoy.wait_for(lambda: not cp.admin_json("/debug/issues"), what="issues cleared")
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()
