"""PostgreSQL: what a failed, timed-out, cancelled or lost statement leaves behind.

Every path rolls back what it began (even a BEGIN the client does not yet know
ran), reports the error that happened rather than one from cleaning up, keeps a
unit of work's connection usable, and fails only the callers whose own
statements failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from eventstore import DatabaseError, EventStore, GuardedBatch, RecordedEvent, SignalPushed, Statement, open_store
from eventstore.backends import pgops
from eventstore.backends.pgops import undo
from tests.conftest import POSTGRES_URL

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


@contextlib.asynccontextmanager
async def row_held(log: EventStore, select_for_update: str) -> AsyncIterator[None]:
    """Another session holds the rows ``select_for_update`` locks, in the store's schema, until exit."""
    assert POSTGRES_URL
    holder = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": log.backend.schema})  # type: ignore[attr-defined]
    try:
        await holder.execute(f"BEGIN; {select_for_update}")
        yield
    finally:
        await holder.close()


async def appending(log: EventStore, streams: Sequence[str]) -> list[object]:
    """One event appended to each of ``streams`` concurrently (one group): each outcome, or its error."""
    appends = (log.append(stream, [pushed(1)]) for stream in streams)
    return await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 60)


async def test_a_hook_timing_out_for_one_caller_fails_only_that_caller(postgres_store_url: str) -> None:
    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        bump = "UPDATE seen SET n = n + 1 WHERE stream = ?"
        return [GuardedBatch(None, [Statement(bump, [event.stream])]) for event in recorded]

    async with open_store(postgres_store_url, server_settings={"lock_timeout": "300ms"}) as log:
        create = "CREATE TABLE seen (stream text PRIMARY KEY, n integer NOT NULL)"
        insert = "INSERT INTO seen VALUES ('company:taken', 0)"
        await log.apply([GuardedBatch(None, [Statement(create), Statement(insert)])])
        log.set_inline_hook(hook)
        async with row_held(log, "SELECT n FROM seen WHERE stream = 'company:taken' FOR UPDATE"):
            outcomes = await appending(log, ["company:a", "company:taken", "company:b"])
        assert isinstance(outcomes[1], DatabaseError) and "LockNotAvailable" in str(outcomes[1])
        assert [type(outcomes[0]).__name__, type(outcomes[2]).__name__] == ["AppendResult", "AppendResult"]
        assert [e.stream async for e in log.read_all()] == ["company:a", "company:b"]


