"""A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for tests.

`scripts/local-cluster.sh` builds the binaries once (cached in ~/.cache/cilia) and starts them on
127.0.0.1. One cluster serves the whole test session (tests/kube/conftest.py); each test works in
namespaces of its own. There is no kubelet: tests create Pods and set their status themselves.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-cluster.sh"
DEPLOY = REPO / "deploy"
API_AUDIENCE = "https://kubernetes.default.svc"  # the API server's own audience (--api-audiences)
CILIA_USER = "system:serviceaccount:cilia-system:cilia"


def ref(event: dict[str, Any]) -> dict[str, Any]:
    """An audit event's objectRef (empty for requests not about an object)."""
    return dict(event.get("objectRef") or {})


def build() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager and kubectl (built on first use)."""
    out = subprocess.run(["bash", str(SCRIPT), "build"], check=True, capture_output=True, text=True, timeout=3600)
    return Path(out.stdout.strip().splitlines()[-1])


def gateway_crds() -> Path:
    """The Gateway API CRDs (standard/ and experimental/ kustomizations), fetched on first use."""
    out = subprocess.run(["bash", str(SCRIPT), "gateway-crds"], check=True, capture_output=True, text=True,
                         timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class RealCluster:
    dir: Path
    bin: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        values = {}
        for line in (self.dir / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value
        return values

    @property
    def server(self) -> str:
        return self.env["APISERVER"]

    @classmethod
    def up(cls, directory: Path) -> RealCluster:
        binaries = build()
        subprocess.run(["bash", str(SCRIPT), "up", str(directory)], check=True, timeout=180)
        return cls(directory, binaries)

    def down(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "down", str(self.dir)], check=False, timeout=120)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again with the same arguments; returns once it is ready."""
        subprocess.run(["bash", str(SCRIPT), "restart-apiserver", str(self.dir)], check=True, timeout=120)

    # -- deploy/ -----------------------------------------------------------------------------------------
    def install_cilia(self) -> str:
        """The Gateway API CRDs (experimental channel: TLSRoute, TCPRoute) and then `kubectl apply -k deploy/`.
        Returns apply's output."""
        self.kubectl("apply", "--server-side", "-k", str(gateway_crds() / "experimental"), timeout=120)
        self.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout", "60s", timeout=90)
        out = self.kubectl("apply", "-k", str(DEPLOY), timeout=120).stdout
        self.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout", "60s", timeout=90)
        return out

    def cilia_kubeconfig(self, path: Path, duration: str = "2h") -> Path:
        """A kubeconfig for cilia's own ServiceAccount (deploy/rbac.yaml's grants, nothing more)."""
        return self.kubeconfig_for_token(self.token("cilia-system", "cilia", audience=API_AUDIENCE,
                                                    duration=duration), path)

    # -- raw API calls ---------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                timeout: float = 30) -> tuple[int, Any]:
        """One API call (admin unless `token`); returns (HTTP status, decoded JSON body)."""
        import ssl
        import urllib.error

        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        auth = token or self.admin_token
        req = urllib.request.Request(self.server + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    @property
    def admin_token(self) -> str:
        return (self.dir / "pki" / "tokens.csv").read_text().split(",", 1)[0]

    def can_i(self, token: str, verb: str, group: str, resource: str, *, namespace: str = "", name: str = "",
              subresource: str = "") -> bool:
        """A SelfSubjectAccessReview as the token's owner: may it do this?"""
        attrs = {"verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name,
                 "subresource": subresource}
        code, body = self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                  {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                                   "spec": {"resourceAttributes": attrs}}, token=token)
        assert code == 201, body
        return bool(body["status"].get("allowed"))

    # -- etcd ----------------------------------------------------------------------------------------------
    def etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's v3 JSON gateway (there is no etcdctl)."""
        req = urllib.request.Request(self.env["ETCD_ENDPOINT"] + path, data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.load(resp))

    def etcd_revision(self) -> int:
        return int(self.etcd("/v3/kv/range", {"key": base64.b64encode(b"\0").decode()})["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what etcd does every few minutes); returns it."""
        rev = self.etcd_revision()
        self.etcd("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    # -- audit log -----------------------------------------------------------------------------------------
    def audit(self, predicate: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict[str, Any]]:
        """Audit events (every write, and every request by cilia's ServiceAccount) matching `predicate`."""
        path = self.dir / "logs" / "audit.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if predicate(event):
                out.append(event)
        return out

    # -- kubectl -------------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, token: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig)]
        if token is not None:
            cmd += ["--token", token]
        proc = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: str | dict[str, Any] | Sequence[dict[str, Any]], *args: str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": list(manifest)} if isinstance(manifest, Sequence)
            else manifest)
        self.kubectl("apply", "-f", "-", *args, input=text)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def token(self, namespace: str, service_account: str, *, audience: str = "cilia",
              bound_pod: str | None = None, duration: str = "1h") -> str:
        """A ServiceAccount token (TokenRequest), optionally bound to a Pod (then it carries pod and node claims)."""
        args = ["create", "token", service_account, "-n", namespace, "--audience", audience, "--duration", duration]
        if bound_pod:
            args += ["--bound-object-kind", "Pod", "--bound-object-name", bound_pod]
        return self.kubectl(*args).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` (e.g. cilia's ServiceAccount), not as admin."""
        ca = self.dir / "pki" / "ca.crt"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}]}))
        path.chmod(0o600)
        return path

    def delete_namespace(self, namespace: str, wait: bool = False) -> None:
        """Delete a namespace. Its Pods go first, forcibly: without a kubelet to confirm, a Pod bound to a
        node stays Terminating, and so would the namespace."""
        self.kubectl("delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0", check=False)
        self.kubectl("delete", "namespace", namespace, f"--wait={'true' if wait else 'false'}",
                     "--ignore-not-found", check=False, timeout=120)

    def ensure_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A Node object (no kubelet behind it): the EndpointSlice controller skips pods on unknown nodes."""
        if self.kubectl("get", "node", name, check=False).returncode == 0:
            return
        self.apply({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}}})

    def set_pod_status(self, namespace: str, name: str, ip: str, *, ready: bool = True) -> None:
        """Play kubelet: Running, the pod IP, and the Ready condition."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
                  "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                  "lastTransitionTime": now}]}
        self.kubectl("patch", "pod", name, "-n", namespace, "--subresource", "status", "--type", "merge",
                     "-p", json.dumps({"status": status}))

    def wait_for(self, what: str, predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
