"""PostgreSQL sessions and their edges: the lock's and the listener's sessions ending, a close under a
deadline, errors that belong to the application or to one caller, secrets and malformed URLs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from eventstore import (
    DatabaseError,
    EventStoreError,
    GuardedBatch,
    RecordedEvent,
    SignalPushed,
    Statement,
    WorkerLockLost,
    open_store,
)
from eventstore.backends.postgres import PostgresBackend
from tests.conftest import POSTGRES_URL
from tests.test_worker_failover import end_lock_session

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


async def terminate(pid: int) -> None:
    """End the server session ``pid`` (what a server restart or a cut connection does)."""
    assert POSTGRES_URL
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


def long_sleep(url: str) -> str:
    """A 600 s statement, tagged with the test's schema so that :func:`end_sleepers` ends only its own."""
    return f"SELECT pg_sleep(600) /* {url.rpartition('schema=')[2]} */"


async def end_sleepers(url: str) -> None:
    """The server runs a statement whose client is gone until it ends: end this test's long sleeps."""
    assert POSTGRES_URL
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
            long_sleep(url),
        )
    finally:
        await admin.close()


async def test_a_holder_hears_at_once_that_its_lock_session_ended(postgres_store_url: str) -> None:
    """The server frees the lock the moment the session ends: the holder is stopped when its socket closes,
    not at its next check (600 s away here; the bound below is far shorter), so a standby does not work
    beside it meanwhile."""
    running, stopped = anyio.Event(), anyio.Event()

    async def holder(log: Any) -> None:
        with contextlib.suppress(WorkerLockLost):
            async with log.worker_lock("review-lock", poll_interval=600) as held:
                assert held
                running.set()
                try:
                    await anyio.sleep_forever()
                finally:
                    stopped.set()

    async with open_store(postgres_store_url) as log:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder, log)
                await running.wait()
                await end_lock_session(postgres_store_url, "review-lock")
                await stopped.wait()
    assert stopped.is_set()


async def test_a_statement_timeout_in_one_callers_hook_fails_only_that_caller(postgres_store_url: str) -> None:
    """A statement_timeout ends one statement, not the session: only the caller whose statement hit it fails
    (it used to count as a lost connection and fail the whole group)."""

    def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
        slow = [Statement("SELECT pg_sleep(1)")] if recorded[0].stream == "company:slow" else []
        return [GuardedBatch(None, slow)]

    async with open_store(postgres_store_url, server_settings={"statement_timeout": "300ms"}) as log:
        log.set_inline_hook(hook)
        with anyio.fail_after(30):
            outcomes = await asyncio.gather(
                *(log.append(s, [pushed(1)]) for s in ["company:a", "company:slow", "company:b"]),
                return_exceptions=True,
            )
        log.set_inline_hook(None)
        assert [type(o).__name__ for o in outcomes] == ["AppendResult", "DatabaseError", "AppendResult"], outcomes
        assert "QueryCanceled" in str(outcomes[1])
        assert [e.stream async for e in log.read_all()] == ["company:a", "company:b"]


async def test_an_error_raised_by_the_body_of_a_unit_of_work_passes_through_unchanged(postgres_store_url: str) -> None:
    """The application's own OSError or deadline inside transaction() is its own, as on SQLite (it used to come
    out as a PostgreSQL DatabaseError); the unit of work is rolled back all the same."""
    async with open_store(postgres_store_url) as log:
        with anyio.fail_after(10):
            with pytest.raises(ConnectionRefusedError, match="the CRM is down"):
                async with log.transaction():
                    await log.append("s:a", [pushed(1)])
                    raise ConnectionRefusedError("the CRM is down")
            with pytest.raises(TimeoutError):
                async with log.transaction():
                    await log.append("s:a", [pushed(1)])
                    with anyio.fail_after(0.05):  # the application's own deadline inside the unit of work
                        await anyio.sleep(1)
        assert await log.head_position() == 0
        async with log.transaction():  # and the store goes on
            await log.append("s:a", [pushed(1)])
        assert await log.head_position() == 1


