"""What only PostgreSQL has: schemas, URLs with passwords, roles, LISTEN/NOTIFY, ``$n`` placeholders."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import pytest

from eventstore import (
    DatabaseError,
    EventStore,
    GuardedBatch,
    SchemaVersionError,
    SignalPushed,
    Statement,
    StoreClosed,
    company_stream,
    open_store,
)
from eventstore.backends.pgtext import numbered, parse_url, quote_literal
from eventstore.backends.postgres import PostgresBackend, app_role_sql
from eventstore.schema import LOG_MIGRATIONS
from tests.conftest import NO_POSTGRES, POSTGRES_URL, _drop_schema, detected

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)
A = company_stream("domain:a.ai")


@pytest.fixture
def schema() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    _drop_schema(POSTGRES_URL, name)


@pytest.fixture
def pg_url(schema: str) -> str:
    assert POSTGRES_URL
    return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[EventStore]:
    async with open_store(pg_url) as store:
        yield store


@contextlib.asynccontextmanager
async def raw(schema: str) -> AsyncIterator[object]:
    """A plain asyncpg connection in the store's schema, bypassing the store."""
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


def with_password(url: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    user, _, host = rest.rpartition("@")
    return f"{scheme}://{user or 'postgres'}:{password}@{host}"


# -- URLs and schemas ------------------------------------------------------


def test_the_schema_comes_from_the_url_or_the_option_and_defaults_to_eventstore() -> None:
    assert parse_url("postgresql://u@h/db").schema == "eventstore"
    assert parse_url("postgresql://u@h/db?schema=sales").schema == "sales"
    assert parse_url("postgresql://u@h/db", "sales").schema == "sales"
    target = parse_url("postgresql://u@h:5433/db?sslmode=disable&schema=sales")
    assert target.dsn == "postgresql://u@h:5433/db?sslmode=disable"
    with pytest.raises(ValueError, match="schema given twice"):
        parse_url("postgresql://u@h/db?schema=a", "b")
    with pytest.raises(ValueError, match="plain identifier"):
        parse_url("postgresql://u@h/db?schema=x;drop")


def test_the_display_name_masks_the_password() -> None:
    backend = PostgresBackend("postgresql://app:hunter2@db.example:5432/signals?schema=s")
    assert "hunter2" not in backend.display_name
    assert backend.display_name == "postgresql://app:***@db.example:5432/signals?schema=s"
    assert "hunter2" not in repr(backend)


@needs_postgres
async def test_driver_errors_become_store_errors_and_closed_means_the_store_is_closed(pg_url: str) -> None:
    """A connection the server ended says "closed" too: on an open store that is a DatabaseError."""
    log = await open_store(pg_url).open()
    backend = log.backend
    assert isinstance(backend, PostgresBackend)
    for driver_error in (
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        OSError("connection reset"),
    ):
        with pytest.raises(DatabaseError, match=type(driver_error).__name__), backend._translated():
            raise driver_error
    await log.aclose()
    with pytest.raises(StoreClosed), backend._translated():
        raise asyncpg.InterfaceError("connection is closed")


@needs_postgres
async def test_tables_live_in_the_schema_named_in_the_url(pg: EventStore, schema: str) -> None:
    await pg.append(A, [detected()])
    async with raw(schema) as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)  # type: ignore[attr-defined]
    assert {"events", "schema_migrations"} <= {row[0] for row in tables}
    assert pg.location.endswith(f"schema={schema}")


@needs_postgres
async def test_the_schema_option_picks_the_schema(schema: str) -> None:
    assert POSTGRES_URL
    async with open_store(POSTGRES_URL, schema=schema) as store:
        await store.append(A, [detected()])
    async with open_store(f"{POSTGRES_URL}?schema={schema}") as store:
        assert await store.head_position() == 1


