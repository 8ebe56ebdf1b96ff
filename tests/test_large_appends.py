"""Large single-request appends, which the store offers to the backend chunk by chunk.

On PostgreSQL a request of ``STREAMED_APPEND_MIN`` events or more is copied in
chunk by chunk in one transaction, each chunk prepared while the server writes
the one before (see ``pgwrite.Writes.append_streamed``); SQLite declines and
appends it whole. Either way it must behave exactly as any append: atomic,
contiguous, checked, idempotent, cancellable without a trace.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Sequence

import pytest

from eventstore import (
    NO_STREAM,
    AppendResult,
    DatabaseError,
    DuplicateEventError,
    EventStore,
    GuardedBatch,
    InvalidEvent,
    RecordedEvent,
    SignalDetected,
    SignalPushed,
    Statement,
    WrongExpectedVersion,
    open_store,
)
from eventstore.backends.base import PreparedAppend
from eventstore.events import Event
from eventstore.store import STREAMED_APPEND_CHUNK, STREAMED_APPEND_MIN
from tests.conftest import detected

pytestmark = pytest.mark.anyio

A = "company:domain:a.ai"
B = "company:domain:b.ai"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
LARGE = STREAMED_APPEND_MIN + 3 * STREAMED_APPEND_CHUNK + 5  # several chunks and a short last one


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n + 1, notion_page_id=f"page-{n}")


def detections(start: int, count: int) -> list[SignalDetected]:
    return [detected(detected_at=T0 + dt.timedelta(seconds=n)) for n in range(start, start + count)]


async def contents(log: EventStore) -> list[tuple[int, str, int, Event]]:
    events = [(e.position, e.stream, e.version, e.data) async for e in log.read_all()]
    assert [position for position, *_ in events] == list(range(1, len(events) + 1))
    assert (await log.verify()).ok
    return events


class StreamedCalls:
    """Records what the backend's chunked path answered (None: it declined)."""

    def __init__(self, log: EventStore) -> None:
        self.results: list[AppendResult | None] = []
        backend = log.backend
        original = backend.append_streamed

        async def recording(chunks: Iterator[PreparedAppend], clock: object) -> AppendResult | None:
            result = await original(chunks, clock)  # type: ignore[arg-type]
            self.results.append(result)
            return result

        backend.append_streamed = recording  # type: ignore[method-assign]


async def test_a_large_append_is_written_whole_and_in_order(store_url: str) -> None:
    async with open_store(store_url) as log:
        await log.append(B, [pushed(0)])
        events = [pushed(n) for n in range(1, LARGE + 1)]
        result = await log.append(A, events, expected_version=NO_STREAM)
        assert result.positions == list(range(2, LARGE + 2))
        assert result.version == LARGE and result.written
        recorded = [e async for e in log.read_stream(A)]
        assert [e.data for e in recorded] == events
        assert [e.version for e in recorded] == list(range(1, LARGE + 1))
        assert len({e.recorded_at for e in recorded}) == 1  # one request, one recorded_at
        assert len({e.metadata["correlation_id"] for e in recorded}) == 1
        assert len(await contents(log)) == LARGE + 1


async def test_postgres_writes_a_large_append_in_chunks(postgres_store_url: str) -> None:
    async with open_store(postgres_store_url) as log:
        calls = StreamedCalls(log)
        followed: list[int] = []

        async def follow() -> None:
            async for event in log.subscribe(from_position=1):
                followed.append(event.position)
                if event.position == 2 * LARGE:
                    return

        async with asyncio.timeout(60):
            reader = asyncio.ensure_future(follow())
            await log.append(A, [pushed(n) for n in range(LARGE)])
            await log.append(A, [pushed(n) for n in range(LARGE)], expected_version=LARGE)
            await reader
        assert [result is not None for result in calls.results] == [True, True]
        assert followed == list(range(1, 2 * LARGE + 1))
        assert await log.stream_version(A) == 2 * LARGE


