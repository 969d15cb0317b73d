"""The collector policy of `cilia serve`: paused while a translation or render runs (and left as it was
found), its young threshold scaled with the xDS streams held."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from cilia.app import GC_THRESHOLDS, GC_YOUNG_PER_STREAM, collector_paused, collector_thresholds, scale_collector


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


def test_collector_thresholds_grow_with_the_streams_held() -> None:
    base = GC_THRESHOLDS
    assert collector_thresholds(0) == base
    assert collector_thresholds(100) == base  # few streams: the fixed young threshold
    assert collector_thresholds(10_000) == (GC_YOUNG_PER_STREAM * 10_000, base[1], base[2])


async def test_scale_collector_follows_the_stream_count() -> None:
    streams = [0]
    saved = gc.get_threshold()
    try:
        gc.set_threshold(*GC_THRESHOLDS)
        task = asyncio.create_task(scale_collector(lambda: streams[0], interval_s=0.01))
        streams[0] = 20_000
        await asyncio.sleep(0.1)
        assert gc.get_threshold() == collector_thresholds(20_000)
        streams[0] = 10
        await asyncio.sleep(0.1)
        assert gc.get_threshold() == GC_THRESHOLDS
        task.cancel()
    finally:
        gc.set_threshold(*saved)
