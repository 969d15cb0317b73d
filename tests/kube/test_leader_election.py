"""Leader election that cannot work is loud on a real API server: a missing Lease namespace and a removed
Lease RoleBinding show up in the log, the metrics, /debug/leader, `cilia status` and /readyz within a retry
period (readiness after the lease duration), and restoring them makes cilia lead and write status again
without a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cilia.obs.metrics import parse_prometheus
from support.kubeinstall import KubeCilia, install, rename
from support.rbac import DEPLOY, load_docs
from support.realkube import RealCluster

RETRY_S, LEASE_S = 0.5, 3.0  # KubeCilia.LEASE
STALL_S = LEASE_S + 2 * RETRY_S  # no replica led for this long: not ready
SLACK_S = 1.5  # process scheduling, polling and the API server's RBAC cache on a loaded 2-core machine


def ingress(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ingressClassName": "cilia", "rules": [{"host": f"{name}.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


def lb_status(cluster: RealCluster, name: str, namespace: str) -> Any:
    status = cluster.get("ingress", name, "-n", namespace).get("status") or {}
    return (status.get("loadBalancer") or {}).get("ingress")


def metric(cilia: KubeCilia, key: str) -> float | None:
    return parse_prometheus(cilia.admin_text("/metrics")[1]).get(key)


def status_text(cilia: KubeCilia) -> str:
    out = subprocess.run([sys.executable, "-m", "cilia", "status", "--admin", f"127.0.0.1:{cilia.admin_port}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_within(cluster: RealCluster, what: str, seconds: float, predicate: Any) -> None:
    t0 = time.monotonic()
    cluster.wait_for(what, predicate, timeout=seconds, interval=0.05)
    assert time.monotonic() - t0 <= seconds


@pytest.mark.timeout(300)
def test_missing_lease_namespace_is_loud_and_heals_without_restart(cluster: RealCluster) -> None:
    apps, lease_ns = "le-apps", "le-lease"
    lease = f"{lease_ns}/cilia-leader"
    cluster.kubectl("create", "namespace", apps)
    cluster.apply(ingress("shop", apps))
    cilia = KubeCilia(cluster.kubeconfig, "--lease-namespace", lease_ns, "--secrets-namespace", apps)
    try:
        cilia.start(timeout=60)
        expected = (f"ERROR cilia.leader: leader election: cannot acquire or renew lease {lease} "
                    f'(namespace_not_found): namespaces "{lease_ns}" not found')
        wait_within(cluster, "the error in the log", RETRY_S + SLACK_S, lambda: expected in cilia.logs())
        assert metric(cilia, f'cilia_leader{{lease="{lease}"}}') == 0
        assert (metric(cilia, 'cilia_leader_election_errors_total{reason="namespace_not_found"}') or 0) >= 1
        assert cilia.leader()["message"] == f'not leading: namespaces "{lease_ns}" not found'
        assert f'WARNING: leader election ({lease}): not leading: namespaces "{lease_ns}" not found' \
            in status_text(cilia)
        # Not ready once nobody has led for the lease duration plus two retry periods.
        wait_within(cluster, "not ready", STALL_S + SLACK_S + 2, lambda: cilia.admin_text("/readyz")[0] == 503)
        code, text = cilia.admin_text("/readyz?verbose")
        assert code == 503 and "[+]config ok" in text and "[-]leader-election failed: no replica has led" in text
        assert lb_status(cluster, "shop", apps) is None  # nobody writes status

        cluster.kubectl("create", "namespace", lease_ns)
        cluster.wait_for("leading", lambda: metric(cilia, f'cilia_leader{{lease="{lease}"}}') == 1, timeout=15)
        assert cluster.wait_for("Ingress status", lambda: lb_status(cluster, "shop", apps), timeout=15)
        assert cilia.admin_text("/readyz") == (200, "ready\n")
        assert "reachable again" in cilia.logs() and cilia.leader()["error"] == ""
        assert cilia.proc is not None and cilia.proc.poll() is None  # the same process: no restart
    finally:
        cilia.stop()
        cluster.kubectl("delete", "namespace", apps, lease_ns, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.timeout(300)
def test_removed_lease_rbac_is_loud_and_heals_without_restart(cluster: RealCluster, tmp_path: Path) -> None:
    inst = install(cluster, "lr", tmp_path)
    apps = "lr-apps"
    lease = f"{inst.system}/cilia-leader"
    cluster.kubectl("create", "namespace", apps)
    cluster.apply(ingress("one", apps))
    cilia = KubeCilia(inst.kubeconfig, "--lease-namespace", inst.system, "--secrets-namespace", inst.secrets)
    try:
        cilia.start(timeout=60)
        cluster.wait_for("leading", lambda: metric(cilia, f'cilia_leader{{lease="{lease}"}}') == 1, timeout=15)
        assert cluster.wait_for("Ingress status", lambda: lb_status(cluster, "one", apps), timeout=15)
        assert "leader election:" not in cilia.logs()

        cluster.kubectl("delete", "rolebinding", "cilia-leader-election", "-n", inst.system)
        expected = (f"ERROR cilia.leader: leader election: cannot acquire or renew lease {lease} (forbidden): "
                    'leases.coordination.k8s.io "cilia-leader" is forbidden')
        wait_within(cluster, "the error in the log", RETRY_S + SLACK_S, lambda: expected in cilia.logs())
        assert (metric(cilia, 'cilia_leader_election_errors_total{reason="forbidden"}') or 0) >= 1
        assert "is forbidden" in cilia.leader()["error"]
        # The leader steps down once it cannot renew for the renew deadline; then nobody writes status.
        cluster.wait_for("stepped down", lambda: metric(cilia, f'cilia_leader{{lease="{lease}"}}') == 0, timeout=10)
        assert "WARNING: leader election" in status_text(cilia) and "is forbidden" in status_text(cilia)
        cluster.apply(ingress("two", apps))
        wait_within(cluster, "not ready", STALL_S + SLACK_S + 2, lambda: cilia.admin_text("/readyz")[0] == 503)
        assert "[-]leader-election failed" in cilia.admin_text("/readyz?verbose")[1]
        assert lb_status(cluster, "two", apps) is None
        assert cilia.logs().count(expected) == 1  # the same error is logged once, not every retry

        binding = next(d for d in load_docs(DEPLOY / "rbac.yaml")
                       if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "cilia-leader-election")
        cluster.apply(rename([binding], inst.prefix)[0])
        cluster.wait_for("leading again", lambda: metric(cilia, f'cilia_leader{{lease="{lease}"}}') == 1,
                         timeout=15)
        assert cluster.wait_for("Ingress status", lambda: lb_status(cluster, "two", apps), timeout=15)
        assert cilia.admin_text("/readyz") == (200, "ready\n")
        assert cilia.proc is not None and cilia.proc.poll() is None
    finally:
        cilia.stop()
        cluster.kubectl("delete", "namespace", apps, "--ignore-not-found", "--wait=false", check=False)
        inst.remove()
