"""PostgreSQL's one-round-trip append (``eventstore_append``) against the general path.

Plain appends go through the server function; appends inside ``transaction()``
take the general path (BEGIN, lock, state read, INSERT, COMMIT). Both must
write byte-identical rows, and every case the function declines (a version
conflict, a recorded id) must end exactly as the general path decides it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    DatabaseError,
    DuplicateEventError,
    EventStore,
    GuardedBatch,
    SignalRejected,
    Statement,
    StoreClosed,
    WrongExpectedVersion,
    company_stream,
    open_store,
)
from eventstore.backends.postgres import PostgresBackend, _ended
from eventstore.model import ExpectedVersion
from tests.conftest import NO_POSTGRES, POSTGRES_URL, _drop_schema, detected

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
A = company_stream("domain:a.ai")
B = "company:bücher-straße"  # non-ASCII: the server hashes its UTF-8 bytes
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def urls() -> Iterator[Callable[[], str]]:
    """Fresh schema URLs; every schema made is dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    made: list[str] = []

    def new() -> str:
        assert POSTGRES_URL
        made.append(f"t_{uuid.uuid4().hex[:12]}")
        return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={made[-1]}"

    yield new
    for schema in made:
        _drop_schema(POSTGRES_URL, schema)


def stepping_clock() -> Callable[[], dt.datetime]:
    """The same instants for every store built from it, one of them stepping back."""
    steps = itertools.count()

    def now() -> dt.datetime:
        step = next(steps)
        return T0 + dt.timedelta(seconds=-5 if step == 3 else step)

    return now


def general_path_only(store: EventStore) -> None:
    """Make the store fail if its append ever takes the one-call path."""
    backend = store._backend
    assert isinstance(backend, PostgresBackend)

    async def refuse(*args: Any) -> Any:
        raise AssertionError("the one-call path was taken")

    backend._writes.append_in_one_call = refuse  # type: ignore[method-assign, assignment]


def one_call_only(store: EventStore) -> None:
    """Make the store fail if a plain append falls back to the general path."""
    backend = store._backend
    assert isinstance(backend, PostgresBackend)

    async def refuse(*args: Any) -> Any:
        raise AssertionError("the general path was taken")

    backend._writes.append_transaction = refuse  # type: ignore[method-assign, assignment]


def requests(round_: int) -> list[AppendRequest]:
    meta = {"correlation_id": f"c{round_}"}
    at = T0 + dt.timedelta(minutes=round_)
    return [
        AppendRequest(
            stream=A, events=[detected(detected_at=at), detected(detected_at=at.replace(second=1))], metadata=meta
        ),
        AppendRequest(stream=B, events=[detected("domain:b.ai", detected_at=at)], metadata=meta),
        AppendRequest(stream="company:empty", events=[], metadata=meta),
        AppendRequest(stream=A, events=[detected(detected_at=at.replace(second=2))], metadata=meta),
    ]


