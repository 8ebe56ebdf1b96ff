"""Plain asyncio cancellation (``task.cancel()``, ``asyncio.wait_for``) of an append others depend on.

anyio's shield does not stop it. Under ``synchronous=FULL`` every SQLite write
goes to the connection's thread, which finishes a transaction even when its
awaiter is cancelled: the store must keep the connection until then. On both
backends, the leader of a group commit may be the one cancelled: the others in
its group must get their own outcome, not its cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import aiosqlite
import pytest

from eventstore import DatabaseError, EventStore, RecordedEvent, SignalPushed, StoreClosed, open_store
from eventstore.backends.sqlite import SqliteBackend
from eventstore.model import GuardedBatch, Statement

pytestmark = pytest.mark.anyio

A = "company:domain:a.ai"


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


class Numbers:
    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


async def check(log: EventStore) -> set[int]:
    positions = [event.position async for event in log.read_all()]
    assert positions == list(range(1, len(positions) + 1))
    assert (await log.verify()).ok
    return set(positions)


def free_pages(raw: sqlite3.Connection, *, kept: int, dropped: int, size: int) -> int:
    """Blobs in a table that stays and in one dropped: free pages only a VACUUM gives back. Returns their count."""
    raw.execute("CREATE TABLE bulk (b BLOB)")
    raw.execute("CREATE TABLE dropped (b BLOB)")
    raw.executemany("INSERT INTO bulk VALUES (?)", [(bytes(size),)] * kept)
    raw.executemany("INSERT INTO dropped VALUES (?)", [(bytes(size),)] * dropped)
    raw.commit()
    raw.execute("DROP TABLE dropped")
    raw.commit()
    free: int = raw.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 0
    return free


def opened(url: str) -> EventStore:
    """SQLite under FULL, where every write runs on aiosqlite's thread; PostgreSQL as it is."""
    return open_store(url) if url.startswith("postgresql") else open_store(url, synchronous="FULL")


async def test_appenders_sharing_a_group_with_a_cancelled_one_get_their_own_outcome(store_url: str) -> None:
    numbers, timeouts = Numbers(), 0
    acknowledged: list[int] = []
    async with opened(store_url) as log:

        async def steady(k: int) -> None:
            for _ in range(40):
                result = await log.append(f"s:{k}", [pushed(numbers.next())])  # never cancelled
                acknowledged.extend(result.positions)

        async def impatient() -> None:
            nonlocal timeouts
            for _ in range(120):
                try:
                    result = await asyncio.wait_for(log.append(A, [pushed(numbers.next())]), 0.0005)
                except TimeoutError:
                    timeouts += 1
                else:
                    acknowledged.extend(result.positions)

        await asyncio.gather(impatient(), *(steady(k) for k in range(3)))
        present = await check(log)
        assert set(acknowledged) <= present
        assert timeouts > 0  # the case under test happened
        assert len(present) >= 3 * 40


async def test_a_unit_of_work_cancelled_while_it_begins_or_commits_leaves_no_open_transaction(store_url: str) -> None:
    numbers, committed, timeouts = Numbers(), 0, 0
    async with opened(store_url) as log:

        async def unit() -> None:
            async with log.transaction():
                await log.append(A, [pushed(numbers.next())])
                await log.append("company:domain:b.ai", [pushed(numbers.next())])

        for _ in range(60):
            try:
                await asyncio.wait_for(unit(), 0.0005)
            except TimeoutError:
                timeouts += 1
            else:
                committed += 1
        # The connection is free and outside any transaction: a plain append commits on its own.
        result = await log.append(A, [pushed(numbers.next())])
        present = await check(log)
        assert result.positions == [max(present)]
        assert len(present) % 2 == 1  # units of work are all or nothing: pairs, plus the last append
        assert timeouts > 0

    async with open_store(store_url) as again:  # what was acknowledged is on disk
        assert await check(again) == present


async def test_asyncio_timeout_still_raises_timeout_error(store_url: str) -> None:
    """The cancellation is re-raised as it came: asyncio.timeout() (3.11) turns only its own into TimeoutError."""
    numbers, timeouts = Numbers(), 0
    async with opened(store_url) as log:
        for _ in range(60):
            try:
                async with asyncio.timeout(0.0003):
                    await log.append(A, [pushed(numbers.next())])
            except TimeoutError:
                timeouts += 1
            current = asyncio.current_task()
            assert current is not None and current.cancelling() == 0
        assert timeouts > 0
        await check(log)


