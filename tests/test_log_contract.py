"""The log's contract (DESIGN.md "Guarantees of the log", "Conventions"), run on every backend."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    DuplicateEventError,
    EventStore,
    NotFound,
    RecordedEvent,
    SchemaVersionError,
    SignalPushed,
    SignalRejected,
    StoreClosed,
    SuppressionSynced,
    WrongExpectedVersion,
    company_stream,
    open_store,
)
from eventstore.events import Event
from eventstore.model import ExpectedVersion, Row
from tests.conftest import FakeClock, detected

pytestmark = pytest.mark.anyio

A = company_stream("domain:a.ai")
B = company_stream("domain:b.ai")
C = "other:c"


def pushed(signal_id: int = 1, page: str = "page-1") -> SignalPushed:
    return SignalPushed(signal_id=signal_id, notion_page_id=page, metadata={"by": "gate"})


def rejected(signal_id: int = 1, reason: str = "duplicate") -> SignalRejected:
    return SignalRejected(signal_id=signal_id, reason=reason)


def synced(key: str = "domain:a.ai") -> SuppressionSynced:
    return SuppressionSynced(
        canonical_key=key, notion_page_id="p", status="active", expires_at=dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    )


def pushes(n: int, start: int = 1) -> list[Event]:
    return [pushed(i) for i in range(start, start + n)]


async def everything(log: EventStore, **filters: Any) -> list[RecordedEvent]:
    return [event async for event in log.read_all(**filters)]


async def stream_of(log: EventStore, stream: str, **options: Any) -> list[RecordedEvent]:
    return [event async for event in log.read_stream(stream, **options)]


def assert_ordered(positions: Sequence[int], dialect: str) -> None:
    """Strictly increasing; on SQLite also contiguous (DESIGN.md guarantee 5)."""
    assert list(positions) == sorted(set(positions))
    if dialect == "sqlite" and positions:
        assert list(positions) == list(range(positions[0], positions[0] + len(positions)))


# -- the envelope -----------------------------------------------------------


async def test_recorded_events_carry_the_full_envelope(store_url: str, clock: FakeClock) -> None:
    async with open_store(store_url, clock=clock, actor="collector") as log:
        result = await log.append(A, [detected("domain:a.ai")], metadata={"causation_id": "c-1", "source": "gh"})
        [event] = await everything(log)
    assert result.positions == [1]
    assert result.version == 1
    assert result.written
    assert event.position == 1
    assert event.stream == A
    assert event.version == 1
    assert event.type == "SignalDetected"
    assert event.schema_version == 1
    assert event.recorded_at == clock.now
    assert event.data == detected("domain:a.ai")
    assert isinstance(event.event_id, uuid.UUID)
    assert event.metadata["actor"] == event.actor == "collector"
    assert event.metadata["causation_id"] == "c-1"
    assert event.metadata["source"] == "gh"
    uuid.UUID(event.metadata["correlation_id"])
    assert event.correlation_id == event.metadata["correlation_id"]
    assert len(event.hash) == 32


async def test_actor_defaults_to_the_store_actor_and_can_be_given_per_append(store_url: str) -> None:
    async with open_store(store_url, actor="default-actor") as log:
        await log.append(A, [pushed()])
        await log.append(A, [pushed(2)], metadata={"actor": "gate"})
        await log.append(A, [pushed(3)], metadata={"correlation_id": "corr"})
        events = await everything(log)
    assert [e.actor for e in events] == ["default-actor", "gate", "default-actor"]
    assert events[2].correlation_id == "corr"


async def test_one_append_shares_one_correlation_id(log: EventStore) -> None:
    await log.append(A, pushes(3))
    events = await everything(log)
    assert len({e.correlation_id for e in events}) == 1
    await log.append(A, pushes(1))
    assert len({e.correlation_id for e in await everything(log)}) == 2


async def test_positions_and_versions_start_at_one_and_are_contiguous(log: EventStore) -> None:
    first = await log.append(A, pushes(3))
    second = await log.append(B, pushes(2))
    third = await log.append(A, pushes(1))
    assert first.positions == [1, 2, 3]
    assert first.version == 3
    assert second.positions == [4, 5]
    assert second.version == 2
    assert third.positions == [6]
    assert third.version == 4
    events = await everything(log)
    assert [e.position for e in events] == [1, 2, 3, 4, 5, 6]
    assert [(e.stream, e.version) for e in events] == [(A, 1), (A, 2), (A, 3), (B, 1), (B, 2), (A, 4)]
    assert await log.head_position() == 6
    assert await log.stream_version(A) == 4
    assert await log.stream_version(C) == 0


async def test_recorded_at_never_decreases_even_if_the_clock_does(store_url: str, clock: FakeClock) -> None:
    async with open_store(store_url, clock=clock) as log:
        await log.append(A, pushes(1))
        clock.advance(hours=-1)
        await log.append(A, pushes(1))
        clock.advance(hours=2)
        await log.append(A, pushes(1))
        stamps = [e.recorded_at for e in await everything(log)]
    assert stamps[0] == stamps[1] < stamps[2] == clock.now


async def test_every_event_type_round_trips_through_the_store(log: EventStore) -> None:
    events: list[Event] = [detected("domain:a.ai"), pushed(1), rejected(1), synced()]
    await log.append(A, events)
    assert [e.data for e in await everything(log)] == events
    assert [e.type for e in await everything(log)] == [
        "SignalDetected",
        "SignalPushed",
        "SignalRejected",
        "SuppressionSynced",
    ]


# -- atomic batches and units of work ----------------------------------------


async def test_append_batch_spans_streams_atomically(log: EventStore) -> None:
    results = await log.append_batch(
        [AppendRequest(stream=A, events=pushes(2)), AppendRequest(stream=B, events=pushes(1), expected_version=0)]
    )
    assert [r.positions for r in results] == [[1, 2], [3]]
    with pytest.raises(WrongExpectedVersion):
        await log.append_batch(
            [
                AppendRequest(stream=C, events=pushes(5)),
                AppendRequest(stream=A, events=pushes(1), expected_version=NO_STREAM),
            ]
        )
    assert await log.head_position() == 3
    assert await stream_of(log, C) == []


async def test_a_batch_with_a_repeated_id_writes_nothing(log: EventStore) -> None:
    twice = uuid.uuid4()
    with pytest.raises(DuplicateEventError):
        await log.append(A, pushes(3), event_ids=[uuid.uuid4(), twice, twice])
    assert await log.head_position() == 0


async def test_transaction_commits_appends_to_several_streams_together(log: EventStore) -> None:
    async with log.transaction():
        a = await log.append(A, pushes(2), expected_version=NO_STREAM)
        b = await log.append(B, pushes(1), expected_version=NO_STREAM)
        c = await log.append(A, pushes(1), expected_version=2)
        assert [e.position for e in await stream_of(log, A)] == [1, 2, 4]  # reads see the unit's own writes
    assert (a.positions, b.positions, c.positions) == ([1, 2], [3], [4])
    assert [(e.stream, e.version) for e in await everything(log)] == [(A, 1), (A, 2), (B, 1), (A, 3)]
    assert (await log.verify()).ok


async def test_transaction_rolls_back_everything_on_exception(log: EventStore) -> None:
    await log.append(C, pushes(1))
    with pytest.raises(RuntimeError, match="boom"):
        async with log.transaction():
            await log.append(A, pushes(2))
            await log.append(B, pushes(1))
            raise RuntimeError("boom")
    assert [e.stream for e in await everything(log)] == [C]
    assert await log.stream_version(A) == 0
    after = await log.append(A, pushes(1), expected_version=NO_STREAM)
    assert_ordered([1, *after.positions], log.dialect)
    assert (await log.verify()).ok


async def test_a_failed_append_inside_a_transaction_can_be_caught(log: EventStore) -> None:
    async with log.transaction():
        await log.append(A, pushes(1))
        with pytest.raises(WrongExpectedVersion):
            await log.append(B, pushes(3), expected_version=5)
        await log.append(B, pushes(1))
    assert [(e.stream, e.version) for e in await everything(log)] == [(A, 1), (B, 1)]


async def test_cancelled_transaction_writes_nothing(log: EventStore) -> None:
    with anyio.CancelScope() as scope:
        async with log.transaction():
            await log.append(A, pushes(1))
            scope.cancel()
            await anyio.sleep(1)
    assert await log.head_position() == 0
    assert (await log.append(A, pushes(1))).positions[0] >= 1


async def test_nested_transaction_rolls_back_only_its_part(log: EventStore) -> None:
    async with log.transaction():
        await log.append(A, pushes(1))
        with pytest.raises(KeyError):
            async with log.transaction():
                await log.append(B, pushes(1))
                raise KeyError("inner")
        await log.append(C, pushes(1))
    assert [e.stream for e in await everything(log)] == [A, C]


async def test_other_tasks_do_not_see_an_open_transaction(log: EventStore) -> None:
    seen: list[int] = []
    appended, looked = anyio.Event(), anyio.Event()

    async def outsider() -> None:  # started outside the unit of work
        await appended.wait()
        seen.append(len(await everything(log)))
        looked.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(outsider)
        async with log.transaction():
            await log.append(A, pushes(1))
            appended.set()
            with anyio.fail_after(10):
                await looked.wait()
    assert seen == [0]
    assert len(await everything(log)) == 1


# -- optimistic concurrency --------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "current", "ok"),
    [
        (ANY, 0, True),
        (ANY, 2, True),
        (NO_STREAM, 0, True),
        (NO_STREAM, 2, False),
        (0, 0, True),
        (0, 2, False),
        (STREAM_EXISTS, 0, False),
        (STREAM_EXISTS, 2, True),
        (2, 2, True),
        (1, 2, False),
        (3, 2, False),
        (1, 0, False),
    ],
)
async def test_expected_version(log: EventStore, expected: ExpectedVersion, current: int, ok: bool) -> None:
    if current:
        await log.append(A, pushes(current))
    await log.append(B, pushes(1))
    head = await log.head_position()
    if ok:
        result = await log.append(A, pushes(2, start=10), expected_version=expected)
        assert result.version == current + 2
        assert result.written
        return
    with pytest.raises(WrongExpectedVersion) as caught:
        await log.append(A, pushes(2, start=10), expected_version=expected)
    assert caught.value.stream == A
    assert caught.value.expected == expected
    assert caught.value.actual == current
    assert await log.head_position() == head
    assert await log.stream_version(A) == current


async def test_wrong_expected_version_names_stream_and_versions(log: EventStore) -> None:
    await log.append(A, pushes(5))
    with pytest.raises(WrongExpectedVersion) as caught:
        await log.append(A, pushes(1), expected_version=3)
    assert str(caught.value) == f"Wrong expected version: 3 (Stream: {A}, Stream Version: 5)"
    with pytest.raises(WrongExpectedVersion, match=f"STREAM_EXISTS.*{B}.*no stream"):
        await log.append(B, pushes(1), expected_version=STREAM_EXISTS)


async def test_only_one_of_many_concurrent_creators_wins(log: EventStore) -> None:
    outcomes: list[str] = []

    async def create(i: int) -> None:
        try:
            await log.append(A, [pushed(i)], expected_version=NO_STREAM)
            outcomes.append("ok")
        except WrongExpectedVersion:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for i in range(1, 11):
            tg.start_soon(create, i)
    assert sorted(outcomes) == ["conflict"] * 9 + ["ok"]
    assert len(await everything(log)) == 1
    assert (await log.verify()).ok


async def test_concurrent_appenders_in_one_process_each_get_their_own_positions(log: EventStore) -> None:
    results: dict[int, list[int]] = {}

    async def appender(i: int) -> None:
        for n in range(5):
            result = await log.append(f"s:{i}", [pushed(n + 1)], expected_version=n)
            results.setdefault(i, []).extend(result.positions)

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(appender, i)
    positions = sorted(p for ps in results.values() for p in ps)
    assert positions == list(range(1, 81))
    for i, ps in results.items():
        assert [e.position for e in await stream_of(log, f"s:{i}")] == ps
    assert (await log.verify()).ok


# -- idempotent appends ------------------------------------------------------


async def test_reappending_known_ids_returns_the_original_positions(log: EventStore) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    first = await log.append(A, pushes(2), event_ids=ids, expected_version=NO_STREAM)
    await log.append(A, pushes(1, start=9))
    again = await log.append(A, pushes(2), event_ids=ids, expected_version=NO_STREAM)
    assert again.positions == first.positions == [1, 2]
    assert not again.written
    assert again.version == 3  # the stream's current version
    for expected in (ANY, STREAM_EXISTS, 0, 1, 3, 99):
        assert (await log.append(A, pushes(2), event_ids=ids, expected_version=expected)).positions == [1, 2]
    assert await log.head_position() == 3
    assert [e.event_id for e in await stream_of(log, A, limit=2)] == ids


async def test_idempotent_reappend_ignores_metadata(log: EventStore) -> None:
    ids = [uuid.uuid4()]
    await log.append(A, pushes(1), event_ids=ids, metadata={"actor": "first"})
    again = await log.append(A, pushes(1), event_ids=ids, metadata={"actor": "second"})
    assert not again.written
    assert [e.actor for e in await everything(log)] == ["first"]


async def test_known_id_with_different_content_is_a_duplicate_error(log: EventStore) -> None:
    event_id = uuid.uuid4()
    await log.append(A, [pushed(1)], event_ids=[event_id])
    with pytest.raises(DuplicateEventError, match=str(event_id)):
        await log.append(A, [pushed(2)], event_ids=[event_id])
    with pytest.raises(DuplicateEventError, match=str(event_id)):
        await log.append(B, [pushed(1)], event_ids=[event_id])  # same content, other stream
    with pytest.raises(DuplicateEventError):
        await log.append(A, [rejected(1)], event_ids=[event_id])
    assert await log.head_position() == 1


async def test_mixing_known_and_new_ids_is_a_duplicate_error(log: EventStore) -> None:
    known = uuid.uuid4()
    await log.append(A, [pushed(1)], event_ids=[known])
    with pytest.raises(DuplicateEventError, match="mixes"):
        await log.append(A, [pushed(1), pushed(2)], event_ids=[known, uuid.uuid4()])
    with pytest.raises(DuplicateEventError):
        await log.append(A, [pushed(2), pushed(1)], event_ids=[uuid.uuid4(), known])
    assert await log.head_position() == 1


async def test_a_duplicate_signal_detected_is_a_no_op(log: EventStore) -> None:
    first = await log.append(A, [detected("domain:a.ai")], expected_version=NO_STREAM)
    again = await log.append(A, [detected("domain:a.ai")], expected_version=NO_STREAM)
    assert again.positions == first.positions
    assert not again.written
    [event] = await everything(log)
    assert event.event_id.int >> 80 == int(detected().detected_at.timestamp() * 1000)


async def test_a_detection_with_the_same_key_but_other_content_is_a_duplicate_error(log: EventStore) -> None:
    await log.append(A, [detected("domain:a.ai")])
    with pytest.raises(DuplicateEventError):
        await log.append(A, [detected("domain:a.ai", confidence=0.2)])
    assert await log.head_position() == 1


async def test_concurrent_duplicate_detections_are_written_once(log: EventStore) -> None:
    results: list[list[int]] = []

    async def save() -> None:
        results.append((await log.append(A, [detected("domain:a.ai")])).positions)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(save)
    assert results == [[1]] * 12
    assert await log.head_position() == 1


async def test_explicit_ids_are_stored(log: EventStore) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    await log.append(A, pushes(3), event_ids=ids)
    assert [e.event_id for e in await everything(log)] == ids
    assert (await log.get_event(ids[1])).position == 2


# -- reading -----------------------------------------------------------------


async def test_read_stream_forward_backward_from_version_and_limit(log: EventStore) -> None:
    await log.append(A, pushes(3))
    await log.append(B, pushes(2))
    await log.append(A, pushes(2, start=4))

    def versions(events: list[RecordedEvent]) -> list[int]:
        return [e.version for e in events]

    assert versions(await stream_of(log, A)) == [1, 2, 3, 4, 5]
    assert [e.position for e in await stream_of(log, A)] == [1, 2, 3, 6, 7]
    assert versions(await stream_of(log, A, backwards=True)) == [5, 4, 3, 2, 1]
    assert versions(await stream_of(log, A, from_version=3)) == [3, 4, 5]
    assert versions(await stream_of(log, A, from_version=3, backwards=True)) == [3, 2, 1]
    assert versions(await stream_of(log, A, limit=2)) == [1, 2]
    assert versions(await stream_of(log, A, from_version=2, limit=2)) == [2, 3]
    assert versions(await stream_of(log, A, backwards=True, limit=2)) == [5, 4]
    assert versions(await stream_of(log, A, from_version=4, backwards=True, limit=10)) == [4, 3, 2, 1]
    assert versions(await stream_of(log, A, from_version=6)) == []
    assert versions(await stream_of(log, A, limit=0)) == []
    assert await stream_of(log, "company:unknown") == []
    assert all(e.stream == A for e in await stream_of(log, A))


async def test_read_all_from_position_limit_types_and_prefix(log: EventStore) -> None:
    await log.append(A, [detected("domain:a.ai"), pushed(1)])
    await log.append(B, [detected("domain:b.ai"), rejected(3)])
    await log.append(C, [synced("c")])
    await log.append(A, [synced("domain:a.ai")])

    def positions(events: list[RecordedEvent]) -> list[int]:
        return [e.position for e in events]

    assert positions(await everything(log)) == [1, 2, 3, 4, 5, 6]
    assert positions(await everything(log, from_position=4)) == [4, 5, 6]  # inclusive
    assert positions(await everything(log, from_position=0)) == [1, 2, 3, 4, 5, 6]
    assert positions(await everything(log, from_position=7)) == []
    assert positions(await everything(log, limit=2)) == [1, 2]
    assert positions(await everything(log, from_position=3, limit=2)) == [3, 4]
    assert positions(await everything(log, types=["SignalDetected"])) == [1, 3]
    assert positions(await everything(log, types=["SignalPushed", "SignalRejected"])) == [2, 4]
    assert positions(await everything(log, types=[])) == []
    assert positions(await everything(log, stream_prefix="company:")) == [1, 2, 3, 4, 6]
    assert positions(await everything(log, stream_prefix="company:domain:b")) == [3, 4]
    assert positions(await everything(log, stream_prefix="other")) == [5]
    assert positions(await everything(log, stream_prefix="nothing")) == []
    assert positions(await everything(log, types=["SuppressionSynced"], stream_prefix="company:")) == [6]
    assert positions(await everything(log, types=["SignalDetected"], limit=1, from_position=2)) == [3]


async def test_stream_prefix_is_a_literal_prefix(log: EventStore) -> None:
    await log.append("a_b:1", pushes(1))
    await log.append("axb:1", pushes(1))
    await log.append("a%:1", pushes(1))
    await log.append("a", pushes(1))
    assert [e.stream for e in await everything(log, stream_prefix="a_")] == ["a_b:1"]
    assert [e.stream for e in await everything(log, stream_prefix="a%")] == ["a%:1"]
    assert len(await everything(log, stream_prefix="a")) == 4


async def test_reads_from_beyond_what_a_database_can_hold_find_nothing_rather_than_fail(log: EventStore) -> None:
    await log.append(A, pushes(2))
    huge = 2**70  # positions and versions are 64-bit in both databases
    assert [e async for e in log.read_all(from_position=huge)] == []
    assert [e async for e in log.read_stream(A, from_version=huge)] == []
    assert [e.version async for e in log.read_stream(A, from_version=huge, backwards=True)] == [2, 1]
    assert [e.version async for e in log.read_stream(A, from_version=-huge)] == [1, 2]
    assert [e.position for e in await log.get_events([huge, 2, -huge])] == [2]


async def test_reads_page_through_large_logs_in_order(log: EventStore) -> None:
    for start in range(0, 4500, 900):
        await log.append_batch(
            [
                AppendRequest(stream=A, events=pushes(450, start=start + 1)),
                AppendRequest(stream=B, events=pushes(450, start=start + 451)),
            ]
        )
    assert [e.position for e in await everything(log)] == list(range(1, 4501))
    assert [e.position for e in await everything(log, from_position=1999, limit=2003)] == list(range(1999, 4002))
    assert [e.version for e in await stream_of(log, A)] == list(range(1, 2251))
    assert [e.version for e in await stream_of(log, B, backwards=True)] == list(range(2250, 0, -1))
    assert [e.version for e in await stream_of(log, A, from_version=10, limit=2001)] == list(range(10, 2011))
    assert len(await everything(log, stream_prefix=B)) == 2250
    assert (await log.verify()).events_checked == 4500


async def test_get_events_get_event_and_position_at(store_url: str, clock: FakeClock) -> None:
    async with open_store(store_url, clock=clock) as log:
        start = clock.now
        for i in range(5):
            await log.append(A, pushes(1, start=i + 1))
            clock.advance(minutes=1)
        assert [e.position for e in await log.get_events([4, 2, 99])] == [2, 4]
        event = (await log.get_events([3]))[0]
        assert await log.get_event(event.event_id) == event
        with pytest.raises(NotFound):
            await log.get_event(uuid.uuid4())
        assert await log.position_at(start - dt.timedelta(seconds=1)) == 0
        assert await log.position_at(start) == 1
        assert await log.position_at(start + dt.timedelta(minutes=2, seconds=30)) == 3
        assert await log.position_at(start + dt.timedelta(minutes=4)) == 5  # inclusive
        assert await log.position_at(start + dt.timedelta(days=1)) == 5
        with pytest.raises(ValueError, match="timezone"):
            await log.position_at(dt.datetime(2026, 1, 1))


async def test_head_position_of_an_empty_log_is_zero(log: EventStore) -> None:
    assert await log.head_position() == 0
    assert await everything(log) == []
    report = await log.verify()
    assert report.ok
    assert report.events_checked == 0


# -- subscriptions -----------------------------------------------------------


async def test_subscribe_catches_up_then_delivers_live_events(log: EventStore) -> None:
    await log.append(A, pushes(3))
    seen: list[int] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for event in log.subscribe(from_position=2):
                    seen.append(event.position)
                    if event.position == 8:
                        return

            tg.start_soon(follow)
            for i in range(5):
                await log.append(B if i % 2 else A, pushes(1))
                await anyio.sleep(0.001 * i)
    assert seen == [2, 3, 4, 5, 6, 7, 8]


async def test_subscribe_filters_by_type_and_prefix_without_skipping(log: EventStore) -> None:
    await log.append(A, [detected("domain:a.ai"), pushed(1)])
    seen: list[int] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for event in log.subscribe(types=["SignalPushed"], stream_prefix="company:"):
                    seen.append(event.position)
                    if len(seen) == 4:
                        return

            tg.start_soon(follow)
            await log.append(C, [pushed(5)])  # other prefix
            await log.append(B, [detected("domain:b.ai")])  # other type
            await log.append(B, [pushed(2), pushed(3)])
            await anyio.sleep(0.01)
            for i in range(20):
                await log.append(C, [synced(f"k{i}")])
            await log.append(A, [pushed(4)])
    assert seen == [2, 5, 6, 27]


async def test_subscribers_never_skip_or_repeat_while_many_tasks_append(log: EventStore) -> None:
    total = 300
    seen: list[list[int]] = [[], []]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:

            async def follow(index: int, poll: float) -> None:
                async for event in log.subscribe(poll_interval=poll):
                    seen[index].append(event.position)
                    if event.position == total:
                        return

            tg.start_soon(follow, 0, 0.001)
            tg.start_soon(follow, 1, 0.05)

            async def appender(i: int) -> None:
                for n in range(total // 10):
                    await log.append(f"s:{i}", [pushed(n + 1)])

            async with anyio.create_task_group() as writers:
                for i in range(10):
                    writers.start_soon(appender, i)
    assert seen[0] == seen[1] == list(range(1, total + 1))


async def test_subscription_ends_when_the_store_closes(store_url: str) -> None:
    seen: list[int] = []
    with anyio.fail_after(30):
        async with open_store(store_url) as log:
            await log.append(A, pushes(1))
            async with anyio.create_task_group() as tg:

                async def follow() -> None:
                    async for event in log.subscribe():
                        seen.append(event.position)
                        if len(seen) == 1:
                            await log.aclose()

                tg.start_soon(follow)
    assert seen == [1]


# -- integrity and lifecycle ---------------------------------------------------


async def test_verify_passes_on_an_untouched_log(log: EventStore) -> None:
    for i in range(10):
        await log.append(A if i % 2 else B, pushes(i + 1))
    report = await log.verify()
    assert report.ok
    assert report.first_bad_position is None
    assert report.events_checked == report.head_position == 55
    assert str(report).startswith("OK")


async def test_the_hash_chain_links_each_event_to_the_previous(log: EventStore) -> None:
    from eventstore.codec import GENESIS_HASH, chain_hash

    await log.append(A, pushes(3))
    await log.append(B, [detected("domain:b.ai")])
    previous = GENESIS_HASH
    rows: list[Row] = [row async for row in log.raw_rows()]
    for row, event in zip(rows, await everything(log), strict=True):
        previous = chain_hash(previous, row)
        assert previous == event.hash == bytes(row[9])


async def test_using_a_closed_store_is_an_error(store_url: str) -> None:
    log = open_store(store_url)
    with pytest.raises(StoreClosed):
        await log.append(A, pushes(1))
    async with log:
        await log.append(A, pushes(1))
    with pytest.raises(StoreClosed):
        await log.append(A, pushes(1))
    with pytest.raises(StoreClosed):
        await log.head_position()
    await log.aclose()  # idempotent


async def test_data_survives_reopening(store_url: str) -> None:
    async with open_store(store_url) as log:
        await log.append(A, [detected("domain:a.ai"), pushed(1)])
        before = await everything(log)
    async with open_store(store_url) as log:
        assert await everything(log) == before
        result = await log.append(A, [rejected(1)], expected_version=2)
        assert result.positions == [3]
        assert (await log.verify()).ok


# -- schema evolution ----------------------------------------------------------


class NoteV1(Event, frozen=True, kw_only=True, tag="Note"):
    text: str


class NoteV2(Event, frozen=True, kw_only=True, tag="Note"):
    schema_version: ClassVar[int] = 2
    body: str
    author: str = "nobody"


def upcast_note(data: dict[str, Any]) -> dict[str, Any]:
    return {"body": data["text"].upper(), "author": "unknown"}


async def test_old_events_are_upcast_on_read_and_stored_bytes_never_change(store_url: str) -> None:
    async with open_store(store_url, event_types=[NoteV1]) as log:
        await log.append("notes:1", [NoteV1(text="hello")])
        stored = [row async for row in log.raw_rows()]
    assert stored[0][5] == 1
    upcasters = {("Note", 1): upcast_note}
    async with open_store(store_url, event_types=[NoteV2], upcasters=upcasters) as log:
        await log.append("notes:1", [NoteV2(body="new", author="me")])
        old, new = await everything(log)
        assert old.data == NoteV2(body="HELLO", author="unknown")
        assert old.schema_version == 1
        assert new.data == NoteV2(body="new", author="me")
        assert new.schema_version == 2
        assert (await stream_of(log, "notes:1"))[0].data == old.data
        assert (await log.get_event(old.event_id)).data == old.data
        assert [row async for row in log.raw_rows()][:1] == stored
        assert (await log.verify()).ok


async def test_an_event_without_an_upcaster_path_is_a_schema_version_error(store_url: str) -> None:
    async with open_store(store_url, event_types=[NoteV1]) as log:
        await log.append("notes:1", [NoteV1(text="hello")])
    async with open_store(store_url, event_types=[NoteV2]) as log:
        with pytest.raises(SchemaVersionError, match="upcaster"):
            await everything(log)
        report = await log.verify()
        assert not report.ok
        assert report.first_bad_position == 1


async def test_an_append_cancelled_while_waiting_is_never_written_later(log: EventStore) -> None:
    inside, release = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:

        async def hold_the_writer() -> None:
            async with log.transaction():
                inside.set()
                await release.wait()

        tg.start_soon(hold_the_writer)
        await inside.wait()
        with anyio.move_on_after(0.05) as scope:
            await log.append("cancelled", pushes(1))
        assert scope.cancelled_caught
        release.set()
    await log.append(A, pushes(1))
    assert [e.stream for e in await everything(log)] == [A]