async def appended(url: str, *, one_call: bool) -> list[tuple[Any, ...]]:
    async with open_store(url, clock=stepping_clock(), actor="test") as store:
        (one_call_only if one_call else general_path_only)(store)
        for round_ in range(3):
            if one_call:
                await store.append_batch(requests(round_))
            else:
                async with store.transaction():
                    await store.append_batch(requests(round_))
        assert (await store.verify()).ok
        return [row async for row in store.raw_rows()]


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_the_server_function_writes_the_rows_the_general_path_writes(urls: Callable[[], str]) -> None:
    """Same requests, same clock: identical positions, versions, timestamps and hashes, byte for byte."""
    by_server = await appended(urls(), one_call=True)
    by_client = await appended(urls(), one_call=False)
    assert len(by_server) == 12
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in by_server] == [
        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in by_client
    ]
    recorded = [row[6] for row in by_server]
    assert recorded == sorted(recorded)  # the clock stepped back; recorded_at did not


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_one_call_results_match_the_requests(urls: Callable[[], str]) -> None:
    async with open_store(urls()) as store:
        one_call_only(store)
        results = await store.append_batch(requests(0))
        assert [(r.positions, r.version, r.written) for r in results] == [
            ([1, 2], 2, True),
            ([3], 1, True),
            ([], 0, False),
            ([4], 3, True),
        ]
        assert [(e.stream, e.version) async for e in store.read_all()] == [(A, 1), (A, 2), (B, 1), (A, 3)]


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_concurrent_appenders_share_one_call_and_get_their_own_results(urls: Callable[[], str]) -> None:
    async with open_store(urls()) as store:
        one_call_only(store)
        results: dict[int, list[int]] = {}

        async def append(i: int) -> None:
            at = T0 + dt.timedelta(seconds=i)
            results[i] = (await store.append(A if i % 2 else B, [detected(detected_at=at)])).positions

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(append, i)
        assert sorted(p for positions in results.values() for p in positions) == list(range(1, 17))
        versions = {stream: [e.version async for e in store.read_stream(stream)] for stream in (A, B)}
        assert versions == {A: list(range(1, 9)), B: list(range(1, 9))}
        assert (await store.verify()).ok


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
@pytest.mark.parametrize(
    ("expected", "actual"),
    [(NO_STREAM, 1), (0, 1), (5, 1), (2, 1)],
)
async def test_a_version_conflict_is_reported_by_the_general_path_and_writes_nothing(
    urls: Callable[[], str], expected: ExpectedVersion, actual: int
) -> None:
    async with open_store(urls()) as store:
        await store.append(A, [detected()])
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append(A, [detected(detected_at=T0)], expected_version=expected)
        assert (caught.value.expected, caught.value.actual) == (expected, actual)
        assert await store.head_position() == 1
        # Expectations that hold go through in one call.
        one_call_only(store)
        holding: tuple[ExpectedVersion, ...] = (STREAM_EXISTS, ANY, 3)
        for hour, ok in enumerate(holding, start=1):
            await store.append(A, [detected(detected_at=T0.replace(hour=hour))], expected_version=ok)
        assert await store.head_position() == 4


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_a_stream_written_by_another_store_is_numbered_from_the_database(urls: Callable[[], str]) -> None:
    url = urls()
    async with open_store(url) as first, open_store(url) as second:
        await first.append(A, [detected()])
        one_call_only(second)
        result = await second.append(A, [detected(detected_at=T0)], expected_version=1)
        assert (result.positions, result.version) == ([2], 2)
        assert (await first.verify()).ok


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_recorded_ids_fall_back_to_the_idempotent_answer(urls: Callable[[], str]) -> None:
    async with open_store(urls()) as store:
        first = await store.append(A, [detected(), detected(detected_at=T0)])
        again = await store.append(A, [detected(), detected(detected_at=T0)])
        assert (again.positions, again.written) == (first.positions, False)
        with pytest.raises(DuplicateEventError):
            await store.append(A, [detected(), detected(detected_at=T0.replace(hour=1))])
        assert await store.head_position() == 2
        assert (await store.verify()).ok


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_writers_in_several_stores_keep_one_chain(urls: Callable[[], str]) -> None:
    """Four stores (four connection pools) appending at once: contiguous positions, a chain that verifies."""
    url = urls()

    async def writer(index: int) -> None:
        async with open_store(url) as store:
            for batch in range(10):
                at = T0 + dt.timedelta(minutes=index, seconds=batch)
                events = [
                    detected(f"domain:w{index}.ai", detected_at=at + dt.timedelta(microseconds=i)) for i in range(5)
                ]
                await store.append(company_stream(f"domain:w{index}.ai"), events)

    async with anyio.create_task_group() as tg:
        for index in range(4):
            tg.start_soon(writer, index)
    async with open_store(url) as store:
        assert [e.position async for e in store.read_all()] == list(range(1, 201))
        assert (await store.verify()).ok


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_without_the_function_appends_still_work_and_the_log_says_why_once(
    urls: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store(urls()) as store:
        await store.apply([GuardedBatch(None, [Statement("DROP FUNCTION eventstore_append")])])
        with caplog.at_level(logging.WARNING, logger="eventstore"):
            for hour in range(3):
                await store.append(A, [detected(detected_at=T0.replace(hour=hour))])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "eventstore_append" in warnings[0] and "general path" in warnings[0]
        assert [e.version async for e in store.read_stream(A)] == [1, 2, 3]
        assert (await store.verify()).ok


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_a_connection_lost_after_the_call_committed_is_an_error_not_a_retry(
    urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply is lost, not the append: retrying would report a false duplicate, so the caller hears 'unknown'."""
    from asyncpg.connection import Connection

    fetchrow = Connection.fetchrow

    async def lose_the_reply(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        result = await fetchrow(self, query, *args, **kwargs)
        if "eventstore_append" in query:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return result

    async with open_store(urls()) as store:
        monkeypatch.setattr(Connection, "fetchrow", lose_the_reply)
        with pytest.raises(DatabaseError, match="ConnectionDoesNotExistError") as caught:
            await store.append(A, [SignalRejected(signal_id=1, reason="weak")])
        assert not isinstance(caught.value, DuplicateEventError)
        monkeypatch.undo()
        assert [e.type async for e in store.read_all()] == ["SignalRejected"]  # it was written, once


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_an_expected_version_beyond_bigint_is_a_plain_conflict(
    urls: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store(urls()) as store:
        with caplog.at_level(logging.WARNING, logger="eventstore"), pytest.raises(WrongExpectedVersion):
            await store.append(A, [detected()], expected_version=2**63)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert await store.head_position() == 0


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_appends_go_on_after_the_server_ends_the_appending_connection(urls: Callable[[], str]) -> None:
    url = urls()
    async with open_store(url) as store:
        await store.append(A, [detected()])
        backend = store._backend
        assert isinstance(backend, PostgresBackend) and backend._append_conn is not None
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", backend._append_conn.get_server_pid())
        finally:
            await conn.close()
        for _ in range(1000):  # until asyncpg has noticed the closed socket
            if _ended(backend._append_conn):
                break
            await anyio.sleep(0.01)
        await store.append(A, [detected(detected_at=T0)])
        assert [e.version async for e in store.read_stream(A)] == [1, 2]


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_a_pool_of_one_connection_is_never_held_back_from_readers(urls: Callable[[], str]) -> None:
    async with open_store(urls(), max_connections=1) as store:
        with anyio.fail_after(10):
            await store.append(A, [detected()])
            assert [e.version async for e in store.read_stream(A)] == [1]
            with pytest.raises(WrongExpectedVersion):  # declined by the function, decided by the general path
                await store.append(A, [detected(detected_at=T0)], expected_version=5)
            await store.append(A, [detected(detected_at=T0)], expected_version=1)
            assert await store.head_position() == 2


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_closing_waits_for_an_append_in_flight(urls: Callable[[], str]) -> None:
    """aclose() lets a running append finish on its connection, then returns every connection to the pool."""
    from eventstore.backends.pgtext import parse_url

    url = urls()
    store = await open_store(url).open()
    await store.append(A, [detected()])
    backend = store._backend
    assert isinstance(backend, PostgresBackend)
    blocker = await asyncpg.connect(parse_url(url).dsn)
    outcome: dict[str, object] = {}

    async def append() -> None:
        try:
            outcome["result"] = (await store.append(A, [detected(detected_at=T0)])).positions
        except Exception as exc:  # recorded and asserted below
            outcome["result"] = exc

    try:
        with anyio.fail_after(20):
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT pg_advisory_xact_lock($1, $2)", *backend._lock_keys)
            async with anyio.create_task_group() as tg:
                tg.start_soon(append)
                for _ in range(500):  # until the append waits for the lock the blocker holds
                    waiting = await blocker.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                    if waiting:
                        break
                    await anyio.sleep(0.01)
                tg.start_soon(store.aclose)
                await anyio.sleep(0.2)
                await blocker.execute("COMMIT")
    finally:
        await blocker.close()
    assert outcome["result"] == [2]  # it finished before the store closed
    async with open_store(url) as reopened:
        assert await reopened.head_position() == 2


@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
async def test_closing_with_an_append_queued_returns(urls: Callable[[], str]) -> None:
    store = await open_store(urls(), min_connections=2).open()
    await store.append(A, [detected()])
    outcome: list[object] = []

    async def append() -> None:
        try:
            outcome.append((await store.append(A, [detected(detected_at=T0)])).positions)
        except StoreClosed as exc:
            outcome.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(append)
            await anyio.lowlevel.checkpoint()  # the append is queued for the group commit
            await store.aclose()
    assert outcome == [[2]] or isinstance(outcome[0], StoreClosed)