async def test_a_task_group_cancelling_an_append_reports_only_the_real_error(store_url: str) -> None:
    async with opened(store_url) as log:
        for n in range(1, 21):

            async def fail() -> None:
                await asyncio.sleep(0)
                raise ValueError("sibling failed")

            with pytest.raises(ExceptionGroup) as caught:
                async with asyncio.TaskGroup() as group:
                    group.create_task(fail())
                    await log.append(A, [pushed(n)])
                    await asyncio.sleep(1)  # the append finished first: wait here for the cancellation
            assert [type(e) for e in caught.value.exceptions] == [ValueError]
        await check(log)


async def test_a_cancelled_append_does_not_wait_for_another_writers_lock(store_url: str) -> None:
    async with opened(store_url) as log:
        await log.append(A, [pushed(1)])
        async with another_writer_holding_the_lock(log, store_url) as released:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(log.append(A, [pushed(2)]), 0.2)
            assert not released.is_set()  # given up while the lock was still held
        assert (await log.append(A, [pushed(3)])).positions[-1] <= 3
        await check(log)


@contextlib.asynccontextmanager
async def another_writer_holding_the_lock(log: EventStore, url: str) -> AsyncIterator[asyncio.Event]:
    """Another connection holds the append lock until the block ends (or 30 s, so a bug cannot hang the suite)."""
    released = asyncio.Event()
    if url.startswith("postgresql"):
        import asyncpg

        other = await asyncpg.connect(url.split("?")[0])
        keys = log.backend._lock_keys  # type: ignore[attr-defined]
        await other.execute("BEGIN")
        await other.execute("SELECT pg_advisory_xact_lock($1, $2)", *keys)

        async def release() -> None:
            await other.execute("ROLLBACK")
            await other.close()
    else:
        conn = sqlite3.connect(url, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")

        async def release() -> None:
            conn.execute("ROLLBACK")
            conn.close()

    async def backstop() -> None:
        await asyncio.sleep(30)
        if not released.is_set():
            released.set()
            await release()

    guard = asyncio.ensure_future(backstop())
    try:
        yield released
    finally:
        guard.cancel()
        if not released.is_set():
            released.set()
            await release()


async def test_a_unit_of_work_whose_inner_append_timed_out_commits_all_it_acknowledged_or_fails(
    store_url: str,
) -> None:
    """On PostgreSQL a cancelled statement aborts the transaction: COMMIT then rolls back, and must say so."""
    numbers, outcomes = Numbers(), {"committed": 0, "refused": 0, "inner timeouts": 0}
    async with opened(store_url) as log:
        for round_ in range(80):
            acknowledged: list[int] = []
            try:
                async with log.transaction():
                    acknowledged += (await log.append(A, [pushed(numbers.next())])).positions
                    try:
                        inner = log.append("company:domain:b.ai", [pushed(numbers.next())])
                        acknowledged += (await asyncio.wait_for(inner, 0.0001 * (1 + round_ % 10))).positions
                    except TimeoutError:
                        outcomes["inner timeouts"] += 1
            except DatabaseError as exc:
                assert "rolled back, not committed" in str(exc)
                outcomes["refused"] += 1
            else:
                outcomes["committed"] += 1
                assert set(acknowledged) <= await check(log)
        assert outcomes["inner timeouts"] > 0
        await check(log)


async def test_a_cancelled_close_is_never_left_halfway(store_url: str) -> None:
    """Cancelled, a close either finished or left the store whole and open (then a second close finishes it)."""
    log = await opened(store_url).open()
    in_flight = asyncio.ensure_future(log.append(A, [pushed(1)]))
    await asyncio.sleep(0)  # the append is leading its group now
    try:
        await asyncio.wait_for(log.aclose(), 0.0001)
    except TimeoutError:
        with contextlib.suppress(StoreClosed, DatabaseError):
            await in_flight  # the close gave up while the append held the store, or cut it off
        with contextlib.suppress(StoreClosed):
            await log.append(A, [pushed(2)])  # works if the close gave up first
        await log.aclose()
    else:
        with contextlib.suppress(StoreClosed, DatabaseError):
            await in_flight
    with pytest.raises(StoreClosed):
        await log.append(A, [pushed(3)])
    # No connection thread is left running (a live one would keep the interpreter from exiting).
    assert not [t for t in threading.enumerate() if isinstance(t, aiosqlite.Connection) and t.is_alive()]
    async with open_store(store_url) as again:
        await check(again)


async def test_appends_whose_callers_gave_up_waiting_are_not_written_later(store_url: str) -> None:
    """Callers that all timed out behind another writer's lock: none of their events may land afterwards."""
    async with opened(store_url) as log:
        await log.append("s:x", [pushed(1)])
        async with another_writer_holding_the_lock(log, store_url):
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(log.append(f"s:{n}", [pushed(n)]), 0.3) for n in range(2, 6)),
                return_exceptions=True,
            )
        assert [type(outcome) for outcome in outcomes] == [TimeoutError] * 4
        await log.append("s:later", [pushed(9)])
        assert [event.stream async for event in log.read_all()] == ["s:x", "s:later"]
        await check(log)


