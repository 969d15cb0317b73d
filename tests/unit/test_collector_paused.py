"""A translation or render runs with the cyclic collector paused, and leaves it as it found it."""

from __future__ import annotations

import contextlib
import gc

import pytest

from cilia.app import collector_paused


@pytest.mark.parametrize("enabled_before", [True, False])
@pytest.mark.parametrize("fails", [False, True])
def test_collector_paused_restores_the_collector(enabled_before: bool, fails: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
            with collector_paused():
                assert not gc.isenabled()
                if fails:
                    raise RuntimeError("translation failed")
        assert gc.isenabled() == enabled_before
    finally:
        (gc.enable if was else gc.disable)()