async def test_a_large_append_with_a_wrong_expected_version_writes_nothing(store_url: str) -> None:
    async with open_store(store_url) as log:
        await log.append(A, [pushed(0)])
        with pytest.raises(WrongExpectedVersion, match="Wrong expected version: 3") as caught:
            await log.append(A, [pushed(n) for n in range(LARGE)], expected_version=3)
        assert caught.value.actual == 1
        with pytest.raises(WrongExpectedVersion):
            await log.append(A, [pushed(n) for n in range(LARGE)], expected_version=NO_STREAM)
        assert len(await contents(log)) == 1


async def test_a_bad_event_in_the_last_chunk_fails_the_whole_append(store_url: str) -> None:
    async with open_store(store_url) as log:
        events = detections(0, LARGE)
        events[-1] = detected(confidence=1.5)
        with pytest.raises(InvalidEvent, match="confidence"):
            await log.append(A, events)
        assert await log.head_position() == 0
        # The store goes on: nothing of the failed append is left in a transaction.
        result = await log.append(A, detections(0, LARGE))
        assert result.positions == list(range(1, LARGE + 1))
        assert len(await contents(log)) == LARGE


async def test_re_appending_a_large_append_is_idempotent(store_url: str) -> None:
    async with open_store(store_url) as log:
        events = detections(0, LARGE)  # deterministic ids
        first = await log.append(A, events)
        await log.append(B, [pushed(1)])
        again = await log.append(A, events)
        assert again.positions == first.positions
        assert not again.written and again.version == LARGE
        assert len(await contents(log)) == LARGE + 1


async def test_a_large_append_overlapping_recorded_events_in_a_later_chunk_writes_nothing(store_url: str) -> None:
    """The chunks before the one holding a recorded id were sent already: they must be rolled back."""
    async with open_store(store_url) as log:
        later = STREAMED_APPEND_CHUNK * 3 + 1
        await log.append(A, detections(later, 10))
        with pytest.raises(DuplicateEventError, match="mixes 10 event id"):
            await log.append(A, detections(0, LARGE))
        assert len(await contents(log)) == 10


async def test_an_id_repeated_within_a_large_append_is_refused(store_url: str) -> None:
    async with open_store(store_url) as log:
        ids = [uuid.uuid4() for _ in range(LARGE)]
        ids[-2] = ids[STREAMED_APPEND_CHUNK + 1]
        with pytest.raises(DuplicateEventError, match="appears twice"):
            await log.append(A, [pushed(n) for n in range(LARGE)], event_ids=ids)
        assert await log.head_position() == 0


async def test_appenders_during_a_large_append_keep_the_log_contiguous(store_url: str) -> None:
    async with open_store(store_url) as log:

        async def small(n: int) -> AppendResult:
            await asyncio.sleep(0.0005 * n)
            return await log.append(f"s:{n}", [pushed(n)])

        results = await asyncio.gather(
            log.append(A, [pushed(n) for n in range(LARGE)]),
            *(small(n) for n in range(20)),
            log.append(B, [pushed(n) for n in range(LARGE)]),
        )
        events = await contents(log)
        assert len(events) == 2 * LARGE + 20
        by_position = {position: stream for position, stream, *_ in events}
        streams = [A, *(f"s:{n}" for n in range(20)), B]
        for stream, result in zip(streams, results, strict=True):
            assert {by_position[p] for p in result.positions} == {stream}


async def test_a_cancelled_large_append_leaves_all_or_nothing(store_url: str) -> None:
    """Each cancelled append is wholly there or wholly absent (cancelled during COMMIT, it may be there)."""
    async with open_store(store_url) as log:
        for attempt, delay in enumerate((0.0, 0.001, 0.003, 0.006, 0.01, 0.02)):
            task = asyncio.ensure_future(log.append(f"s:{attempt}", [pushed(n) for n in range(LARGE)]))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                result = None
            streams = collections.Counter(stream for _, stream, *_ in await contents(log))
            assert streams[f"s:{attempt}"] in (0, LARGE)
            if result is not None:  # acknowledged: it must be there
                assert streams[f"s:{attempt}"] == LARGE
        written = len(await contents(log))
        result = await log.append(A, [pushed(n) for n in range(LARGE)])  # the store goes on
        assert result.positions[0] == written + 1


