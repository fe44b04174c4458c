"""Pure parts of streaming: backoff and argument checks (the views are in test_watchview.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from grpclib.exceptions import StreamTerminatedError
from test_streaming_helpers import wait_until

from dispatch_client import Dispatch, ResourceExhausted, Unavailable
from dispatch_client._reconnect import unreachable, wait_to_retry
from dispatch_client.streaming import Backoff, StreamHub, StreamState, StreamStatus
from dispatch_client.wire import StreamMicrogridDispatchesResponse


async def _no_stream(_: int) -> AsyncIterator[StreamMicrogridDispatchesResponse]:
    raise AssertionError("not opened in these tests")
    yield  # pragma: no cover


async def _no_list(_: int) -> AsyncIterator[Dispatch]:
    raise AssertionError("not listed in these tests")
    yield  # pragma: no cover


def hub(**kwargs: Any) -> StreamHub:
    return StreamHub(
        open_stream=_no_stream, list_dispatches=_no_list, server_url="grpc://x", **kwargs
    )


class TestBackoff:
    def test_delays_stay_within_the_growing_bound(self) -> None:
        backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0)
        random.seed(5)
        for failures, bound in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0)]:
            delays = [backoff.delay(failures) for _ in range(200)]
            assert all(0.0 <= d <= bound for d in delays)
            # Full jitter: the draws spread over the whole range, not just near the bound.
            assert min(delays) < bound * 0.2 < bound * 0.8 < max(delays)

    def test_without_jitter_the_bound_is_the_delay(self) -> None:
        backoff = Backoff(initial=0.5, maximum=3.0, multiplier=3.0, jitter=False)
        assert [backoff.delay(n) for n in range(4)] == [0.5, 1.5, 3.0, 3.0]

    def test_huge_failure_counts_do_not_overflow(self) -> None:
        assert Backoff(jitter=False).delay(10**6) == Backoff().maximum

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"probe": 0},
            {"probe": -1},
            {"probe": float("inf")},
            {"initial": 0},
            {"initial": -1},
            {"initial": 2, "maximum": 1},
            {"maximum": float("inf")},
            {"multiplier": 0.5},
        ],
    )
    def test_rejects_settings_that_spin_or_never_retry(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            Backoff(**kwargs)  # type: ignore[arg-type]


class TestArguments:
    @pytest.mark.parametrize("buffer_size", [0, -1, True, 1.5])
    def test_bad_buffer_sizes(self, buffer_size: object) -> None:
        with pytest.raises(ValueError, match="buffer_size"):
            hub().subscribe(1, buffer_size=buffer_size)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="buffer_size"):
            hub(buffer_size=buffer_size)

    @pytest.mark.parametrize("microgrid_id", [-1, True, "1", None])
    def test_bad_microgrid_ids(self, microgrid_id: object) -> None:
        with pytest.raises(ValueError, match="microgrid_id"):
            hub().subscribe(microgrid_id)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="microgrid_id"):
            hub().watch(microgrid_id)  # type: ignore[arg-type]

    def test_policies_per_kind_of_consumer(self) -> None:
        with pytest.raises(ValueError, match="overflow"):
            hub().subscribe(1, overflow="resync")
        with pytest.raises(ValueError, match="overflow"):
            hub().watch(1, overflow="drop_oldest")
        with pytest.raises(ValueError, match="overflow"):
            hub().subscribe(1, overflow="block")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="on_gap"):
            hub().subscribe(1, on_gap="ignore")  # type: ignore[arg-type]

    def test_bad_open_grace(self) -> None:
        with pytest.raises(ValueError, match="open_grace"):
            hub(open_grace=-1)

    def test_arguments_are_checked_before_iteration(self) -> None:
        # Nothing runs (and no event loop is needed) until the generator is iterated.
        streams = hub()
        streams.subscribe(1, buffer_size=4, overflow="drop_oldest")
        streams.watch(1, buffer_size=4, overflow="resync")
        assert streams.streams == {}


class Probe:
    """A reachability probe that fails `down` times, then succeeds; counts its calls."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionRefusedError("refused")


FAST_PROBE = Backoff(probe=0.01)


