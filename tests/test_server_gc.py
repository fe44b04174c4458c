"""`serve()` runs the cyclic garbage collector less often, and puts it back as it was on exit."""

from __future__ import annotations

import gc

import anyio
import pytest

from dispatch_client.server.app import GC_THRESHOLDS, DispatchServer, serve

pytestmark = pytest.mark.anyio


async def test_serve_sets_the_collector_while_it_listens_and_restores_it() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    seen: list[tuple[tuple[int, int, int], int]] = []
    async with anyio.create_task_group() as tasks:

        def ready(server: DispatchServer) -> None:
            seen.append((gc.get_threshold(), gc.get_freeze_count()))
            tasks.cancel_scope.cancel()

        tasks.start_soon(lambda: serve(host="127.0.0.1", port=0, on_ready=ready))
    ((thresholds, frozen),) = seen
    assert thresholds == GC_THRESHOLDS
    assert frozen > frozen_before  # what existed as it started is out of the collector's walks
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before
