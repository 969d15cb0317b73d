"""One real API server for the whole session (see tests/support/realkube.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.realkube import RealCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    c = RealCluster.up(tmp_path_factory.mktemp("kube") / "cluster")
    try:
        yield c
    finally:
        c.down()