@pytest.mark.anyio
class TestWaitToRetry:
    async def test_a_server_back_ends_the_wait_at_once(self) -> None:
        probe = Probe(down=3)
        started = anyio.current_time()
        assert await wait_to_retry(5.0, FAST_PROBE, probe, unreachable=False)
        assert anyio.current_time() - started < 1.0
        assert probe.calls == 4

    async def test_a_server_reachable_all_along_is_probed_once_and_waited_for(self) -> None:
        probe = Probe(down=0)
        started = anyio.current_time()
        assert not await wait_to_retry(0.3, FAST_PROBE, probe, unreachable=False)
        assert anyio.current_time() - started >= 0.3
        assert probe.calls == 1

    async def test_an_unreachable_server_that_answers_the_first_probe_ends_the_wait(self) -> None:
        probe = Probe(down=0)
        assert await wait_to_retry(5.0, FAST_PROBE, probe, unreachable=True)
        assert probe.calls == 1

    @pytest.mark.parametrize("backoff", [Backoff(probe=None), FAST_PROBE])
    async def test_without_a_probe_the_delay_is_waited_out(self, backoff: Backoff) -> None:
        started = anyio.current_time()
        probe = None if backoff.probe is not None else Probe(down=0)
        assert not await wait_to_retry(0.2, backoff, probe, unreachable=True)
        assert anyio.current_time() - started >= 0.2

    async def test_a_hung_probe_counts_as_unreachable_and_is_bounded_by_the_delay(self) -> None:
        async def hang() -> None:
            await anyio.sleep_forever()

        started = anyio.current_time()
        assert not await wait_to_retry(0.3, FAST_PROBE, hang, unreachable=False)
        assert anyio.current_time() - started < 1.0


class TestUnreachable:
    def test_connection_failures_anywhere_in_the_chain(self) -> None:
        refused = Unavailable("connection refused")
        refused.__cause__ = ConnectionRefusedError()
        broke = Unavailable("connection to the server broke")
        broke.__cause__ = StreamTerminatedError("Connection lost")
        assert unreachable(refused) and unreachable(broke)

    def test_an_answer_from_the_server_is_not(self) -> None:
        assert not unreachable(ResourceExhausted("fell behind"))
        assert not unreachable(Unavailable("server is shutting down"))


@pytest.mark.anyio
class TestConnectingFirst:
    """A stream attempt waits for the channel's connection before it opens or lists anything."""

    async def test_a_fleet_opens_and_lists_only_once_connected(self) -> None:
        connected = asyncio.Event()
        calls: list[Any] = []

        async def probe() -> None:
            calls.append("probe")
            await connected.wait()

        async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
            calls.append(("open", microgrid_id))
            yield None
            await asyncio.Event().wait()

        async def list_dispatches(microgrid_id: int) -> AsyncIterator[Dispatch]:
            calls.append(("list", microgrid_id))
            return
            yield  # pragma: no cover

        streams = StreamHub(
            open_stream=open_stream,
            list_dispatches=list_dispatches,
            server_url="grpc://x",
            probe=probe,
        )
        consumers = [streams.subscribe(mg) for mg in range(5)]
        reads = [asyncio.ensure_future(anext(consumer)) for consumer in consumers]
        await wait_until(lambda: calls.count("probe") == 5)
        await asyncio.sleep(0.01)
        assert calls == ["probe"] * 5
        connected.set()
        await wait_until(lambda: all(stream.synced for stream in streams.streams.values()))
        for mg in range(5):
            # Each stream's request first, its baseline list right behind it.
            assert calls.index(("open", mg)) < calls.index(("list", mg))
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        for consumer in consumers:
            await consumer.aclose()
        await streams.aclose()

    async def test_a_connection_that_fails_is_a_broken_attempt(self) -> None:
        opened: list[int] = []
        statuses: list[StreamStatus] = []

        async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
            opened.append(microgrid_id)
            yield None

        streams = StreamHub(
            open_stream=open_stream,
            list_dispatches=_no_list,
            server_url="grpc://x",
            probe=Probe(down=10**6),
            backoff=Backoff(initial=0.01, maximum=0.01, probe=None),
            on_status=statuses.append,
        )
        consumer = streams.subscribe(7)
        read = asyncio.ensure_future(anext(consumer))
        await wait_until(lambda: sum(s.state is StreamState.RECONNECTING for s in statuses) >= 2)
        # Retried with backoff as a refused connection always was, typed as
        # UNAVAILABLE; no stream request was ever made without a connection.
        failures = [s for s in statuses if s.state is StreamState.RECONNECTING]
        assert all(isinstance(s.error, Unavailable) for s in failures)
        assert opened == []
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        await consumer.aclose()
        await streams.aclose()
