"""A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for tests.

`scripts/local-cluster.sh` builds the binaries once (cached in ~/.cache/cilia) and starts them on
127.0.0.1. One cluster serves the whole test session (tests/kube/conftest.py); each test works in
namespaces of its own. There is no kubelet: tests create Pods and set their status themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-cluster.sh"


def build() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager and kubectl (built on first use)."""
    out = subprocess.run(["bash", str(SCRIPT), "build"], check=True, capture_output=True, text=True, timeout=3600)
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