async def test_group_members_of_a_cancelled_leader_get_the_store_s_own_errors(sqlite_path: str) -> None:
    """A failed group's error reaches the others translated (DatabaseError), whether or not the leader was cancelled."""

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        time.sleep(0.1)  # on the connection's thread: time to cancel the leader meanwhile
        return [GuardedBatch(None, [Statement("INSERT INTO no_such_read_model VALUES (1)")])]

    async with opened(sqlite_path) as log:
        log.backend.set_inline_hook(hook)
        for cancel_leader in (False, True):
            leader = asyncio.ensure_future(log.append("s:a", [pushed(1)]))
            member = asyncio.ensure_future(log.append("s:b", [pushed(2)]))
            await asyncio.sleep(0.05)
            if cancel_leader:
                leader.cancel()
            outcomes = await asyncio.gather(leader, member, return_exceptions=True)
            assert isinstance(outcomes[1], DatabaseError), outcomes
            assert "no_such_read_model" in str(outcomes[1])
        log.backend.set_inline_hook(None)
        assert await log.head_position() == 0


async def test_sqlite_does_not_write_a_member_whose_caller_left_while_the_group_waited_for_the_lock(
    sqlite_path: str,
) -> None:
    """On SQLite the group is planned only once it holds the write lock: a caller gone by then is left out."""
    async with opened(sqlite_path) as log:
        await log.append("s:x", [pushed(1)])
        async with another_writer_holding_the_lock(log, sqlite_path) as released:
            # Both join one group, which the leader takes to the thread, where it waits for the lock.
            leader = asyncio.ensure_future(asyncio.wait_for(log.append("s:leader", [pushed(2)]), 20))
            member = asyncio.ensure_future(asyncio.wait_for(log.append("order:7", [pushed(3)]), 0.3))
            with pytest.raises(TimeoutError):
                await member
            assert not released.is_set()
        assert (await leader).positions == [2]
        assert [event.stream async for event in log.read_all()] == ["s:x", "s:leader"]
        await check(log)


async def test_a_cancelled_vacuum_stops_before_the_store_is_used_again(sqlite_path: str) -> None:
    """Cancelling maintain() interrupts its statement; nothing of it runs once the caller has the cancellation."""
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        raw = sqlite3.connect(sqlite_path)
        try:
            # Large blobs live in overflow pages: ANALYZE reads none of them, VACUUM copies them all.
            free_before = free_pages(raw, kept=150, dropped=150, size=200_000)
            maintenance = asyncio.ensure_future(log.maintain(vacuum=True))
            await asyncio.sleep(0.03)
            maintenance.cancel()
            with pytest.raises(asyncio.CancelledError):
                await maintenance
            # Queued behind anything still running on the writer's thread.
            await log.maintain()
            # (ANALYZE may take a free page or two for its statistics; a VACUUM would take them all.)
            assert raw.execute("PRAGMA freelist_count").fetchone()[0] > free_before // 2
        finally:
            raw.close()
        await log.append(A, [pushed(2)])
        assert len(await check(log)) == 2
        await log.maintain(vacuum=True)  # and it still works


async def test_a_maintenance_step_cancelled_before_it_starts_does_not_run(sqlite_path: str) -> None:
    """Cancelled while VACUUM waits in the connection thread's queue, maintain() does not run it."""
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        raw = sqlite3.connect(sqlite_path)
        try:
            free_before = free_pages(raw, kept=0, dropped=50, size=100_000)
            backend = cast(SqliteBackend, log.backend)
            queue_step = backend._on_thread

            async def cancelled_once_queued(fn: Any, **options: Any) -> Any:
                if "VACUUM" in fn.args:
                    # Keep the connection's thread busy, so that the step waits in its queue
                    # when the cancellation comes (as this task next waits).
                    loop = asyncio.get_running_loop()
                    owner, _ = backend._conn(backend._writer)
                    owner._tx.put_nowait((loop.create_future(), functools.partial(time.sleep, 0.2)))
                    loop.call_soon(maintenance.cancel)
                return await queue_step(fn, **options)

            backend._on_thread = cancelled_once_queued  # type: ignore[method-assign]
            for _ in range(3):
                maintenance = asyncio.ensure_future(log.maintain(vacuum=True))
                with pytest.raises(asyncio.CancelledError):
                    await maintenance
                assert raw.execute("PRAGMA freelist_count").fetchone()[0] > free_before // 2
        finally:
            raw.close()
        assert len(await check(log)) == 1
