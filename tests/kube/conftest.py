"""One real API server for the whole session (see tests/support/realkube.py), with deploy/ applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.realkube import RealCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    c = RealCluster.up(tmp_path_factory.mktemp("kube") / "cluster")
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def deployed(cluster: RealCluster) -> str:
    """Gateway API CRDs, then `kubectl apply -k deploy/`; returns apply's output.

    deploy/webhook.yaml's MutatingWebhookConfiguration sends every Pod CREATE to Service cilia-system/cilia,
    which no cilia Pod backs here (there is no kubelet), and fails closed: once its creation is checked it is
    deleted, and the webhook tests install their own (pointing at a cilia process on loopback)."""
    out = cluster.install_cilia()
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/cilia-sidecar-injector" in out
    cluster.kubectl("delete", "mutatingwebhookconfiguration", "cilia-sidecar-injector")
    return out


@pytest.fixture(scope="session")
def cilia_kubeconfig(cluster: RealCluster, deployed: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Credentials of cilia's ServiceAccount: what `cilia serve --kubernetes` runs with in these tests."""
    return cluster.cilia_kubeconfig(tmp_path_factory.mktemp("cilia-sa") / "kubeconfig")
