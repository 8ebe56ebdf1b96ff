"""PostgreSQL backend (asyncpg): a connection pool in one schema, LISTEN/NOTIFY.

Why the shape:

* Every connection gets ``search_path`` = the store's schema as a startup
  setting, so the SQL (ours and the projections') names tables unqualified.
* Appends serialise on a transaction-scoped advisory lock and take
  ``head + 1`` as the next position; see :meth:`pgwrite.Writes.append_group`
  for why that, and not a sequence, is what keeps readers from skipping events.
* Outside ``transaction()`` and without an inline hook, a group is written by
  one call of the server function ``eventstore_append`` (one round trip; see
  :mod:`eventstore.backends.pgappend`); the general path
  (:mod:`eventstore.backends.pgwrite`) runs when the function declines (a
  version conflict, a recorded id) and inside units of work. A single large
  request is copied in chunk by chunk, in one transaction.
* Concurrent appenders in this process are group committed as on SQLite: one
  transaction (one lock hold, one commit) for every appender that is ready,
  each request in its own SAVEPOINT so a conflict only fails its own caller.
* A single-statement ``INSERT ... SELECT FROM unnest(arrays)`` writes a whole
  batch in one round trip (it measured as fast as COPY for our batch sizes and,
  unlike COPY, carries the ``pg_notify`` in the same statement).
* The projections layer writes portable SQL with ``?`` placeholders;
  :func:`~eventstore.backends.pgtext.numbered` translates them (cached), and
  ``numeric`` results come back as int/float, as SQLite gives them.
* Pooled connections are returned without asyncpg's reset query (we never
  leave session state behind), which saves a round trip per operation; an
  open transaction is still rolled back by asyncpg on release.

Append-only in the database: the trigger from :mod:`eventstore.schema` refuses
UPDATE, DELETE and TRUNCATE on ``events`` for everyone. The role that owns the
table could drop the trigger, though, and revoking privileges from the owner
means nothing — so in production the owner runs the migrations and the
application connects as a separate role holding only what :func:`app_role_sql`
grants (SELECT and INSERT on ``events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import asyncpg

from eventstore.backends.base import Backend, PreparedAppend, WorkerLock
from eventstore.backends.pgappend import BEGIN
from eventstore.backends.pglock import KEEPALIVES, AdvisoryLock, lock_key
from eventstore.backends.pgops import (
    SELECT,
    cause,
    find_ids,
    init_connection,
    migrate_one,
    no_reset,
    portable,
    run_batches,
    tuples,
    undo,
)
from eventstore.backends.pgtext import app_role_sql, parse_url, quote_ident
from eventstore.backends.pgwrite import Outcome as _Outcome
from eventstore.backends.pgwrite import Writes
from eventstore.errors import (
    DatabaseError,
    DuplicateEventError,
    EventStoreError,
    NotFound,
    StoreClosed,
)
from eventstore.migrations import MigrationSet
from eventstore.model import AppendResult, GuardedBatch, InlineHook, Row

__all__ = ("PostgresBackend", "app_role_sql")  # app_role_sql lives in pgtext; re-exported here

log = logging.getLogger("eventstore")
T = TypeVar("T")
Clock = Callable[[], int]

# Lock classes for the two-key advisory locks; the second key is the schema's CRC.
_APPEND_LOCK = 0x45_53_41_50  # "ESAP"
_MIGRATE_LOCK = 0x45_53_4D_47  # "ESMG"


class _Pending:
    __slots__ = ("done", "requests", "result", "withdrawn")

    def __init__(self, requests: Sequence[PreparedAppend]) -> None:
        self.requests = requests
        self.result: _Outcome | None = None
        self.done = False
        #: Its caller left (cancelled) before it was done: never to be sent again.
        self.withdrawn = False


class _UnitOfWork:
    """The connection (in a transaction) that work inside ``transaction()`` joins."""

    __slots__ = ("appended", "conn", "depth", "lock")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.depth = 1
        self.appended = False
        # Tasks spawned inside the unit of work share its connection, one statement at a time.
        self.lock = anyio.Lock()


class PostgresBackend(Backend):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
        server_settings: Mapping[str, str] | None = None,
        create: bool = True,
    ) -> None:
        self._target = parse_url(url, schema)
        self._create = create
        self.schema = self._target.schema
        self.display_name = self._target.display_name
        self._pool_size = (min_connections, max_connections)
        self._connect_timeout = connect_timeout
        # plan_cache_mode: asyncpg keeps every statement prepared, and after five
        # runs PostgreSQL may switch to a generic plan that it keeps until the
        # next ANALYZE. A generic plan made while the events table was nearly
        # empty (a sequential scan) made appends ~10x slower at 50k events
        # (measured). Planning our small statements each time costs far less.
        self._settings = {
            "plan_cache_mode": "force_custom_plan",
            **(server_settings or {}),
            # eventstore_append relies on a fresh snapshot per statement (see schema.py).
            "default_transaction_isolation": "read committed",
            "search_path": quote_ident(self.schema),
        }
        self._channel = f"{self.schema}_events"[:63]
        schema_key = zlib.crc32(self.schema.encode()) - 2**31  # a signed int4
        self._lock_keys = (_APPEND_LOCK, schema_key)
        self._migrate_lock = f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK}, {schema_key})"
        self._pool: Any = None
        self._listener: Any = None
        self._listen_retry_at = 0.0
        self._listen_lock = anyio.Lock()
        self._lock = anyio.Lock(fast_acquire=True)
        self._queue: list[_Pending] = []
        self._uow: contextvars.ContextVar[_UnitOfWork | None] = contextvars.ContextVar(
            f"postgres_tx_{id(self)}", default=None
        )
        self._appended = anyio.Event()
        self._writes = Writes(self._lock_keys, self._channel, self.display_name, self._driver_error)
        self._append_conn: Any = None

    # -- lifecycle -------------------------------------------------------

    async def open(self, log_migrations: MigrationSet) -> None:
        try:
            with self._translated("cannot connect to"), self._url_checked():
                self._pool = await asyncpg.create_pool(
                    self._target.dsn,
                    min_size=self._pool_size[0],
                    max_size=self._pool_size[1],
                    timeout=self._connect_timeout,
                    server_settings=self._settings,
                    init=init_connection,
                    reset=no_reset,
                )
            if not self._create:
                await self._refuse_missing()
            await self._write(self._create_schema, lock=self._migrate_lock)
            await self.migrate(log_migrations)
        except BaseException:
            await self.aclose()
            raise

    @contextlib.contextmanager
    def _url_checked(self) -> Iterator[None]:
        """The driver checks the URL and the connection options when it first connects: one that is
        malformed (a port ``54x2``, a setting that is not a string) is named here."""
        try:
            yield
        except ValueError as exc:
            message = f"invalid PostgreSQL URL or connection option for {self.display_name}: {exc}"
            raise DatabaseError(self._target.masked(message)) from None

    async def _refuse_missing(self) -> None:
        """With ``create=False``: a schema without an event log is a mistake (a typo), not a new store."""
        rows = await self._fetch("SELECT to_regclass(format('%I.events', $1::text)) IS NOT NULL", self.schema)
        if not rows[0][0]:
            raise NotFound(
                f"no store at {self.display_name}: schema {self.schema} holds no event log "
                "(create one with 'eventstore init')"
            )

    async def _create_schema(self, conn: Any) -> None:
        # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
        # even when the schema exists, which an application role may lack.
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema):
            await conn.execute(f"CREATE SCHEMA {quote_ident(self.schema)}")
            log.info("%s: created schema %s", self.display_name, self.schema)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None  # new work now fails with StoreClosed
        listener, self._listener = self._listener, None
        self._appended.set()
        try:
            if pool is not None:
                # A group in flight finishes on the appender first; waiting for it (or for a
                # unit of work holding the lock) is cancellable: then everything is cut below.
                async with self._lock:
                    with anyio.CancelScope(shield=True):
                        await self._drop_appender(pool)
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close(timeout=5)
            if pool is not None:
                await pool.close()  # waits for connections in use (a unit of work, a long read)
        except BaseException:
            # Cut short (cancelled, a deadline): close the rest at once rather than wait or
            # leak it. Units of work and reads still running lose their connection.
            if listener is not None and not listener.is_closed():
                listener.terminate()
            if pool is not None:
                pool.terminate()
            raise

    def set_inline_hook(self, hook: InlineHook | None) -> None:
        self._writes.hook = hook

    # -- connections and the error boundary --------------------------------

    @contextlib.contextmanager
    def _translated(self, doing: str = "error on") -> Iterator[None]:
        """The one boundary where driver errors become EventStoreErrors (password masked)."""
        try:
            yield
        except EventStoreError:
            raise
        except asyncpg.PostgresError as exc:
            raise self._driver_error(exc) from cause(exc, self._target.secrets)
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
            # "closed" from the driver means this store's close only if the store is closing:
            # a connection the server ended mid-statement says "closed" too, on an open store.
            if self._pool is None and isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc).lower():
                raise StoreClosed(f"the store on {self.display_name} is closed") from exc
            raise self._error(DatabaseError, doing, exc) from cause(exc, self._target.secrets)

    def _driver_error(self, exc: BaseException) -> EventStoreError:
        # Only a repeated event id is a duplicate; read models' own constraints are
        # not (they must not look like an idempotency hit).
        if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "events_event_id_key":
            return self._error(DuplicateEventError, "event id already recorded in", exc)
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            return self._error(DatabaseError, "constraint failed in", exc)
        return self._error(DatabaseError, "error on", exc)

    def _error(self, kind: type[EventStoreError], doing: str, exc: BaseException) -> EventStoreError:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return kind(f"PostgreSQL {doing} {self.display_name}: {self._target.masked(text)}")

    @contextlib.asynccontextmanager
    async def _pooled(self) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StoreClosed(f"the store on {self.display_name} is closed")
        with self._translated():
            async with pool.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    _end_if_desynchronised(conn, exc)
                    raise

    @contextlib.asynccontextmanager
    async def _appender(self) -> AsyncIterator[Any]:
        """The connection a group leader appends on (only the leader, under ``self._lock``, uses it).

        Kept out of the pool between groups, which saves an acquire and a
        release per append (~15% of a single append, measured); handed back to
        the pool, which replaces it if broken, when work on it fails. A pool of
        one connection is never held back from the readers.
        """
        if self._pool_size[1] < 2:
            async with self._pooled() as pooled:
                yield pooled
            return
        conn = self._append_conn
        if conn is not None and _ended(conn):  # the server ended it while idle: the pool reconnects
            await self._drop_appender()
            conn = None
        if conn is None:
            pool = self._pool
            if pool is None:
                raise StoreClosed(f"the store on {self.display_name} is closed")
            with self._translated():
                conn = self._append_conn = await pool.acquire()
        try:
            with self._translated():
                yield conn
        except BaseException as exc:
            _end_if_desynchronised(conn, exc)
            await self._drop_appender()
            raise

    async def _drop_appender(self, pool: Any = None) -> None:
        """Hand the appender back to ``pool`` (the open one by default); while closing, aclose does it."""
        pool = pool if pool is not None else self._pool
        conn = self._append_conn
        if conn is None or pool is None:
            return
        self._append_conn = None
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """The unit of work's connection if inside ``transaction()``, else a pooled one."""
        uow = self._uow.get()
        if uow is None:
            async with self._pooled() as conn:
                yield conn
            return
        async with uow.lock:
            with self._translated():
                yield uow.conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _write(self, work: Callable[[Any], Awaitable[T]], *, lock: str = "") -> T:
        """Run ``work(conn)`` in its own transaction, or a savepoint of the unit of work."""
        inside = self._uow.get() is not None
        begin, commit, rollback = (
            ("SAVEPOINT es_write", "RELEASE es_write", "ROLLBACK TO es_write; RELEASE es_write")
            if inside
            else (BEGIN, "COMMIT", "ROLLBACK")
        )
        async with self._connection() as conn:
            try:
                await conn.execute(f"{begin}; {lock}" if lock else begin)
                result = await work(conn)
                await conn.execute(commit)
            except BaseException:
                await undo(conn, self.display_name, rollback, keep=inside)
                raise
        return result

    # -- appends ---------------------------------------------------------

    async def append(self, requests: Sequence[PreparedAppend], clock: Clock) -> list[AppendResult]:
        uow = self._uow.get()
        if uow is not None:
            outcomes = await self._write(
                lambda conn: self._writes.write_items(conn, [requests], clock), lock=self._writes.append_lock
            )
            uow.appended = True
            return _result(outcomes[0])
        item = _Pending(requests)
        self._queue.append(item)
        try:
            # Group commit: give every other ready appender one turn to join this transaction.
            await anyio.lowlevel.checkpoint()
            async with self._lock:
                if not item.done:
                    await self._lead(item, clock)
        except BaseException:
            # Cancelled while queued: withdraw, or a later group would write it behind the caller's back.
            # (Already in a group's transaction, it stays there: its outcome is unknown to the caller.)
            item.withdrawn = True
            if item in self._queue:
                self._queue.remove(item)
            raise
        assert item.result is not None
        return _result(item.result)

    async def append_streamed(self, chunks: Iterator[PreparedAppend], clock: Clock) -> AppendResult | None:
        if self._uow.get() is not None:
            return None
        # The group lock, held while the chunks are prepared: appenders of this
        # process queue meanwhile and go as one group afterwards.
        async with self._lock:
            if self._writes.hook is not None:  # (set while we waited, perhaps)
                return None
            async with self._appender() as conn:
                result = await self._writes.append_streamed(conn, chunks, clock)
        if result is not None:
            self._notify()
        return result

    async def _lead(self, mine: _Pending, clock: Clock) -> None:
        """Commit everything queued, as one group; every caller in it gets its own outcome."""
        group, self._queue = self._queue, []
        try:
            with anyio.CancelScope(shield=True):  # the group's callers all wait on this outcome
                results = await self._append_group(group, clock)
        except asyncio.CancelledError:
            # A plain asyncio cancellation (task.cancel(), asyncio.wait_for) gets through anyio's
            # shield and stops the group's statement: whether it committed is unknown. The others
            # go again, which is idempotent: their events carry the ids they were given already,
            # now looked up before anything is written.
            others = [pending for pending in group if pending is not mine and not pending.withdrawn]
            for pending in others:
                pending.requests = [request.retried() for request in pending.requests]
            self._queue[:0] = others
            raise
        except BaseException as exc:  # the whole group failed (e.g. connection lost)
            results = [exc] * len(group)
        for pending, outcome in zip(group, results, strict=True):
            pending.result, pending.done = outcome, True
        self._notify()

    async def _append_group(self, group: list[_Pending], clock: Clock) -> list[_Outcome]:
        async with self._appender() as conn:
            return await self._writes.append_group(conn, [pending.requests for pending in group], clock)

    def _notify(self) -> None:
        self._appended.set()
        self._appended = anyio.Event()

    # -- units of work ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        uow = self._uow.get()
        if uow is not None:
            async with self._savepoint(uow):
                yield
            return
        # A unit of work is a writer from its first statement, as on SQLite: it
        # waits for this process's appenders, then for the append lock, before
        # it reads anything. Taking the lock first in every writer is also what
        # keeps a unit of work that writes read rows and then appends from
        # deadlocking against another process's append updating those rows.
        failure: BaseException | None = None
        async with self._lock, self._pooled() as conn:
            try:
                await conn.execute(f"{BEGIN}; {self._writes.append_lock}")
            except BaseException:  # e.g. cancelled while waiting for the lock: BEGIN may have run
                await undo(conn, self.display_name)
                raise
            uow = _UnitOfWork(conn)
            token = self._uow.set(uow)
            try:
                yield
            except BaseException as exc:
                self._uow.reset(token)
                with anyio.CancelScope(shield=True):
                    await undo(conn, self.display_name)
                _end_if_desynchronised(conn, exc)
                failure = exc  # raised below, outside the boundary that translates the store's own errors
            else:
                self._uow.reset(token)
                with anyio.CancelScope(shield=True):
                    try:
                        status = await conn.execute("COMMIT")
                    except BaseException:
                        await undo(conn, self.display_name)
                        raise
                if status != "COMMIT":
                    # The server ended the transaction as failed (a statement in it was cancelled or
                    # failed and the body carried on): COMMIT then rolls back and says so.
                    raise DatabaseError(
                        f"the unit of work on {self.display_name} was rolled back, not committed: "
                        "a statement in it failed or was cancelled (nothing of it was written)"
                    )
        if failure is not None:
            if isinstance(failure, _DRIVER_ERRORS):  # the driver's (from a statement of ours): translated
                with self._translated():
                    raise failure
            raise failure  # the application's own (an OSError, a deadline): as it came, as on SQLite
        if uow.appended:
            self._notify()

    @contextlib.asynccontextmanager
    async def _savepoint(self, uow: _UnitOfWork) -> AsyncIterator[None]:
        name = f"es_tx_{uow.depth}"
        async with self._connection() as conn:
            await conn.execute(f"SAVEPOINT {name}")
        uow.depth += 1
        try:
            yield
        except BaseException:
            await undo(uow.conn, self.display_name, f"ROLLBACK TO {name}; RELEASE {name}", keep=True)
            raise
        finally:
            uow.depth -= 1
        async with self._connection() as conn:
            await conn.execute(f"RELEASE {name}")

    async def apply(self, batches: Sequence[GuardedBatch]) -> list[bool]:
        return await self._write(lambda conn: run_batches(conn, batches))

    # -- reads -----------------------------------------------------------

    async def read_all(
        self, from_position: int, limit: int, types: Sequence[str] | None, stream_prefix: str | None
    ) -> list[Row]:
        sql = f"{SELECT} WHERE position >= $1"
        args: list[Any] = [from_position]
        if types is not None:
            args.append(list(types))
            sql += f" AND type = ANY(${len(args)}::text[])"
        if stream_prefix:
            # starts_with, not a range: text comparison follows the collation, not code points.
            args.append(stream_prefix)
            sql += f" AND starts_with(stream, ${len(args)})"
        args.append(limit)
        sql += f" ORDER BY position LIMIT ${len(args)}"
        return tuples(await self._fetch(sql, *args))

    async def read_stream(self, stream: str, from_version: int, backwards: bool, limit: int) -> list[Row]:
        op, order = ("<=", "DESC") if backwards else (">=", "ASC")
        sql = f"{SELECT} WHERE stream = $1 AND version {op} $2 ORDER BY version {order} LIMIT $3"
        return tuples(await self._fetch(sql, stream, from_version, limit))

    async def read_positions(self, positions: Sequence[int]) -> list[Row]:
        sql = f"{SELECT} WHERE position = ANY($1::bigint[]) ORDER BY position"
        return tuples(await self._fetch(sql, list(positions)))

    async def head(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(position), 0) FROM events")
        return int(rows[0][0])

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch("SELECT coalesce(max(version), 0) FROM events WHERE stream = $1", stream)
        return int(rows[0][0])

    async def find_event_ids(self, event_ids: Sequence[bytes]) -> list[Row]:
        async with self._connection() as conn:
            return await find_ids(conn, list(event_ids))

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            rows = await portable(conn, "fetch", sql, params)
        return [tuple(row) for row in rows]

    async def wait_for_append(self, timeout: float) -> None:
        # Appends in this process wake us at once; other processes' through
        # NOTIFY. Either way it is a hint: the caller re-reads by position.
        event = self._appended
        await self._listen()
        with anyio.move_on_after(timeout):
            await event.wait()

    async def _listen(self) -> None:
        if (self._listener is not None and not self._listener.is_closed()) or self._pool is None:
            return
        if time.monotonic() < self._listen_retry_at:
            return
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._target.dsn, timeout=self._connect_timeout, server_settings=self._settings
                )
                await conn.add_listener(self._channel, self._on_notification)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self._listen_retry_at = time.monotonic() + 5.0
                log.warning("%s: LISTEN failed (%s); new events are polled", self.display_name, type(exc).__name__)
                if conn is not None:
                    conn.terminate()
                return
            except BaseException:  # cancelled while connecting or listening: the connection is nobody's
                if conn is not None:
                    conn.terminate()
                raise
            if self._pool is None:  # closed while we connected
                await conn.close()
                return
            # Its session ending (a server restart, a terminated backend) wakes the waiters: they
            # read by position at once and listen again, instead of sleeping out their timeout.
            conn.add_termination_listener(self._on_listener_lost)
            self._listener = conn

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._notify()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None
        self._notify()

    # -- schema and maintenance -----------------------------------------

    async def migrate(self, migrations: MigrationSet) -> list[str]:
        applied: list[str] = []
        while True:
            # The advisory lock makes concurrent openers take turns: the second
            # one sees the first one's record and has nothing left to do.
            step = await self._write(
                lambda conn: migrate_one(conn, migrations, self.display_name), lock=self._migrate_lock
            )
            if step is None:
                return applied
            log.info("%s: applied migration %s #%d %s", self.display_name, migrations.name, step[0], step[1])
            applied.append(step[1])

    async def applied_migrations(self) -> dict[str, int]:
        rows = await self._fetch("SELECT set_name, max(version) FROM schema_migrations GROUP BY set_name")
        return {name: int(version) for name, version in rows}

    async def _tables(self) -> list[str]:
        rows = await self._fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'p') ORDER BY c.relname",
            self.schema,
        )
        return [row[0] for row in rows]

    def worker_lock(self, name: str) -> WorkerLock:
        return AdvisoryLock(lock_key(self.schema, name), self._lock_connection, self._translated)

    async def _lock_connection(self) -> Any:
        if self._pool is None:
            raise StoreClosed(f"the store on {self.display_name} is closed")
        settings = {**self._settings, **KEEPALIVES}
        return await asyncpg.connect(self._target.dsn, timeout=self._connect_timeout, server_settings=settings)

    async def stats(self) -> dict[str, Any]:
        rows = await self._fetch(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, current_setting('server_version') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'p')",
            self.schema,
        )
        size, version = rows[0]
        return {
            "backend": "postgresql",
            "schema": self.schema,
            "server_version": version,
            "size_bytes": int(size),
            "file_size_bytes": int(size),  # the name SQLite reports, for compatibility
        }

    async def maintain(self, *, vacuum: bool) -> None:
        # Only this schema's tables: a bare VACUUM/ANALYZE would process the whole database.
        tables = ", ".join(f"{quote_ident(self.schema)}.{quote_ident(name)}" for name in await self._tables())
        if not tables:
            return
        async with self._pooled() as conn:  # VACUUM cannot run inside a transaction block
            await conn.execute(f"VACUUM (ANALYZE) {tables}" if vacuum else f"ANALYZE {tables}")


# -- module helpers -------------------------------------------------------


def _ended(conn: Any) -> bool:
    """Whether a held pool connection is closed (asyncpg hands a connection the server ended back to the pool)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # already released by the pool
        return True


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _end_if_desynchronised(conn: Any, exc: BaseException) -> None:
    """End a connection the driver lost track of (InternalClientError: its protocol state is unknown).

    Released as it is, the pool would reset it and hand it out again; ended,
    the pool opens a fresh one in its place. ``exc`` may be translated already.
    """
    if isinstance(exc, asyncpg.InternalClientError) or isinstance(exc.__cause__, asyncpg.InternalClientError):
        with contextlib.suppress(asyncpg.InterfaceError):  # already released by the pool
            conn.terminate()


def _result(outcome: _Outcome) -> list[AppendResult]:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
