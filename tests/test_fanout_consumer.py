"""A consumer's buffer: order, end, overflow, and a far-behind reader still yields."""

from __future__ import annotations

import anyio
import pytest

from dispatch_client._fanout import YIELD_EVERY, Audience, Consumer, Snapshot
from dispatch_client.errors import StreamOverflow

pytestmark = pytest.mark.anyio


def consumer(buffer_size: int = 8, overflow: str = "error") -> Consumer:
    return Consumer(
        7,
        buffer_size,
        overflow,  # type: ignore[arg-type]
        audience=Audience.RAW,
        server_url="grpc://x",
        snapshot=lambda: Snapshot({}),
    )


async def test_items_come_in_order_then_the_error_that_ended_it() -> None:
    c = consumer()
    for item in ("a", "b", "c"):
        assert c.offer(item)  # type: ignore[arg-type]
    error = RuntimeError("gone")
    c.end(error)
    assert not c.offer("d")  # type: ignore[arg-type]
    assert [await c.next() for _ in range(3)] == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="gone"):
        await c.next()


async def test_a_waiting_reader_wakes_on_an_item_and_on_the_end() -> None:
    c = consumer()
    got: list[object] = []

    async def read() -> None:
        while (item := await c.next()) is not None:
            got.append(item)
        got.append("END")

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.01)
        c.offer("a")  # type: ignore[arg-type]
        await anyio.sleep(0.01)
        assert got == ["a"]
        c.end()
    assert got == ["a", "END"]


async def test_overflow_policies() -> None:
    failing = consumer(2)
    assert failing.offer("a") and failing.offer("b")  # type: ignore[arg-type]
    assert not failing.offer("c")  # type: ignore[arg-type]
    assert [await failing.next(), await failing.next()] == ["a", "b"]
    with pytest.raises(StreamOverflow):
        await failing.next()

    dropping = consumer(2, "drop_oldest")
    for item in "abc":
        assert dropping.offer(item)  # type: ignore[arg-type]
    assert [await dropping.next(), await dropping.next()] == ["b", "c"]

    resyncing = consumer(2, "resync")
    for item in "abc":
        assert resyncing.offer(item)  # type: ignore[arg-type]
    assert isinstance(await resyncing.next(), Snapshot)
    resyncing.close()
    assert not resyncing.offer("d")  # type: ignore[arg-type]
    assert await resyncing.next() is None


async def test_a_reader_far_behind_lets_other_tasks_run() -> None:
    c = consumer(10 * YIELD_EVERY)
    for index in range(10 * YIELD_EVERY):
        c.offer(index)  # type: ignore[arg-type]
    c.end()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.lowlevel.checkpoint()
        before = ticks
        read = 0
        while await c.next() is not None:
            read += 1
        tg.cancel_scope.cancel()
    assert read == 10 * YIELD_EVERY
    assert ticks - before >= 5  # the reader yielded about once per YIELD_EVERY items