@needs_postgres
async def test_concurrent_openers_apply_each_migration_once(pg_url: str, schema: str) -> None:
    async def opener() -> None:
        async with open_store(pg_url):
            pass

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(opener)
    async with raw(schema) as conn:
        rows = await conn.fetch("SELECT set_name, version FROM schema_migrations")  # type: ignore[attr-defined]
    assert sorted(tuple(row) for row in rows) == [("log", step.version) for step in LOG_MIGRATIONS.steps]


@needs_postgres
async def test_a_database_written_by_a_newer_schema_is_refused(pg_url: str, schema: str) -> None:
    async with open_store(pg_url):
        pass
    async with raw(schema) as conn:
        await conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO schema_migrations VALUES ('log', $1, 'from_the_future', 'now')", LOG_MIGRATIONS.latest + 1
        )
    with pytest.raises(SchemaVersionError, match=r"newer eventstore.*upgrade"):
        async with open_store(pg_url):
            pass


# -- passwords never show --------------------------------------------------


@needs_postgres
@pytest.mark.parametrize("where", ["user part", "query"])
async def test_connection_errors_name_the_database_but_not_the_password(schema: str, where: str) -> None:
    assert POSTGRES_URL
    if where == "query":  # libpq's password parameter
        url = POSTGRES_URL.replace(":5432/", ":1/") + f"?password=s3cret-pw&schema={schema}"
    else:
        url = with_password(POSTGRES_URL, "s3cret-pw").replace(":5432/", ":1/") + f"?schema={schema}"
    with pytest.raises(DatabaseError) as caught:
        async with open_store(url, connect_timeout=5):
            pass
    chain, error = [], caught.value
    while error is not None:
        chain.append(f"{error!r} {error}")
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    assert "s3cret-pw" not in " ".join(chain)
    assert ("***@127.0.0.1:1" if where == "user part" else "password=***") in str(caught.value)


@needs_postgres
async def test_query_errors_are_translated_with_the_password_masked(schema: str) -> None:
    assert POSTGRES_URL
    url = with_password(POSTGRES_URL, "s3cret-pw") + f"?schema={schema}"  # trust auth ignores it
    async with open_store(url) as store:
        assert "s3cret-pw" not in store.location
        with pytest.raises(DatabaseError, match="no_such_table") as caught:
            await store.query("SELECT * FROM no_such_table")
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


# -- append-only in the database ---------------------------------------------


@needs_postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET data = '\\x00'::bytea WHERE position = 1",
        "DELETE FROM events WHERE position = 2",
        "DELETE FROM events",
        "TRUNCATE events",
        "INSERT INTO events SELECT * FROM events WHERE position = 1 "
        "ON CONFLICT (position) DO UPDATE SET stream = 'elsewhere'",
    ],
)
async def test_the_database_refuses_to_change_events(pg: EventStore, schema: str, sql: str) -> None:
    await pg.append(A, [detected(), detected(detected_at=detected().detected_at.replace(hour=10))])
    async with raw(schema) as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute(sql)  # type: ignore[attr-defined]
    assert [e.position async for e in pg.read_all()] == [1, 2]
    assert (await pg.verify()).ok


