"""SQLite specifics: WAL, durability setting, schema versions, :memory:, the append-only triggers, tampering."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import (
    DatabaseError,
    EventStore,
    SchemaVersionError,
    SignalPushed,
    open_store,
)
from tests.conftest import detected

pytestmark = pytest.mark.anyio

A = "company:domain:a.ai"


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


@contextlib.contextmanager
def raw(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


async def filled(path: str, events: int = 6) -> None:
    async with open_store(path) as log:
        for n in range(1, events + 1):
            await log.append(A, [pushed(n)])


async def verify(path: str) -> tuple[bool, int | None, str | None]:
    async with open_store(path) as log:
        report = await log.verify()
    return report.ok, report.first_bad_position, report.reason


def drop_triggers(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"):
        conn.execute(f"DROP TRIGGER {name}")


# -- pragmas ------------------------------------------------------------------


async def test_files_are_in_wal_mode(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        assert await log.query("PRAGMA journal_mode") == [("wal",)]
    with raw(sqlite_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    ("given", "level", "name"), [(None, 1, "NORMAL"), ("FULL", 2, "FULL"), ("normal", 1, "NORMAL")]
)
async def test_synchronous_defaults_to_normal_and_is_configurable(
    sqlite_path: str, given: str | None, level: int, name: str
) -> None:
    options: dict[str, Any] = {} if given is None else {"synchronous": given}
    async with open_store(sqlite_path, **options) as log:
        assert await log.query("PRAGMA synchronous") == [(level,)]
        assert (await log.backend_stats())["synchronous"] == name


def test_an_unknown_synchronous_setting_is_refused(sqlite_path: str) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        open_store(sqlite_path, synchronous="SOMETIMES")


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
async def test_the_log_works_the_same_under_each_durability_setting(sqlite_path: str, synchronous: str) -> None:
    async with open_store(sqlite_path, synchronous=synchronous) as log:
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(log.append, f"s:{i}", [pushed(1), pushed(2)])
        async with log.transaction():
            await log.append(A, [pushed(3)])
        with pytest.raises(RuntimeError):
            async with log.transaction():
                await log.append(A, [pushed(4)])
                raise RuntimeError
        assert [e.position async for e in log.read_all()] == list(range(1, 18))
        assert (await log.verify()).ok


# -- schema versions ------------------------------------------------------------


async def test_migrations_are_recorded_and_logged_once(sqlite_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="eventstore"):
        async with open_store(sqlite_path) as log:
            assert (await log.applied_migrations())["log"] >= 1
    assert any("migration" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eventstore"):
        async with open_store(sqlite_path):
            pass
    assert not [r for r in caplog.records if "migration" in r.getMessage()]


async def test_a_file_from_a_newer_schema_is_refused_with_a_clear_message(sqlite_path: str) -> None:
    await filled(sqlite_path, 1)
    with raw(sqlite_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('log', 99, 'from_the_future', 'now')")
    with pytest.raises(SchemaVersionError, match="newer") as caught:
        async with open_store(sqlite_path):
            pass
    assert sqlite_path in str(caught.value)
    assert "99" in str(caught.value)
    assert "upgrade" in str(caught.value)
    with raw(sqlite_path) as conn:  # refused without touching anything
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)


async def test_a_file_that_is_not_a_database_is_a_database_error(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not a sqlite database, just some text " * 100)
    with pytest.raises(DatabaseError):
        async with open_store(str(path)):
            pass


# -- :memory: -------------------------------------------------------------------


async def test_memory_stores_work_and_are_independent() -> None:
    async with open_store(":memory:") as one, open_store(":memory:") as two:
        await one.append(A, [detected(), pushed(1)])
        assert await two.head_position() == 0
        async with one.transaction():
            await one.append("b", [pushed(2)])
        seen = []
        async for event in one.subscribe():
            seen.append(event.position)
            if event.position == 3:
                break
        assert seen == [1, 2, 3]
        assert [e.version async for e in one.read_stream(A, backwards=True)] == [2, 1]
        assert (await one.verify()).ok


# -- append-only in the database itself -------------------------------------------


async def test_the_database_refuses_update_and_delete_on_events(sqlite_path: str) -> None:
    await filled(sqlite_path, 2)
    with raw(sqlite_path) as conn:
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert len(triggers) >= 2
        for sql in (
            "UPDATE events SET data = x'00' WHERE position = 1",
            "UPDATE events SET stream = 'elsewhere'",
            "DELETE FROM events WHERE position = 2",
            "DELETE FROM events",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    assert await verify(sqlite_path) == (True, None, None)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT OR REPLACE INTO events SELECT * FROM events WHERE position = 1",
        "REPLACE INTO events (position, event_id, stream, version, type, schema_version, recorded_at, metadata, "
        "data, hash) SELECT 99, event_id, 'elsewhere', 1, type, schema_version, recorded_at, metadata, data, hash "
        "FROM events WHERE position = 1",
    ],
)
async def test_the_database_refuses_replace_on_events(sqlite_path: str, sql: str) -> None:
    await filled(sqlite_path, 2)
    with raw(sqlite_path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql)


async def test_a_rewrite_by_replace_is_caught_by_verify(sqlite_path: str) -> None:
    await filled(sqlite_path, 3)
    with raw(sqlite_path) as conn:
        drop_triggers(conn)  # someone with write access to the file removes the guards first
        conn.execute(
            "REPLACE INTO events (position, event_id, stream, version, type, schema_version, recorded_at, metadata, "
            "data, hash) SELECT 99, event_id, 'elsewhere', 1, type, schema_version, recorded_at, metadata, data, hash "
            "FROM events WHERE position = 2"
        )
    ok, first_bad, _ = await verify(sqlite_path)
    assert not ok
    assert first_bad == 2


async def test_the_store_own_connections_cannot_delete_events_either(log: EventStore) -> None:
    if log.dialect != "sqlite":
        pytest.skip("SQLite-specific")
    await log.append(A, [pushed(1)])
    with pytest.raises(DatabaseError, match="append-only"):
        await log.query("DELETE FROM events")
    assert await log.head_position() == 1


# -- tamper evidence ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "bad"),
    [
        ("UPDATE events SET data = replace(data, 'page-3', 'page-X') WHERE position = 3", 3),
        ('UPDATE events SET metadata = \'{"actor":"mallory"}\' WHERE position = 4', 4),
        ("UPDATE events SET stream = 'company:other' WHERE position = 2", 2),
        ("UPDATE events SET recorded_at = recorded_at + 1 WHERE position = 5", 5),
        ("UPDATE events SET hash = zeroblob(32) WHERE position = 2", 2),
        ("DELETE FROM events WHERE position = 3", 3),
    ],
)
async def test_verify_names_the_first_tampered_position(sqlite_path: str, sql: str, bad: int) -> None:
    await filled(sqlite_path)
    with raw(sqlite_path) as conn:
        drop_triggers(conn)
        assert conn.execute(sql).rowcount == 1
    ok, first_bad, reason = await verify(sqlite_path)
    assert not ok
    assert first_bad == bad
    assert reason


async def test_rewriting_an_event_and_its_hash_is_caught_at_the_next_position(sqlite_path: str) -> None:
    from eventstore.codec import chain_hash

    await filled(sqlite_path)
    with raw(sqlite_path) as conn:
        drop_triggers(conn)
        rows = conn.execute("SELECT * FROM events WHERE position IN (2, 3) ORDER BY position").fetchall()
        forged = (*rows[1][:8], rows[1][8].replace(b"page-3", b"page-X"), b"")
        conn.execute(
            "UPDATE events SET data = ?, hash = ? WHERE position = 3", (forged[8], chain_hash(rows[0][9], forged))
        )
    ok, first_bad, _ = await verify(sqlite_path)
    assert not ok
    assert first_bad == 4


async def test_verify_reports_progress_and_a_report_string(sqlite_path: str) -> None:
    await filled(sqlite_path)
    seen: list[int] = []
    async with open_store(sqlite_path) as log:
        report = await log.verify(progress=seen.append)
    assert seen[-1] == 6
    assert str(report) == "OK: 6 events verified up to position 6"


# -- locking -------------------------------------------------------------------------


async def test_an_append_waits_for_another_process_write_lock_instead_of_failing(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        with raw(sqlite_path) as other:
            other.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.3, other.execute, ("COMMIT",))
            release.start()
            try:
                result = await log.append(A, [pushed(2)])
            finally:
                release.join()
        assert result.positions == [2]


async def test_a_lock_held_past_the_busy_timeout_is_a_clear_error(sqlite_path: str) -> None:
    async with open_store(sqlite_path, busy_timeout=0.2) as log:
        with raw(sqlite_path) as other:
            other.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(DatabaseError, match="locked by another process"):
                    await log.append(A, [pushed(1)])
            finally:
                other.execute("ROLLBACK")
        assert (await log.append(A, [pushed(1)])).positions == [1]


async def test_reads_never_wait_behind_a_write(sqlite_path: str) -> None:
    # busy_timeout=0: a read that had to wait for the writer would fail at once.
    async with open_store(sqlite_path, busy_timeout=0) as log:
        await log.append(A, [pushed(1)])
        with raw(sqlite_path) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute(
                "INSERT INTO events SELECT 2, x'00', stream, 2, type, schema_version, recorded_at, metadata, "
                "data, hash FROM events WHERE position = 1"
            )
            assert [e.position async for e in log.read_all()] == [1]
            assert await log.head_position() == 1
            other.execute("ROLLBACK")


async def test_payloads_are_never_logged_above_debug(sqlite_path: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-payload-marker"
    with caplog.at_level(logging.DEBUG, logger="eventstore"):
        async with open_store(sqlite_path) as log:
            await log.append(A, [detected(raw_data={"token": secret})], metadata={"note": secret})
            _ = [e async for e in log.read_all()]
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and secret in r.getMessage()]


async def test_concurrent_appenders_share_one_transaction_and_a_lone_one_commits_alone(sqlite_path: str) -> None:
    """Group commit: appenders ready together go in one transaction; an appender alone is not held back."""
    async with open_store(sqlite_path) as log:
        backend: Any = log.backend
        groups: list[int] = []
        append_group = backend._append_group

        def counted(conn: sqlite3.Connection, group: list[Any], clock: Any) -> Any:
            groups.append(len(group))
            return append_group(conn, group, clock)

        backend._append_group = counted
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(log.append, f"s:{i}", [pushed(i + 1)])
        assert groups == [16]
        del groups[:]
        for i in range(3):
            await log.append(A, [pushed(100 + i)])
        assert groups == [1, 1, 1]
        assert [e.position async for e in log.read_all()] == list(range(1, 20))


async def test_a_loop_of_appends_still_lets_timeouts_and_cancellation_in() -> None:
    """Inline appends never wait, so a loop of them must still give the event loop a turn now and then."""
    async with open_store(":memory:") as log:
        with anyio.move_on_after(0.05) as scope:
            for i in range(100_000):
                await log.append(A, [pushed(i + 1)])
        assert scope.cancelled_caught
        assert 0 < await log.head_position() < 100_000


@pytest.mark.parametrize("vacuum", [False, True])
async def test_appends_go_on_after_maintenance_in_the_same_process(sqlite_path: str, vacuum: bool) -> None:
    """maintain() must leave no statement in progress on the writer (wal_checkpoint returns a row)."""
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        await log.maintain(vacuum=vacuum)
        assert (await log.append(A, [pushed(2)])).positions == [2]
        async with log.transaction():
            await log.append(A, [pushed(3)])
        assert (await log.verify()).ok