async def test_an_ssl_key_passphrase_in_the_url_is_never_printed(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "k3y-s3cret"
    caplog.set_level(logging.INFO, logger="eventstore")
    with anyio.fail_after(20):
        async with open_store(f"{postgres_store_url}&sslpassword={secret}") as log:
            with pytest.raises(DatabaseError) as caught:
                await log.query("SELECT * FROM no_such_table")
            shown = [log.location, str(caught.value), *(record.getMessage() for record in caplog.records)]
    assert "sslpassword=***" in log.location
    assert not [text for text in shown if secret in text], shown


async def test_a_close_under_a_deadline_does_not_wait_for_a_long_read(postgres_store_url: str) -> None:
    """The report would run for 600 s: the close under a 1 s deadline ends it (the bound below is 30 s)."""
    log = await open_store(postgres_store_url).open()
    ended: list[str] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def report() -> None:
                    try:
                        await log.query(long_sleep(postgres_store_url))  # the server keeps it running: ended below
                    except EventStoreError as exc:
                        ended.append(type(exc).__name__)

                tg.start_soon(report)
                await anyio.sleep(0.3)  # the report runs on a pooled connection
                with anyio.move_on_after(1):
                    await log.aclose()
    finally:
        await log.aclose()
        await end_sleepers(postgres_store_url)
    assert ended == ["DatabaseError"]  # its connection was ended, not waited for


async def test_a_waiter_cancelled_while_the_listener_connects_leaves_no_connection_open(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    connect = asyncpg.connect
    waiter = anyio.CancelScope()

    async def connected_then_cancelled(*args: Any, **kwargs: Any) -> Any:
        conn = await connect(*args, **kwargs)
        opened.append(conn)
        waiter.cancel()  # the waiter's deadline fires now: the cancellation lands in the LISTEN round trip
        return conn

    async with open_store(postgres_store_url) as log:
        backend = log.backend
        assert isinstance(backend, PostgresBackend)
        monkeypatch.setattr(asyncpg, "connect", connected_then_cancelled)
        try:
            with anyio.fail_after(20):
                with waiter:
                    await log.wait_for_append(5)
                assert waiter.cancelled_caught
            leaked = [conn for conn in opened if not conn.is_closed() and conn is not backend._listener]
        finally:
            for conn in opened:
                conn.terminate()
    assert opened and not leaked, f"{len(leaked)} listener connection(s) left open by a cancelled wait"


async def test_a_lost_listener_wakes_its_waiters_and_is_replaced(postgres_store_url: str) -> None:
    """The listener's session ends while a subscriber waits (a server restart): the waiter wakes to read by
    position, and the next wait listens on a new connection, which hears the next append."""
    async with open_store(postgres_store_url) as reader, open_store(postgres_store_url) as writer:
        backend = reader.backend
        assert isinstance(backend, PostgresBackend)
        with anyio.fail_after(30):
            await reader.wait_for_append(0.1)  # the listener is connected
            assert backend._listener is not None
            # Each wait would sleep 600 s unless woken: the bound above (30 s) fails a waiter left asleep.
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.wait_for_append, 600)
                await anyio.sleep(0.2)  # the subscriber is waiting on the live listener
                await terminate(backend._listener.get_server_pid())

            async def append_soon() -> None:
                await anyio.sleep(0.3)
                await writer.append("s:a", [pushed(1)])

            async with anyio.create_task_group() as tg:
                tg.start_soon(append_soon)
                await reader.wait_for_append(600)  # heard through the new listener
            assert backend._listener is not None and not backend._listener.is_closed()


async def test_a_malformed_url_is_one_clear_error(postgres_store_url: str) -> None:
    url = postgres_store_url.replace(":5432/", ":54x2/") + "&password=hunter2"
    with anyio.fail_after(10), pytest.raises(DatabaseError, match="URL or connection option") as caught:
        async with open_store(url):
            pass
    assert "hunter2" not in str(caught.value)


async def test_a_close_under_a_deadline_does_not_wait_for_a_unit_of_work(postgres_store_url: str) -> None:
    """A unit of work holds the append lock for its whole body (600 s here): the close's wait for it is
    cancellable, and the unit loses its connection (nothing of it is written)."""
    log = await open_store(postgres_store_url).open()
    begun = anyio.Event()
    ended: list[str] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def unit() -> None:
                    try:
                        async with log.transaction():
                            await log.append("s:a", [pushed(1)])
                            begun.set()
                            await log.query(long_sleep(postgres_store_url))  # a long statement in the unit
                    except EventStoreError as exc:
                        ended.append(type(exc).__name__)

                tg.start_soon(unit)
                await begun.wait()
                with anyio.move_on_after(1):
                    await log.aclose()
    finally:
        await log.aclose()
        await end_sleepers(postgres_store_url)  # its session would hold the unit's locks until the sleep ends
    assert ended == ["DatabaseError"]
    async with open_store(postgres_store_url) as again:
        assert await again.head_position() == 0


async def test_a_bad_connection_option_is_named_as_such(postgres_store_url: str) -> None:
    """A mistake in the options (an int server setting) is not blamed on the URL alone."""
    with anyio.fail_after(10), pytest.raises(DatabaseError, match="URL or connection option") as caught:
        async with open_store(postgres_store_url, server_settings={"statement_timeout": 300}):
            pass
    assert "server_settings" in str(caught.value)