async def test_a_large_append_inside_a_unit_of_work_rolls_back_with_it(store_url: str) -> None:
    async with open_store(store_url) as log:
        with pytest.raises(RuntimeError):
            async with log.transaction():
                await log.append(A, [pushed(n) for n in range(LARGE)])
                raise RuntimeError("abandon the unit of work")
        assert await log.head_position() == 0
        async with log.transaction():
            await log.append(A, [pushed(n) for n in range(LARGE)])
            await log.append(B, [pushed(0)])
        assert len(await contents(log)) == LARGE + 1


async def test_a_bad_event_fails_at_once_while_another_writer_holds_the_log(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL the lock is then being waited for: that must not hold the error back."""
    caplog.set_level(logging.ERROR)
    async with open_store(store_url) as log, open_store(store_url) as other:
        events = [pushed(n) for n in range(LARGE)]
        events[STREAMED_APPEND_CHUNK + 1] = SignalPushed(signal_id=0, notion_page_id="page")  # in the 2nd chunk
        async with other.transaction():
            await other.append(B, [pushed(0)])  # the other store holds the append lock now
            async with asyncio.timeout(20):  # (a hang, not a speed limit)
                with pytest.raises(InvalidEvent, match="signal_id"):
                    await log.append(A, events)
        assert [stream for _, stream, *_ in await contents(log)] == [B]
        await log.append(A, [pushed(n) for n in range(LARGE)])
        assert len(await contents(log)) == LARGE + 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_large_append_timing_out_behind_another_writer_writes_nothing(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with open_store(store_url) as log, open_store(store_url) as other:
        async with other.transaction():
            await other.append(B, [pushed(0)])
            with pytest.raises(TimeoutError):  # asyncio.timeout still recognises its own cancellation
                async with asyncio.timeout(0.3):
                    await log.append(A, [pushed(n) for n in range(LARGE)])
        assert [stream for _, stream, *_ in await contents(log)] == [B]
        result = await log.append(A, [pushed(n) for n in range(LARGE)])
        assert result.positions == list(range(2, LARGE + 2))
    # Rolled back by the store itself, not left to the pool's reset (which logs an error).
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_hook_set_while_a_large_append_waits_sees_it(store_url: str) -> None:
    seen: list[str] = []

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        seen.extend(event.stream for event in recorded)
        return []

    async with open_store(store_url) as log:
        holding, release = asyncio.Event(), asyncio.Event()

        async def unit_of_work() -> None:
            async with log.transaction():  # holds this store's writer: the large append waits
                holding.set()
                await release.wait()

        holder = asyncio.ensure_future(unit_of_work())
        await holding.wait()
        large = asyncio.ensure_future(log.append(A, [pushed(n) for n in range(LARGE)]))
        await asyncio.sleep(0.05)
        log.set_inline_hook(hook)
        release.set()
        await holder
        await large
        assert seen == [A] * LARGE


async def test_postgres_hands_a_database_error_in_a_later_chunk_to_the_general_path(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unexpected, so logged once; the general path meets the same refusal and reports it; nothing is written."""
    refuse_300 = "ALTER TABLE events ADD CONSTRAINT refuse_300 CHECK (version <> 300) NOT VALID"
    async with open_store(postgres_store_url) as log:
        await log.apply([GuardedBatch(None, [Statement(refuse_300)])])
        with caplog.at_level(logging.WARNING, logger="eventstore"), pytest.raises(DatabaseError, match="refuse_300"):
            await log.append(A, [pushed(n) for n in range(LARGE)])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "general path" in warnings[0]
        assert await log.head_position() == 0
        await log.apply([GuardedBatch(None, [Statement("ALTER TABLE events DROP CONSTRAINT refuse_300")])])
        result = await log.append(A, [pushed(n) for n in range(LARGE)])
        assert result.positions == list(range(1, LARGE + 1))
        assert len(await contents(log)) == LARGE


async def test_events_repeated_across_chunks_of_one_append_are_refused(store_url: str) -> None:
    """A later chunk holding only earlier events of the same append is not an idempotent re-append."""
    async with open_store(store_url) as log:
        events = detections(0, 2 * STREAMED_APPEND_CHUNK)
        with pytest.raises(DuplicateEventError, match="appears twice"):
            await log.append(A, events + events[:44])
        ids = [uuid.uuid4() for _ in range(STREAMED_APPEND_CHUNK)]
        with pytest.raises(DuplicateEventError, match="appears twice"):
            await log.append(A, [pushed(n) for n in range(STREAMED_APPEND_CHUNK)] * 2, event_ids=ids * 2)
        assert await log.head_position() == 0


async def test_postgres_wakes_other_processes_subscribers_after_a_large_append(postgres_store_url: str) -> None:
    async with open_store(postgres_store_url) as reader, open_store(postgres_store_url) as writer:
        seen: list[int] = []

        async def follow() -> None:
            async for event in reader.subscribe(poll_interval=30):  # only NOTIFY wakes it in time
                seen.append(event.position)
                if len(seen) == LARGE:
                    return

        async with asyncio.timeout(20):
            following = asyncio.ensure_future(follow())
            await reader.wait_for_append(0.2)  # listening by now
            await writer.append(A, [pushed(n) for n in range(LARGE)])
            await following
        assert seen == list(range(1, LARGE + 1))


async def test_postgres_a_large_append_whose_connection_is_killed_fails_and_the_store_goes_on(
    postgres_store_url: str,
) -> None:
    async with open_store(postgres_store_url) as log, open_store(postgres_store_url) as other:
        async with other.transaction():
            await other.append(B, [pushed(0)])  # holds the append lock: the large append waits for it
            large = asyncio.ensure_future(log.append(A, [pushed(n) for n in range(LARGE)]))
            waiting: list[tuple[int]] = []
            async with asyncio.timeout(20):
                while not waiting:
                    await asyncio.sleep(0.05)
                    waiting = await other.query(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
            await other.query("SELECT pg_terminate_backend(?)", [waiting[0][0]])
            with pytest.raises(DatabaseError, match="ConnectionDoesNotExist"):  # not StoreClosed: the store is open
                await large
        result = await log.append(A, [pushed(n) for n in range(LARGE)])
        assert result.positions == list(range(2, LARGE + 2))
        assert len(await contents(log)) == LARGE + 1


async def test_postgres_a_lock_timeout_is_reported_once_and_leaves_nothing_behind(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """lock_timeout is the server giving up: raised at once, not retried on another path; no transaction left open."""
    caplog.set_level(logging.WARNING)
    impatient = open_store(postgres_store_url, server_settings={"lock_timeout": "300ms"})
    async with impatient as log, open_store(postgres_store_url) as other:
        async with other.transaction():
            await other.append(B, [pushed(0)])  # holds the append lock
            for events in ([pushed(1)], [pushed(n) for n in range(LARGE)]):
                with pytest.raises(DatabaseError, match="LockNotAvailable"):
                    await log.append(A, events)
            # Through the general path (an inline hook), two callers in one group: each gets the timeout.
            log.set_inline_hook(lambda recorded: [])
            outcomes = await asyncio.gather(
                log.append(A, [pushed(2)]), log.append("s:other", [pushed(3)]), return_exceptions=True
            )
            assert all(isinstance(o, DatabaseError) and "LockNotAvailable" in str(o) for o in outcomes), outcomes
            log.set_inline_hook(None)
            with pytest.raises(TimeoutError):  # a unit of work cancelled while it waits for the lock
                async with asyncio.timeout(0.1), log.transaction():
                    pass
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert [stream for _, stream, *_ in await contents(log)] == [B]
        await log.append(A, [pushed(n) for n in range(LARGE)])
