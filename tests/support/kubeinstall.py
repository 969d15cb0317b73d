"""deploy/'s ServiceAccount and RBAC installed into the session's real API server under test names, and
`cilia serve --kubernetes` run as that ServiceAccount (or as admin) against it.

Namespaces of deploy/ are renamed (cilia-system -> PREFIX-system, cilia-secrets -> PREFIX-secrets) and so
are cluster-scoped names (ClusterRole cilia -> PREFIX), so tests sharing one cluster do not collide.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.controlplane import CiliaProcess
from support.rbac import DEPLOY, load_docs
from support.realkube import RealCluster

API_AUDIENCE = "https://kubernetes.default.svc"  # the test cluster's --api-audiences


@dataclass
class Install:
    cluster: RealCluster
    prefix: str
    kubeconfig: Path  # authenticates as the ServiceAccount cilia

    @property
    def system(self) -> str:
        return f"{self.prefix}-system"

    @property
    def secrets(self) -> str:
        return f"{self.prefix}-secrets"

    @property
    def namespaces(self) -> dict[str, str]:
        """deploy/ namespace -> the test's."""
        return {"cilia-system": self.system, "cilia-secrets": self.secrets}

    def token(self, service_account: str = "cilia") -> str:
        return self.cluster.token(self.system, service_account, audience=API_AUDIENCE)

    def remove(self) -> None:
        self.cluster.kubectl("delete", "clusterrole,clusterrolebinding", self.prefix, "--ignore-not-found",
                             "--wait=false", check=False)
        self.cluster.kubectl("delete", "namespace", self.system, self.secrets, "--ignore-not-found",
                             "--wait=false", check=False)


def rename(docs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """deploy/ documents with the test's namespaces and cluster-scoped names."""
    spaces = {"cilia-system": f"{prefix}-system", "cilia-secrets": f"{prefix}-secrets"}
    out = []
    for d in copy.deepcopy(docs):
        md = d["metadata"]
        if d["kind"] == "Namespace":
            md["name"] = spaces[md["name"]]
        if "namespace" in md:
            md["namespace"] = spaces[md["namespace"]]
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            md["name"] = prefix
        if d["kind"] == "ClusterRoleBinding":
            d["roleRef"]["name"] = prefix
        for s in d.get("subjects") or ():
            s["namespace"] = spaces[s["namespace"]]
        out.append(d)
    return out


def install(cluster: RealCluster, prefix: str, tmp_path: Path) -> Install:
    docs = rename(load_docs(DEPLOY / "namespace.yaml") + load_docs(DEPLOY / "rbac.yaml"), prefix)
    cluster.apply([d for d in docs if d["kind"] == "Namespace"])
    cluster.apply([d for d in docs if d["kind"] != "Namespace"])
    inst = Install(cluster, prefix, tmp_path / f"{prefix}-cilia.kubeconfig")
    cluster.kubeconfig_for_token(inst.token(), inst.kubeconfig)
    return inst


class KubeCilia(CiliaProcess):
    """`cilia serve --kubernetes` against the real API server, with short leader-election timings."""

    LEASE = ("--lease-duration", "3", "--lease-renew-deadline", "2", "--lease-retry-period", "0.5")

    def __init__(self, kubeconfig: Path, *args: str) -> None:
        super().__init__([], extra=["--kubernetes", "--kubeconfig", str(kubeconfig), *self.LEASE, *args])

    def admin_text(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def leader(self) -> dict[str, Any]:
        return json.loads(self.admin_text("/debug/leader")[1])  # type: ignore[no-any-return]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")
