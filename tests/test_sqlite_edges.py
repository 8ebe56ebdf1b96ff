"""SQLite at the edges (found in review): verify below position 1, reads that yield, maintenance while
others write or inside a unit of work, a cancelled append in a unit of work, a cancelled open, odd prefixes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import eventstore.backends.sqlite as sqlite_backend
import eventstore.backends.sqliteops as sqliteops
from eventstore import EventStore, RecordedEvent, SchemaVersionError, WrongExpectedVersion, open_store
from eventstore.model import GuardedBatch, Statement
from tests.test_sqlite_backend import A, drop_triggers, pushed, raw

pytestmark = pytest.mark.anyio


async def positions(log: EventStore) -> list[int]:
    return [event.position async for event in log.read_all()]


# -- 1. verify: rows outside 1..head are never looked at ------------------------------


async def test_verify_catches_an_event_forged_at_position_zero(sqlite_path: str) -> None:
    """An attacker (who, like in test_sqlite_backend's tamper tests, drops the triggers first) adds an event
    at position 0 of a company's stream. read_stream serves it as part of the history; verify says ok."""
    async with open_store(sqlite_path) as log:
        for n in (1, 2, 3):
            await log.append(A, [pushed(n)])
    with raw(sqlite_path) as conn:
        drop_triggers(conn)
        conn.execute(
            "INSERT INTO events (position, event_id, stream, version, type, schema_version, recorded_at, metadata, "
            "data, hash) SELECT 0, randomblob(16), stream, 0, type, schema_version, recorded_at, metadata, "
            "CAST(replace(CAST(data AS TEXT), 'page-1', 'page-FORGED') AS BLOB), zeroblob(32) "
            "FROM events WHERE position = 1"
        )
    async with open_store(sqlite_path) as log:
        history = [event.data async for event in log.read_stream(A, from_version=0)]
        assert any(getattr(data, "notion_page_id", "") == "page-FORGED" for data in history)  # served as history
        report = await log.verify()
        assert not report.ok, report


# -- 2. reads never yield: a verify (or read_all / export) starves the event loop ---------


async def test_verify_of_a_multi_page_log_lets_other_tasks_run(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        for start in range(0, 6000, 500):
            await log.append(A, [pushed(n + 1) for n in range(start, start + 500)])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        with anyio.fail_after(30):
            task = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            before = ticks
            report = await log.verify()  # 3 pages, ~6000 hashes and decodes
            during = ticks - before
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert report.ok and report.events_checked == 6000

        assert during > 0


async def test_a_timeout_around_verify_fires(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        for start in range(0, 6000, 500):
            await log.append(A, [pushed(n + 1) for n in range(start, start + 500)])
        with anyio.fail_after(30), pytest.raises(TimeoutError):
            await asyncio.wait_for(log.verify(), 0.001)


# -- 3. maintain() fails at once while another process writes -----------------------------


async def test_maintain_waits_for_another_process_write_lock_instead_of_failing(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        with raw(sqlite_path) as other:
            other.execute("BEGIN IMMEDIATE")  # another process is appending for a moment
            release = threading.Timer(0.3, other.execute, ("COMMIT",))
            release.start()
            try:
                with anyio.fail_after(30):
                    await log.maintain()
            finally:
                release.join()


# -- 4. maintain() / migrate() inside a unit of work wait for themselves forever -----------


async def test_maintain_inside_a_unit_of_work_does_not_hang(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        with pytest.raises(Exception) as caught:  # any clear refusal will do, not a hang
            async with log.transaction():
                await log.append(A, [pushed(2)])
                with anyio.fail_after(2):
                    await log.maintain()
        assert not isinstance(caught.value, TimeoutError), "maintain() waited for the unit's own lock"


# -- 5. an append cancelled inside a unit of work is committed by the unit ------------------


async def test_an_append_cancelled_inside_a_unit_of_work_is_not_committed_by_it(sqlite_path: str) -> None:
    """Under FULL the append runs on the connection's thread; its caller is cancelled while it runs.
    The savepoint is still open to the store, yet it is released and the unit commits events the
    caller was told did not complete (PostgreSQL refuses such a unit's COMMIT instead)."""
    entered, gate = threading.Event(), threading.Event()

    def slow_hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        entered.set()
        gate.wait(10)
        return []

    async with open_store(sqlite_path, synchronous="FULL") as log:
        await log.append(A, [pushed(1)])
        with anyio.fail_after(20):
            async with log.transaction():
                log.set_inline_hook(slow_hook)
                inner = asyncio.ensure_future(log.append(A, [pushed(2)]))
                await anyio.to_thread.run_sync(entered.wait)
                inner.cancel()
                gate.set()
                with pytest.raises(asyncio.CancelledError):
                    await inner
                log.set_inline_hook(None)
                await log.append("company:domain:b.ai", [pushed(3)])

        assert [e.data.signal_id async for e in log.read_all()] == [1, 3]  # type: ignore[attr-defined]


# -- 6. a cancelled open() leaves its writer connection (a non-daemon thread) running --------


async def test_an_open_cancelled_while_configuring_closes_its_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    with raw(path) as other:
        other.execute("CREATE TABLE unrelated (x)")  # a rollback-journal database another program writes to
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO unrelated VALUES (1)")
        log = open_store(path, busy_timeout=5)
        with anyio.move_on_after(0.3):
            await log.open()  # waits to switch the file to WAL; cancelled meanwhile
        writer = log.backend._writer  # type: ignore[attr-defined]
        other.execute("ROLLBACK")
    thread = writer._thread if writer is not None else None
    if thread is not None:
        await anyio.to_thread.run_sync(thread.join, 3)
    left_running = thread is not None and thread.is_alive()
    await log.aclose()  # (clean up for the rest of the suite)

    assert not left_running


# -- 7. stream_prefix misses streams whose next character is U+10FFFF -----------------------


async def test_read_all_and_subscribe_by_prefix_return_every_stream_with_that_prefix(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append("company:\U0010ffff-odd", [pushed(1)])
        await log.append("company:domain:a.ai", [pushed(2)])
        with anyio.fail_after(10):
            async for event in log.subscribe(stream_prefix="company:"):
                first_delivered = event.position
                break
        seen = [e.position async for e in log.read_all(stream_prefix="company:")]
        assert (seen, first_delivered) == ([1, 2], 1)


async def test_a_prefix_with_glob_wildcards_matches_only_itself(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        for n, stream in enumerate(["a*b:1", "axb:2", "a?b:3", "a[b:4", "a[b]:5", "A*b:6"], start=1):
            await log.append(stream, [pushed(n)])
        for prefix, expected in [("a*b", [1]), ("a?b", [3]), ("a[b", [4, 5]), ("a[b]", [5]), ("a", [1, 2, 3, 4, 5])]:
            assert [e.position async for e in log.read_all(stream_prefix=prefix)] == expected, prefix


async def test_verify_catches_an_event_inserted_below_position_one_on_every_backend(store_url: str) -> None:
    """On PostgreSQL nothing but the role's rights keeps a hand-written INSERT out (see app_role_sql)."""
    async with open_store(store_url) as log:
        for n in (1, 2):
            await log.append(A, [pushed(n)])
        if log.dialect == "postgresql":
            copy = (
                "INSERT INTO events (position, event_id, stream, version, type, schema_version, recorded_at, "
                "metadata, data, hash) SELECT -1, decode(md5('x'), 'hex'), stream, 0, type, schema_version, "
                "recorded_at, metadata, data, hash FROM events WHERE position = 1"
            )
            await log.apply([GuardedBatch(None, [Statement(copy)])])
        else:
            with raw(store_url) as conn:
                drop_triggers(conn)
                conn.execute(
                    "INSERT INTO events SELECT -1, randomblob(16), stream, 0, type, schema_version, recorded_at, "
                    "metadata, data, hash FROM events WHERE position = 1"
                )
        report = await log.verify()
    assert (report.ok, report.first_bad_position) == (False, -1)
    assert "below position 1" in (report.reason or "")


@pytest.mark.parametrize("lock", ["BEGIN EXCLUSIVE", "BEGIN IMMEDIATE"])
async def test_a_deadline_around_open_fires_on_time_while_another_process_holds_the_file(
    tmp_path: Path, lock: str
) -> None:
    """EXCLUSIVE: the read-only pre-check waits for the lock on a thread (abandoned when cancelled).
    IMMEDIATE: the WAL switch retries on the writer's thread (stopped when cancelled)."""
    path = str(tmp_path / "events.db")
    with raw(path) as other:
        other.execute("CREATE TABLE unrelated (x)")
        other.execute(lock)
        other.execute("INSERT INTO unrelated VALUES (1)")
        log = open_store(path, busy_timeout=600)  # the bound below is far shorter than the busy timeout
        with anyio.fail_after(20), anyio.move_on_after(0.3) as deadline:
            await log.open()
        other.execute("ROLLBACK")
    await log.aclose()
    assert deadline.cancelled_caught


async def test_a_failed_append_in_a_unit_of_work_does_not_undo_a_concurrent_ones(sqlite_path: str) -> None:
    """Under FULL the work runs on the thread: two tasks of one unit must not interleave their savepoints,
    or the failing one's ROLLBACK TO undoes its neighbour's append, reported as done."""
    async with open_store(sqlite_path, synchronous="FULL") as log:
        await log.append("s:a", [pushed(1)])
        results: dict[str, object] = {}

        async def append(name: str, stream: str, expected: int) -> None:
            try:
                results[name] = await log.append(stream, [pushed(2)], expected_version=expected)
            except WrongExpectedVersion as exc:
                results[name] = exc

        with anyio.fail_after(20):
            async with log.transaction(), anyio.create_task_group() as tg:
                tg.start_soon(append, "bad", "s:a", 5)  # wrong expected version: fails, writes nothing
                tg.start_soon(append, "good", "s:b", 0)
        assert isinstance(results["bad"], WrongExpectedVersion)
        good = results["good"]
        assert not isinstance(good, BaseException) and good.positions == [2]  # type: ignore[attr-defined]
        assert [e.stream async for e in log.read_all()] == ["s:a", "s:b"]


async def test_refusing_the_old_layers_wal_database_leaves_its_directory_as_it_was(tmp_path: Path) -> None:
    """A read-only connection to a WAL-mode file would create its -wal and -shm: the check reads it immutable."""
    path = tmp_path / "signals.db"
    with raw(str(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for table in ("signals", "signal_processing", "suppression_cache"):
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    before = sorted(os.listdir(tmp_path))
    with anyio.fail_after(10), pytest.raises(SchemaVersionError, match="replaced signal storage layer"):
        async with open_store(str(path)):
            pass
    assert sorted(os.listdir(tmp_path)) == before


def _slow_appends(log: EventStore, seconds: float) -> None:
    """Every append's work on the writer takes ``seconds`` (a slow disk under synchronous=FULL)."""
    writes = log._backend._writes  # type: ignore[attr-defined]

    def slowed(original: Any) -> Any:
        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(seconds)
            return original(*args, **kwargs)

        return slow

    for name in ("append_items", "append_item"):  # a group; one append in a unit of work
        setattr(writes, name, slowed(getattr(writes, name)))


async def test_a_unit_committed_past_its_deadline_still_wakes_the_waiters(
    sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that runs to its end past an anyio deadline is a commit: the waiters are woken."""
    original = sqliteops.commit

    def slow_commit(conn: sqlite3.Connection, wait: bool) -> None:
        time.sleep(0.4)
        original(conn, wait)

    monkeypatch.setattr(sqlite_backend, "commit", slow_commit)
    async with open_store(sqlite_path, synchronous="FULL") as log:
        woken = anyio.Event()

        async def waiter() -> None:
            await log.wait_for_append(600)  # unless woken, far past the bound below
            woken.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.05)
                with anyio.move_on_after(0.2):
                    async with log.transaction():
                        await log.append("s:a", [pushed(1)])
        assert [e.stream async for e in log.read_all()] == ["s:a"]  # committed
        assert woken.is_set()


async def test_an_append_that_completed_is_not_reported_as_cancelled(sqlite_path: str) -> None:
    """A deadline that passes while the commit runs: the append committed, and its caller gets the result."""
    async with open_store(sqlite_path, synchronous="FULL") as log:
        _slow_appends(log, 0.4)
        result = None
        with anyio.fail_after(20):
            with anyio.move_on_after(0.1) as scope:
                result = await log.append("s:a", [pushed(1)])
        assert [e.stream async for e in log.read_all()] == ["s:a"]  # it was written
        assert result is not None, f"committed, but reported as cancelled (cancelled_caught={scope.cancelled_caught})"


async def test_a_nested_transaction_beside_a_neighbours_append_under_full(sqlite_path: str) -> None:
    """Under FULL a neighbour's append runs on the thread: the nested unit's SAVEPOINT waits for it, or it
    would land inside the neighbour's savepoint and be dropped by its RELEASE ('no such savepoint')."""
    async with open_store(sqlite_path, synchronous="FULL") as log:
        _slow_appends(log, 0.1)

        async def nested() -> None:
            await anyio.sleep(0.02)  # the neighbour's append is on the thread by now
            async with log.transaction():
                await log.append("s:n", [pushed(1)])

        with anyio.fail_after(20):
            async with log.transaction(), anyio.create_task_group() as tg:
                tg.start_soon(log.append, "s:a", [pushed(2)])
                tg.start_soon(nested)
        assert sorted([e.stream async for e in log.read_all()]) == ["s:a", "s:n"]


async def test_the_pre_check_does_not_read_another_process_uncommitted_pages(tmp_path: Path) -> None:
    """A rollback-journal database whose writer has spilled an uncommitted schema change (an events table)
    is judged by its committed state: the check takes the locks whenever a journal exists."""
    path = str(tmp_path / "signals.db")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("PRAGMA journal_mode=DELETE")
        for i in range(100):  # sqlite_master spans several pages: its leaves get spilled
            other.execute(f"CREATE TABLE pad_{i:03d}_{'x' * 200} (id INTEGER PRIMARY KEY)")
        for table in ("signals", "signal_processing", "suppression_cache"):
            other.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
        other.execute("PRAGMA cache_size=2")
        other.execute("BEGIN")
        other.execute("DROP TABLE signal_processing")
        other.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, data BLOB)")
        for i in range(300):
            other.execute("INSERT INTO events VALUES (?, zeroblob(4000))", (i,))
        threading.Timer(0.5, other.execute, ("ROLLBACK",)).start()  # the other program changes its mind
        with anyio.fail_after(20), pytest.raises(SchemaVersionError, match="replaced signal storage layer"):
            async with open_store(path, busy_timeout=5):
                pass
    finally:
        await anyio.sleep(0.6)
        other.close()
    with sqlite3.connect(path) as conn:
        assert "events" not in {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