async def test_a_lost_connection_reports_itself_and_nothing_else(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with open_store(postgres_store_url) as log, open_store(postgres_store_url) as other:
        sleeping = asyncio.ensure_future(log.apply([GuardedBatch(None, [Statement("SELECT pg_sleep(5)")])]))
        pids: list[tuple[int]] = []
        async with asyncio.timeout(20):
            while not pids:
                await asyncio.sleep(0.05)
                pids = await other.query("SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'")
        await other.query("SELECT pg_terminate_backend(?)", [pids[0][0]])
        with pytest.raises(DatabaseError, match="ConnectionDoesNotExist"):
            await sleeping
        assert warnings(caplog) == []
        await log.append("s:after", [pushed(1)])  # the store goes on


async def test_a_failed_statement_in_a_unit_of_work_is_reported_at_commit_without_noise(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with open_store(postgres_store_url) as log:
        with pytest.raises(DatabaseError, match="rolled back, not committed"):
            async with log.transaction():
                with pytest.raises(DatabaseError, match="DivisionByZero"):
                    await log.query("SELECT 1/0")
                with pytest.raises(DatabaseError, match="InFailedSQLTransaction"):
                    await log.append("s:a", [pushed(1)])  # the unit of work is aborted already
        assert warnings(caplog) == []
        assert await log.head_position() == 0


async def test_a_statement_cancelled_twice_in_a_unit_of_work_keeps_its_connection(postgres_store_url: str) -> None:
    """The second cancellation lands during the rollback to the statement's savepoint: the unit of work goes on."""
    async with open_store(postgres_store_url) as log:
        async with log.transaction():
            await log.append("s:a", [pushed(1)])
            task = asyncio.ensure_future(log.apply([GuardedBatch(None, [Statement("SELECT pg_sleep(0.5)")])]))
            await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await log.append("s:b", [pushed(2)])
        assert [e.stream async for e in log.read_all()] == ["s:a", "s:b"]


async def test_in_a_group_retried_caller_by_caller_only_callers_needing_the_held_row_time_out(
    postgres_store_url: str,
) -> None:
    """The caller whose hook failed the group is not run again; bystanders still succeed."""
    hooked: list[str] = []

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        hooked.extend(event.stream for event in recorded)
        bump = "UPDATE seen SET n = n + 1 WHERE k = ?"
        return [GuardedBatch(None, [Statement(bump, [event.stream.split(":")[0]])]) for event in recorded]

    async with open_store(postgres_store_url, server_settings={"lock_timeout": "200ms"}) as log:
        create = "CREATE TABLE seen (k text PRIMARY KEY, n integer NOT NULL)"
        insert = "INSERT INTO seen VALUES ('free', 0), ('taken', 0)"
        await log.apply([GuardedBatch(None, [Statement(create), Statement(insert)])])
        log.set_inline_hook(hook)
        streams = ["free:a", "taken:1", "taken:2", "free:b"]
        async with row_held(log, "SELECT n FROM seen WHERE k = 'taken' FOR UPDATE"):
            outcomes = await appending(log, streams)
        failed = [s for s, o in zip(streams, outcomes, strict=True) if isinstance(o, DatabaseError)]
        assert failed == ["taken:1", "taken:2"], outcomes
        assert all("LockNotAvailable" in str(outcomes[streams.index(s)]) for s in failed)
        assert hooked.count("taken:1") == 1  # failed the group's attempt; not run again
        assert [e.stream async for e in log.read_all()] == ["free:a", "free:b"]


async def seen_rows_bumped_inline(log: EventStore) -> None:
    """A read table ``seen`` with rows 'free' and 'taken'; each appended event bumps the row its stream starts with."""

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        bump = "UPDATE seen SET n = n + 1 WHERE k = ?"
        return [GuardedBatch(None, [Statement(bump, [event.stream.split(":")[0]])]) for event in recorded]

    create = "CREATE TABLE seen (k text PRIMARY KEY, n integer NOT NULL)"
    insert = "INSERT INTO seen VALUES ('free', 0), ('taken', 0)"
    await log.apply([GuardedBatch(None, [Statement(create), Statement(insert)])])
    log.set_inline_hook(hook)


async def test_callers_retried_one_by_one_let_other_processes_append_in_between(postgres_store_url: str) -> None:
    """Each retried caller commits on its own, so the append lock is not held through every caller's timeout."""

    settings = {"lock_timeout": "400ms"}
    async with open_store(postgres_store_url, server_settings=settings) as log, open_store(postgres_store_url) as other:
        await seen_rows_bumped_inline(log)

        async def other_process_appends() -> None:
            # The group's first attempt has failed by now (one 400 ms timeout): its callers
            # are being retried, "taken:2" and "taken:3" waiting 400 ms each, "free:a" last.
            await asyncio.sleep(0.6)
            await other.append("other:x", [pushed(9)])

        async with row_held(log, "SELECT n FROM seen WHERE k = 'taken' FOR UPDATE"):
            outcomes, _ = await asyncio.gather(
                appending(log, ["taken:1", "taken:2", "taken:3", "free:a"]), other_process_appends()
            )
        assert [type(o).__name__ for o in outcomes] == ["DatabaseError"] * 3 + ["AppendResult"]
        assert [e.stream async for e in log.read_all()] == ["other:x", "free:a"]


async def test_a_connection_lost_while_callers_are_retried_keeps_the_results_of_those_committed(
    postgres_store_url: str,
) -> None:
    settings = {"lock_timeout": "1s"}
    async with open_store(postgres_store_url, server_settings=settings) as log, open_store(postgres_store_url) as other:
        await seen_rows_bumped_inline(log)
        waiting = (
            "SELECT pid, query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE seen%'"
        )

        async def end_the_second_wait() -> None:
            # The group's attempt waits for the row (taken:1) and times out; then the callers
            # go one by one: free:a commits, taken:2 waits for the row: its connection is ended.
            seen: dict[object, int] = {}  # query_start -> pid: one entry per statement that waited
            while len(seen) < 2:
                seen.update((start, pid) for pid, start in await other.query(waiting))
                await asyncio.sleep(0.01)
            pid = seen[max(seen)]  # type: ignore[type-var]
            await other.query("SELECT pg_terminate_backend(?)", [pid])

        async with row_held(log, "SELECT n FROM seen WHERE k = 'taken' FOR UPDATE"):
            streams = ["free:a", "taken:1", "taken:2", "free:b"]
            outcomes, _ = await asyncio.wait_for(asyncio.gather(appending(log, streams), end_the_second_wait()), 30)
        assert type(outcomes[0]).__name__ == "AppendResult"
        assert "LockNotAvailable" in str(outcomes[1])
        assert all("ConnectionDoesNotExist" in str(o) or "AdminShutdown" in str(o) for o in outcomes[2:]), outcomes
        assert [e.stream async for e in log.read_all()] == ["free:a"]
        await log.append("free:c", [pushed(3)])  # the store goes on, on another connection


async def test_a_hook_raising_for_one_caller_of_a_retried_group_fails_only_that_caller(
    postgres_store_url: str,
) -> None:
    """Callers retried one by one commit on their own: an error in a later one is its alone."""

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        stream = recorded[0].stream
        if stream == "s:a":
            return [GuardedBatch(None, [Statement("SELECT 1/0")])]  # a database error: the group is retried
        if stream == "s:c":
            raise RuntimeError("the read model's code has a bug")
        return []

    async with open_store(postgres_store_url) as log:
        log.set_inline_hook(hook)
        outcomes = await appending(log, ["s:a", "s:b", "s:c"])
        log.set_inline_hook(None)
        assert [type(o).__name__ for o in outcomes] == ["DatabaseError", "AppendResult", "RuntimeError"]
        assert [e.stream async for e in log.read_all()] == ["s:b"]


@pytest.fixture
async def conn(postgres_store_url: str) -> AsyncIterator[Any]:
    """A raw connection inside a transaction, for undo() itself."""
    assert POSTGRES_URL
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute("BEGIN")
        yield connection
    finally:
        await connection.close()


async def test_a_savepoint_rollback_passes_on_the_cancellation_even_if_the_rollback_fails(conn: Any) -> None:
    undoing = asyncio.ensure_future(undo(conn, "test", "SELECT pg_sleep(0.3); ROLLBACK TO no_such", keep=True))
    await asyncio.sleep(0.1)
    undoing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(undoing, 20)
    assert not conn.is_closed()  # a unit of work's connection is kept


@pytest.mark.parametrize("cancel", ["asyncio", "anyio"])
async def test_a_rollback_the_server_does_not_answer_ends_the_connection(
    conn: Any, monkeypatch: pytest.MonkeyPatch, cancel: str
) -> None:
    """However the caller is cancelled (or not at all), a rollback never waits on a silent server for long."""
    monkeypatch.setattr(pgops, "UNDO_GRACE", 0.3)
    async with asyncio.timeout(20):  # (a hang guard, not a speed limit)
        if cancel == "anyio":
            with anyio.move_on_after(0.1):
                await undo(conn, "test", "SELECT pg_sleep(60)", keep=True)
        else:
            undoing = asyncio.ensure_future(undo(conn, "test", "SELECT pg_sleep(60)", keep=True))
            await asyncio.sleep(0.1)
            undoing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await undoing
    assert conn.is_closed()


async def test_a_rollback_that_finished_leaves_its_connection_alone(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgops, "UNDO_GRACE", 0.2)
    await undo(conn, "test", keep=True)
    await asyncio.sleep(0.4)  # past the grace: nothing may end it now
    assert not conn.is_closed()
    assert await conn.fetchval("SELECT 1") == 1


async def test_a_rollback_answered_while_the_event_loop_was_busy_keeps_its_connection(
    conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer and the grace running out seen in one turn of the loop: the answer wins."""
    monkeypatch.setattr(pgops, "UNDO_GRACE", 0.3)
    undoing = asyncio.ensure_future(undo(conn, "test", keep=True))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the ROLLBACK is sent
    time.sleep(0.5)  # noqa: ASYNC251 -- the loop stalled past the grace while the answer arrives
    await asyncio.wait_for(undoing, 20)
    assert not conn.is_closed()


async def server_has(pid: int) -> bool:
    """Whether the server still runs a backend with ``pid`` (waits a little for an ending one to go)."""
    assert POSTGRES_URL
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for _ in range(50):
            if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                return False
            await asyncio.sleep(0.05)
        return True
    finally:
        await conn.close()


LOST_TRACK = "unexpected message 'Z' in state 3"  # what the driver says when its protocol state is unknown


async def test_a_pooled_connection_the_driver_lost_track_of_is_ended_not_reused(postgres_store_url: str) -> None:
    async with open_store(postgres_store_url) as log:
        pids: list[int] = []
        with pytest.raises(DatabaseError, match="InternalClientError"):
            async with log.transaction():
                pids.append((await log.query("SELECT pg_backend_pid()"))[0][0])
                raise asyncpg.InternalClientError(LOST_TRACK)
        assert not await server_has(pids[0])
        await log.append("s:a", [pushed(1)])  # the pool opened another connection
        assert await log.head_position() == 1


async def test_the_appender_connection_the_driver_lost_track_of_is_ended_not_reused(postgres_store_url: str) -> None:
    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        raise asyncpg.InternalClientError(LOST_TRACK)

    async with open_store(postgres_store_url) as log:
        await log.append("s:a", [pushed(1)])
        appender = log.backend._append_conn  # type: ignore[attr-defined]
        pid = appender.get_server_pid()
        log.set_inline_hook(hook)
        with pytest.raises(DatabaseError, match="InternalClientError"):
            await log.append("s:b", [pushed(2)])
        assert not await server_has(pid)
        log.set_inline_hook(None)
        await log.append("s:c", [pushed(3)])
        assert [e.stream async for e in log.read_all()] == ["s:a", "s:c"]
