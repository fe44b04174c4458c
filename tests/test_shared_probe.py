"""One reachability prober per stream hub: one probe per `Backoff.probe` for every stream waiting to retry.

The unit cases drive `ReachabilityProber` with a probe callable that counts its
calls, on short real timings; the fleet case follows a few hundred microgrids
through a real client whose server goes down and comes back, counting the
calls of the probe the client hands its hub.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from server_process import free_port
from test_streaming_helpers import wait_until

from dispatch_client import Client
from dispatch_client._reconnect import ReachabilityProber, next_probe_time
from dispatch_client.streaming import Backoff, StreamState, StreamStatus
from dispatch_client.testing import running_server, threaded_server

pytestmark = pytest.mark.anyio

PROBER_TASK = "dispatch-reachability-probe"
EVERY = 0.02
"""Seconds between probes in the unit cases."""


class Probe:
    """A reachability probe that fails `down` times, then succeeds, each after `takes` seconds."""

    def __init__(self, down: int = 0, takes: float = 0.0) -> None:
        self.down = down
        self.takes = takes
        self.calls = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.takes:
            await asyncio.sleep(self.takes)
        self.finished += 1
        if self.calls <= self.down:
            raise ConnectionRefusedError("refused")


def prober_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == PROBER_TASK and not t.done()]


async def timed(
    prober: ReachabilityProber, delay: float, *, unreachable: bool
) -> tuple[bool, float]:
    started = time.monotonic()
    cut = await prober.wait_to_retry(delay, unreachable=unreachable)
    return cut, time.monotonic() - started


@pytest.mark.parametrize(
    ("now", "last", "expected"),
    [
        pytest.param(10.0, -math.inf, 10.3, id="first probe: next grid point"),
        pytest.param(10.0, 9.8, 10.3, id="a probe just ran: one interval after it"),
        pytest.param(12.0, 9.8, 12.3, id="a long probe: the next grid point after it"),
        pytest.param(10.3, 9.8, 10.3, id="on a grid point: now"),
    ],
)
def test_next_probe_time_named_cases(now: float, last: float, expected: float) -> None:
    assert next_probe_time(now, last, 0.5, 0.3) == pytest.approx(expected)


@given(
    now=st.floats(0, 1e5),
    back=st.one_of(st.just(math.inf), st.floats(0, 10)),
    every=st.floats(0.01, 5),
    phase_share=st.floats(0, 1, exclude_max=True),
)
def test_probes_are_on_the_grid_and_at_least_an_interval_apart(
    now: float, back: float, every: float, phase_share: float
) -> None:
    phase = phase_share * every
    # The previous probe started on the grid, `back` seconds or more ago.
    last = (
        -math.inf if math.isinf(back) else phase + math.floor((now - back - phase) / every) * every
    )
    start = next_probe_time(now, last, every, phase)
    assert start >= now - 1e-6
    assert start >= last + every - 1e-6
    steps = (start - phase) / every
    assert abs(steps - round(steps)) < 1e-6
    assert start < max(now, last + every) + every + 1e-6


class TestReachabilityProber:
    async def test_waiters_that_could_not_reach_the_server_share_probes_and_end_at_the_first_success(
        self,
    ) -> None:
        probe = Probe(down=3)
        prober = ReachabilityProber(probe, EVERY)
        results = await asyncio.gather(*(timed(prober, 5.0, unreachable=True) for _ in range(50)))
        assert all(cut for cut, _ in results)
        assert max(took for _, took in results) < 1.0
        # One probe per interval for all 50 (each probed on its own before: about 200).
        assert probe.calls == 4
        await prober.aclose()

    async def test_waiters_reachable_all_along_sleep_out_their_delay_after_one_probe(self) -> None:
        probe = Probe()
        prober = ReachabilityProber(probe, EVERY)
        results = await asyncio.gather(*(timed(prober, 0.3, unreachable=False) for _ in range(20)))
        assert all(not cut and took >= 0.3 for cut, took in results)
        assert probe.calls == 1
        await prober.aclose()

    async def test_a_reachable_waiter_whose_probe_fails_is_cut_short_by_the_next_success(
        self,
    ) -> None:
        probe = Probe(down=1)
        prober = ReachabilityProber(probe, EVERY)
        cut, took = await timed(prober, 5.0, unreachable=False)
        assert cut and took < 1.0
        assert probe.calls == 2
        await prober.aclose()

    async def test_the_delay_is_never_exceeded_while_the_server_stays_down(self) -> None:
        probe = Probe(down=10**6)
        prober = ReachabilityProber(probe, EVERY)
        delays = [0.1, 0.2, 0.3]
        results = await asyncio.gather(*(timed(prober, d, unreachable=True) for d in delays))
        for delay, (cut, took) in zip(delays, results, strict=True):
            assert not cut
            assert delay <= took < delay + 0.2
        # At most one probe per interval, however many wait (their spacing is
        # `next_probe_time`'s, tested above; a busy loop makes single gaps uneven).
        assert probe.calls <= 0.3 / EVERY + 2
        await prober.aclose()

    async def test_a_hung_probe_is_bounded_by_the_delay(self) -> None:
        probe = Probe(takes=math.inf)
        prober = ReachabilityProber(probe, EVERY)
        cut, took = await timed(prober, 0.2, unreachable=False)
        assert not cut and 0.2 <= took < 0.5
        await prober.aclose()
        assert not prober_tasks()

    @pytest.mark.parametrize("backoff", [Backoff(probe=None), Backoff(probe=EVERY)])
    async def test_without_a_probe_the_delay_is_slept_out(self, backoff: Backoff) -> None:
        probe = None if backoff.probe is not None else Probe()
        prober = ReachabilityProber(probe, backoff.probe)
        cut, took = await timed(prober, 0.1, unreachable=True)
        assert not cut and took >= 0.1
        assert not prober_tasks()

    async def test_a_probe_that_started_before_the_wait_does_not_end_it(self) -> None:
        # The server answered a probe that was already under way when the
        # stream broke: that says nothing about the failure.
        probe = Probe(takes=0.1)
        prober = ReachabilityProber(probe, 0.2)
        first = asyncio.create_task(timed(prober, 5.0, unreachable=True))
        await wait_until(lambda: probe.calls > 0)
        cut, _ = await timed(prober, 5.0, unreachable=True)
        assert cut
        assert probe.calls == 2
        assert (await first)[0]
        await prober.aclose()

    async def test_a_stream_that_connects_ends_the_waits_that_began_before_it_tried(
        self,
    ) -> None:
        # The prober's own probes fail: only the stream's connection can end the waits.
        prober = ReachabilityProber(Probe(down=10**6), EVERY)
        early = prober.probe_started()
        waits = [asyncio.create_task(timed(prober, 5.0, unreachable=True)) for _ in range(10)]
        await asyncio.sleep(0.05)
        prober.reached(early)  # started before they waited: says nothing
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)
        prober.reached(prober.probe_started())
        results = await asyncio.gather(*waits)
        assert all(cut and took < 1.0 for cut, took in results)
        await prober.aclose()

    async def test_a_waiter_cancelled_mid_probe_does_not_disturb_the_others(self) -> None:
        probe = Probe(down=1, takes=0.05)
        prober = ReachabilityProber(probe, EVERY)
        leaving = asyncio.create_task(timed(prober, 5.0, unreachable=True))
        staying = asyncio.create_task(timed(prober, 5.0, unreachable=True))
        await wait_until(lambda: probe.calls > 0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        cut, took = await staying
        assert cut and took < 1.0
        # The probe under way when it left ran to its end.
        assert probe.finished == probe.calls == 2
        await prober.aclose()

    async def test_no_task_is_left_once_nobody_waits_or_the_prober_is_closed(self) -> None:
        prober = ReachabilityProber(Probe(down=10**6), EVERY)
        waits = [asyncio.create_task(prober.wait_to_retry(5.0, unreachable=True)) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert len(prober_tasks()) == 1
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await asyncio.sleep(0.01)
        assert not prober_tasks()
        # Waiting again starts it again; closing ends it with waiters left.
        wait = asyncio.create_task(prober.wait_to_retry(0.5, unreachable=True))
        await asyncio.sleep(0.05)
        assert len(prober_tasks()) == 1
        await prober.aclose()
        assert not prober_tasks()
        assert not await wait

    async def test_a_probe_that_ended_the_prober_task_does_not_end_the_probing(self) -> None:
        # A probe raising past `_probe_once` (a CancelledError that is not the
        # hub's) ends the prober's task: the next stream to wait starts another.
        calls = [0]

        async def probe() -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise asyncio.CancelledError

        prober = ReachabilityProber(probe, EVERY)
        first = asyncio.create_task(timed(prober, 5.0, unreachable=True))
        await wait_until(lambda: calls[0] == 1 and not prober_tasks())
        cut, took = await timed(prober, 5.0, unreachable=True)
        assert cut and took < 1.0
        assert (await first)[0]
        await prober.aclose()

    def test_one_prober_serves_one_asyncio_run_after_another(self) -> None:
        probe = Probe(down=1)
        prober = ReachabilityProber(probe, EVERY)

        async def once() -> bool:
            try:
                return await prober.wait_to_retry(2.0, unreachable=True)
            finally:
                await prober.aclose()

        assert asyncio.run(once())
        assert asyncio.run(once())

    def test_a_loop_closed_with_streams_waiting_does_not_hold_up_the_next(self) -> None:
        prober = ReachabilityProber(Probe(down=2), EVERY)
        old = asyncio.new_event_loop()
        try:
            waiting = old.create_task(prober.wait_to_retry(5.0, unreachable=True))
            old.run_until_complete(asyncio.sleep(0.03))
        finally:
            old.close()  # its waiter and prober task left pending, never to run again

        async def once() -> tuple[bool, float]:
            try:
                return await timed(prober, 2.0, unreachable=True)
            finally:
                await prober.aclose()

        cut, took = asyncio.run(once())
        assert cut and took < 1.0
        del waiting


async def test_a_fleet_waiting_out_an_outage_probes_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 streams wait to retry on a down server: one probe per `Backoff.probe`, not one each."""
    streams, every, window = 300, 0.1, 1.0
    calls = [0]
    connect = Client._connect_channel

    async def counting(self: Client) -> None:
        calls[0] += 1
        await connect(self)

    # The probe the client hands its hub (it also connects before each attempt).
    monkeypatch.setattr(Client, "_connect_channel", counting)
    reconnecting: set[int] = set()

    def on_status(status: StreamStatus) -> None:
        if status.state is StreamState.RECONNECTING:
            reconnecting.add(status.microgrid_id)

    port = free_port()
    # No jitter and a long delay: no attempt falls in the window, only waits.
    backoff = Backoff(initial=6.0, maximum=6.0, jitter=False, probe=every)
    async with Client(
        f"grpc://127.0.0.1:{port}?ssl=false", stream_backoff=backoff, on_stream_status=on_status
    ) as client:

        async def follow(microgrid_id: int) -> None:
            async for _ in client.stream(microgrid_id):
                return

        tasks = [asyncio.create_task(follow(m)) for m in range(1, streams + 1)]
        try:
            await wait_until(lambda: len(reconnecting) == streams, limit=5)
            before = calls[0]
            await asyncio.sleep(window)
            probes = calls[0] - before
            # About 3000 before (one per stream per interval).
            assert probes <= window / every + 3, probes
            assert len(prober_tasks()) == 1
            async with running_server(port=port) as server:
                # Cut short well before the 6 s delay: they all open at the next probe.
                async with asyncio.timeout(3):
                    await server.service.wait_for_streams(None, streams)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert not prober_tasks()


