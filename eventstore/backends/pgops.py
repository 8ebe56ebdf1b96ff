"""What runs on an asyncpg connection: the general append path's state read,
guarded batches in portable SQL, and the pool's connection hooks.

Functions of a connection, used by :mod:`eventstore.backends.postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg

from eventstore.backends.base import PreparedAppend
from eventstore.backends.pgtext import coerce, number, numbered, rowcount
from eventstore.backends.plan import LogState, repeatable_ids
from eventstore.codec import GENESIS_HASH
from eventstore.migrations import MIGRATIONS_TABLE, MigrationSet
from eventstore.model import GuardedBatch, Row, Statement

__all__ = (
    "COLUMNS",
    "INSERT",
    "SELECT",
    "cause",
    "find_ids",
    "init_connection",
    "migrate_one",
    "no_reset",
    "portable",
    "read_head",
    "read_state",
    "run_batches",
    "tuples",
    "undo",
)

log = logging.getLogger("eventstore")
COLUMNS = "position, event_id, stream, version, type, schema_version, recorded_at, metadata, data, hash"
SELECT = f"SELECT {COLUMNS} FROM events"
# One round trip per group: the head of the log, each stream's version (in the
# order given; one index probe each), and whether any of the given ids exists.
_LAST_EVENT = """FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1) AS h ON true"""
_STATE = f"""SELECT h.position, h.hash, h.recorded_at,
       (SELECT array_agg(coalesce((SELECT max(version) FROM events WHERE stream = u.stream), 0) ORDER BY u.i)
          FROM unnest($1::text[]) WITH ORDINALITY AS u(stream, i)),
       EXISTS (SELECT 1 FROM events WHERE event_id = ANY($2::bytea[]))
{_LAST_EVENT}"""
# The head and one stream's version, for a large append (no id probe: a recorded id fails its COPY).
_HEAD = f"""SELECT h.position, h.hash, h.recorded_at, (SELECT max(version) FROM events WHERE stream = $1)
{_LAST_EVENT}"""
INSERT = f"""WITH written AS (
    INSERT INTO events ({COLUMNS})
    SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::bigint[], $5::text[],
                         $6::integer[], $7::bigint[], $8::bytea[], $9::bytea[], $10::bytea[])
) SELECT pg_notify($11, $12)"""


async def undo(conn: Any, display_name: str, sql: str = "ROLLBACK", *, keep: bool = False) -> None:
    """Roll back with ``sql`` whether or not the client knows of an open transaction.

    A BEGIN cancelled in flight (while it waited for a lock, say) may have
    opened one that the client does not know of yet; asyncpg lets the next
    statement wait for that cancellation to finish. Outside a transaction a
    ROLLBACK only draws a server notice. A failure is logged, never raised over
    the error being handled; a connection that cannot take the statement (lost,
    out of step, or no answer within ``UNDO_GRACE`` seconds) is ended, so the
    server rolls back.

    Cancelled meanwhile, the connection is ended at once; with ``keep`` (a
    savepoint of a unit of work, whose connection must stay usable) the
    statement is let finish instead, and the cancellation raised afterwards.
    """
    try:
        if conn.is_closed():
            return
    except asyncpg.InterfaceError:  # lost, so asyncpg already took it back from us: nothing to roll back
        return
    statement = asyncio.ensure_future(conn.execute(sql))
    statement.add_done_callback(_retrieved)
    loop = asyncio.get_running_loop()
    deadline: float | None = loop.time() + UNDO_GRACE
    cancelled: asyncio.CancelledError | None = None
    while not statement.done():
        if deadline is not None and loop.time() >= deadline:
            _terminate(conn)  # no answer: the statement now fails at once, the server rolls back
            deadline = None
        try:
            with anyio.CancelScope(shield=True):  # stops anyio's cancellation; asyncio's gets through
                await asyncio.wait((statement,), timeout=None if deadline is None else deadline - loop.time())
        except asyncio.CancelledError as exc:
            if not keep:
                _terminate(conn)
                raise
            cancelled = cancelled or exc
    if not statement.cancelled() and (failed := statement.exception()) is not None:
        _undo_failed(conn, display_name, failed)
    if cancelled is not None:
        raise cancelled


#: Seconds a rollback may take before its connection is ended instead (see :func:`undo`).
UNDO_GRACE = 10.0


def _undo_failed(conn: Any, display_name: str, exc: BaseException) -> None:
    if isinstance(exc, asyncpg.InvalidSavepointSpecificationError):
        return  # the savepoint was never made (its statement failed): nothing of it to undo
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return  # lost (or ended by us): the server rolls back; the error being handled says what happened
    if isinstance(exc, asyncpg.PostgresError):  # the connection works; its transaction ends with the error
        log.warning("%s: rollback failed: %s", display_name, type(exc).__name__)
        return
    log.warning("%s: rollback failed (%s); closing the connection", display_name, type(exc).__name__)
    _terminate(conn)


def _retrieved(statement: asyncio.Future[Any]) -> None:
    if not statement.cancelled():
        statement.exception()  # retrieved: a failed rollback is logged by undo, or moot once the connection ended


def _terminate(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.terminate()


async def init_connection(conn: Any) -> None:
    # SQLite hands back ints and floats for sums and averages; so do we (not Decimal).
    await conn.set_type_codec("numeric", encoder=str, decoder=number, schema="pg_catalog", format="text")


async def no_reset(conn: Any) -> None:
    """Pool reset hook: asyncpg still rolls back an open transaction; we keep no other session state."""


def tuples(records: list[Any]) -> list[Row]:
    return [tuple(record) for record in records]


def cause(exc: BaseException, secrets: Sequence[str]) -> BaseException | None:
    """Chain the driver error unless its text would reveal a secret of the URL (a password)."""
    text = str(exc)
    if any(secret in text for secret in secrets):
        return None
    return exc


async def read_state(conn: Any, items: list[Sequence[PreparedAppend]]) -> LogState:
    streams = list(dict.fromkeys(request.stream for requests in items for request in requests))
    ids = repeatable_ids(items)
    position, hash_, recorded_at, versions, any_known = await conn.fetchrow(_STATE, streams, ids)
    known = {bytes(row[1]): row for row in await find_ids(conn, ids)} if any_known else {}
    head = (position, hash_, recorded_at) if position is not None else (0, GENESIS_HASH, 0)
    return LogState(head, dict(zip(streams, versions or (), strict=True)), known)


async def read_head(conn: Any, stream: str) -> LogState:
    """The log's head and ``stream``'s version, as a state that knows no event ids."""
    position, hash_, recorded_at, version = await conn.fetchrow(_HEAD, stream)
    head = (position, hash_, recorded_at) if position is not None else (0, GENESIS_HASH, 0)
    return LogState(head, {stream: version or 0}, {})


async def find_ids(conn: Any, event_ids: list[bytes]) -> list[Row]:
    return tuples(await conn.fetch(f"{SELECT} WHERE event_id = ANY($1::bytea[])", event_ids))


async def run_batches(conn: Any, batches: Sequence[GuardedBatch]) -> list[bool]:
    held: list[bool] = []
    for guard, statements, on_skip in batches:
        if guard is not None and rowcount(await portable(conn, "execute", guard.sql, guard.params)) != 1:
            held.append(False)
            if on_skip is not None:
                on_skip()
            continue
        await _execute_grouped(conn, statements)
        held.append(True)
    return held


async def _execute_grouped(conn: Any, statements: Sequence[Statement]) -> None:
    """Run statements in order; runs of the same SQL go through one (pipelined) executemany."""
    index, count = 0, len(statements)
    while index < count:
        sql = statements[index].sql
        end = index + 1
        while end < count and statements[end].sql == sql:
            end += 1
        if end - index == 1:
            await portable(conn, "execute", sql, statements[index].params)
        else:
            await portable(conn, "executemany", sql, [s.params for s in statements[index:end]])
        index = end


async def portable(conn: Any, method: str, sql: str, params: Sequence[Any]) -> Any:
    """``conn.fetch``/``execute(sql, *params)`` or ``executemany(sql, params)`` for portable SQL.

    Parameters are bound with the types PostgreSQL inferred; when a value does
    not fit (an int bound to a text column, say), it is converted and retried.
    """
    sql = numbered(sql)
    many = method == "executemany"
    try:
        return await (getattr(conn, method)(sql, params) if many else getattr(conn, method)(sql, *params))
    except asyncpg.DataError as exc:
        if "invalid input for query argument" not in str(exc):
            raise
        prepared = await conn.prepare(sql)
        types = [param.name for param in prepared.get_parameters()]
    if many:
        return await conn.executemany(sql, [_coerced(row, types) for row in params])
    return await getattr(conn, method)(sql, *_coerced(params, types))


def _coerced(params: Sequence[Any], types: Sequence[str]) -> list[Any]:
    return [coerce(value, name) for value, name in zip(params, types, strict=True)]


async def migrate_one(conn: Any, migrations: MigrationSet, where: str) -> tuple[int, str] | None:
    """Apply the next pending step of ``migrations`` with its record (in the caller's transaction), or None."""
    await conn.execute(MIGRATIONS_TABLE)
    done = await conn.fetchval(
        "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE set_name = $1", migrations.name
    )
    step = migrations.next_step(done, where)
    if step is None:
        return None
    for sql in step.statements("postgresql"):
        await conn.execute(sql)
    await conn.execute(
        "INSERT INTO schema_migrations VALUES ($1, $2, $3, "
        """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))""",
        migrations.name,
        step.version,
        step.name,
    )
    return step.version, step.name
