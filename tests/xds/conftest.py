"""Fixtures for the xDS protocol tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.xds_client import Harness, harness


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A running xDS server with a small world (clusters c1, c2), stopped after the test."""
    hh = await harness()
    yield hh
    await hh.stop()