def test_a_stream_opening_after_a_loop_closed_with_streams_waiting_is_not_disturbed() -> None:
    """A loop closed (not by `asyncio.run`) while a stream waited to retry; the next loop's streams open.

    The first stream of the next loop connects before any stream of it waits:
    its success must not be handed to the closed loop's waiters (waking them
    there raised "Event loop is closed" into the new stream, which failed).
    """
    port = free_port()
    url = f"grpc://127.0.0.1:{port}?ssl=false"
    backoff = Backoff(initial=5.0, maximum=5.0, jitter=False, probe=0.05)
    client = Client(url, auth_key="k", stream_backoff=backoff)
    waiting: set[int] = set()

    async def wait_on_a_down_server() -> None:
        async def follow() -> None:
            async for _ in client.watch(1):
                pass

        asyncio.get_running_loop().create_task(follow())
        await wait_until(
            lambda: 1 in client.streams and client.streams[1].status.retry_in is not None
        )
        await asyncio.sleep(0.1)  # into the prober's wait
        waiting.add(1)

    old = asyncio.new_event_loop()
    try:
        old.run_until_complete(wait_on_a_down_server())
    finally:
        old.close()  # the stream's task left pending in its wait, never to run again
    assert waiting

    async def first_event() -> str:
        async with asyncio.timeout(5):
            async with Client(url, auth_key="k") as producer:
                await producer.create(2, "T", "NOW", None, [1])
            async for event in client.watch(2):
                return event.event.name
        raise AssertionError("the stream ended without an event")

    with threaded_server(port=port):
        assert asyncio.run(first_event()) == "CREATED"