@needs_postgres
async def test_the_application_role_may_append_and_read_but_never_change_events(
    pg: EventStore, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert POSTGRES_URL
    role = f"app_{uuid.uuid4().hex[:10]}"
    await pg.append(A, [detected()])
    async with raw(schema) as conn:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')  # type: ignore[attr-defined]
        await conn.execute(app_role_sql(schema, role))  # type: ignore[attr-defined]
    app_url = POSTGRES_URL.replace("://postgres@", f"://{role}@") + f"?schema={schema}"
    try:
        async with open_store(app_url) as app:
            await app.append(A, [detected(company_name="Acme 2", detected_at=detected().detected_at.replace(hour=11))])
            assert await app.head_position() == 2
            # A large append takes the COPY path, which needs no more than INSERT (else it would fall back, and warn).
            with caplog.at_level(logging.WARNING, logger="eventstore"):
                await app.append("order:large", [SignalPushed(signal_id=n, notion_page_id="p") for n in range(1, 301)])
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert await app.head_position() == 302
            for sql in (
                "UPDATE events SET stream = 'x'",
                "DELETE FROM events",
                "DROP TRIGGER events_refuse_change ON events",
            ):
                with pytest.raises(DatabaseError, match=r"permission denied|must be owner"):
                    await app.apply([GuardedBatch(None, [Statement(sql)])])
    finally:
        async with raw(schema) as conn:
            await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')  # type: ignore[attr-defined]
    assert (await pg.verify()).ok


# -- LISTEN/NOTIFY -----------------------------------------------------------


@needs_postgres
async def test_an_append_in_another_process_wakes_a_waiting_subscriber(pg_url: str) -> None:
    """A subscriber polling only every 30 s still sees another store's append at once."""
    async with open_store(pg_url) as reader, open_store(pg_url) as writer:
        seen: list[tuple[int, float]] = []

        async def follow() -> None:
            async for event in reader.subscribe(poll_interval=30):
                seen.append((event.position, time.monotonic()))
                if len(seen) == 2:
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await reader.wait_for_append(0.2)  # the subscriber is listening by now
                await writer.append(A, [detected()])
                await anyio.sleep(0.3)
                sent = time.monotonic()
                await writer.append(
                    A, [detected(company_name="Acme 2", detected_at=detected().detected_at.replace(hour=1))]
                )
    assert [position for position, _ in seen] == [1, 2]
    assert seen[1][1] - sent < 2.0


@needs_postgres
async def test_wait_for_append_times_out_when_nothing_happens(pg: EventStore) -> None:
    started = time.monotonic()
    await pg.wait_for_append(0.3)
    assert 0.25 <= time.monotonic() - started < 3


# -- portable SQL --------------------------------------------------------------


def test_quote_literal_doubles_quotes() -> None:
    assert quote_literal("events") == "'events'"
    assert quote_literal("it's") == "'it''s'"


def test_question_marks_become_numbered_placeholders_outside_literals() -> None:
    sql = "SELECT ?, '?', 'it''s ?', \"col?\", $$ ? $$ -- a ? comment\n FROM t /* ? */ WHERE a = ? AND b IN (?, ?)"
    assert numbered(sql) == (
        "SELECT $1, '?', 'it''s ?', \"col?\", $$ ? $$ -- a ? comment\n FROM t /* ? */ WHERE a = $2 AND b IN ($3, $4)"
    )
    assert numbered("SELECT 1") == "SELECT 1"
    assert numbered(sql) is numbered(sql)  # cached


@needs_postgres
async def test_query_takes_portable_sql_and_python_values(pg: EventStore) -> None:
    await pg.append(A, [detected()])
    assert await pg.query("SELECT count(*) FROM events WHERE stream = ? AND type <> '?'", [A]) == [(1,)]
    assert await pg.query("SELECT ? || 'x', ? * 1.5, ?::bytea, ?", [5, 2, b"\x00\x01", None]) == [
        ("5x", 3.0, b"\x00\x01", None)
    ]
    # Sums and averages come back as int / float, as on SQLite, not Decimal.
    assert await pg.query("SELECT sum(version), avg(version) FROM events") == [(1, 1.0)]


@needs_postgres
async def test_guarded_batches_use_portable_sql_and_run_only_when_the_guard_holds(pg: EventStore) -> None:
    await pg.apply([GuardedBatch(None, [Statement("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT)")])])
    insert = Statement("INSERT INTO t VALUES (?, ?)", ("a", 1))
    bump = Statement("UPDATE t SET n = n + 1 WHERE k = ? AND n = ?", ("a", 1))
    skipped: list[bool] = []
    held = await pg.apply(
        [
            GuardedBatch(None, [insert, Statement("INSERT INTO t VALUES (?, ?)", ("b", 7))]),
            GuardedBatch(bump, [Statement("INSERT INTO t VALUES (?, ?)", ("c", 3))]),
            GuardedBatch(bump, [Statement("INSERT INTO t VALUES (?, ?)", ("d", 4))], lambda: skipped.append(True)),
        ]
    )
    assert held == [True, True, False]
    assert skipped == [True]
    assert await pg.query("SELECT k, n FROM t ORDER BY k") == [("a", 2), ("b", 7), ("c", 3)]


# -- operations ----------------------------------------------------------------


@needs_postgres
async def test_stats_report_the_backend_and_the_schema_size(pg: EventStore) -> None:
    await pg.append(A, [detected()])
    await pg.maintain()
    await pg.maintain(vacuum=True)
    stats = await pg.backend_stats()
    assert stats["backend"] == "postgresql"
    assert stats["size_bytes"] == stats["file_size_bytes"] > 0


# -- ordering --------------------------------------------------------------------


@needs_postgres
async def test_reader_never_skips_a_late_commit(pg_url: str) -> None:
    """An append that started first but commits last still gets the lower position, never a hole."""
    async with open_store(pg_url) as slow, open_store(pg_url) as fast, open_store(pg_url) as reader:
        await slow.append(A, [detected()])
        late_appended, fast_done = anyio.Event(), anyio.Event()
        positions: dict[str, list[int]] = {}

        async def late_committer() -> None:
            async with slow.transaction():
                result = await slow.append(
                    A, [detected(company_name="late", detected_at=detected().detected_at.replace(hour=1))]
                )
                positions["late"] = result.positions
                late_appended.set()
                await anyio.sleep(0.5)  # commit late, while another writer is waiting

        async def quick_writer() -> None:
            await late_appended.wait()
            result = await fast.append(company_stream("domain:b.ai"), [detected("domain:b.ai")])
            positions["fast"] = result.positions
            fast_done.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(late_committer)
                tg.start_soon(quick_writer)
                await late_appended.wait()
                await anyio.sleep(0.2)
                assert not fast_done.is_set(), "the second writer must wait for the first to commit"
                assert [e.position async for e in reader.read_all()] == [1]  # nothing uncommitted is visible
        assert positions == {"late": [2], "fast": [3]}
        assert [e.position async for e in reader.read_all()] == [1, 2, 3]


@needs_postgres
async def test_a_database_error_in_a_group_commit_fails_only_its_own_caller(pg: EventStore) -> None:
    """Concurrent appends share one transaction; a read-model constraint one of them breaks fails only that one."""
    from eventstore import RecordedEvent

    await pg.apply([GuardedBatch(None, [Statement("CREATE TABLE seen (stream TEXT PRIMARY KEY)")])])
    await pg.apply([GuardedBatch(None, [Statement("INSERT INTO seen VALUES (?)", ("company:taken",))])])

    def hook(events: Sequence[RecordedEvent]) -> list[GuardedBatch]:
        return [GuardedBatch(None, [Statement("INSERT INTO seen VALUES (?)", (events[0].stream,))])]

    pg.set_inline_hook(hook)
    outcomes: dict[str, object] = {}

    async def append(stream: str) -> None:
        try:
            outcomes[stream] = (await pg.append(stream, [detected(stream)])).positions
        except DatabaseError as exc:
            outcomes[stream] = exc

    async with anyio.create_task_group() as tg:
        for stream in ("company:a", "company:taken", "company:b"):
            tg.start_soon(append, stream)
    assert isinstance(outcomes.pop("company:taken"), DatabaseError)
    assert sorted(p for positions in outcomes.values() for p in positions) == [1, 2]  # type: ignore[attr-defined]
    assert [e.stream async for e in pg.read_all()] == list(outcomes)
    assert sorted(row[0] for row in await pg.query("SELECT stream FROM seen")) == [
        "company:a",
        "company:b",
        "company:taken",
    ]
