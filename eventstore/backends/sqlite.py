"""SQLite backend (aiosqlite): one writer connection, one reader connection, WAL.

Why the shape (measured on the 2-core target machine, see README "Performance"):

* An aiosqlite round trip costs ~150 µs here (6.5k no-op awaits/s), while a
  whole single-event transaction in sqlite3 costs ~33 µs. One hop per append
  would cap appends at a fifth of what SQLite can do. So work that cannot
  block — WAL reads, and a write transaction once ``BEGIN IMMEDIATE`` got the
  lock without waiting under ``synchronous=NORMAL`` — runs inline on the event
  loop thread. Anything that may wait (another process holds the write lock,
  an fsync per commit under ``synchronous=FULL``, VACUUM) is handed to the
  connection's aiosqlite thread, whose busy loop retries with a warning.
* Concurrent appenders in this process are *group committed*: an appender
  yields once so that every ready appender can queue, then one transaction
  takes the whole queue, planned in memory (:mod:`eventstore.backends.plan`)
  so one request's WrongExpectedVersion does not affect its neighbours.
* The writer remembers the head and stream versions it committed and skips
  the state read while no other connection has committed since
  (:class:`~eventstore.backends.sqliteops.StateCache`).
* Several processes serialise on SQLite's write lock, so positions are
  ``head + 1`` under the lock: contiguous and in commit order, and a reader
  paging by position can never skip a late commit.
* Reads use their own connection: under WAL they never wait behind a write.

What runs on a connection (the state read, batches, error translation, the
background checkpointer) lives in :mod:`eventstore.backends.sqliteops`; what
one append transaction does (plan, insert, inline hook) in
:mod:`eventstore.backends.sqlitewrite`. This module decides where and when:
inline or on the thread, group commit, units of work, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
import anyio

from eventstore.backends.base import Backend, PreparedAppend, WorkerLock, wait_out
from eventstore.backends.filelock import FileLock, MemoryLock, lock_path
from eventstore.backends.sqliteops import (
    CHECKPOINT_CHANGES,
    COLUMNS,
    UNCHECKED,
    Checkpointer,
    checkpoint_first,
    commit,
    fetch_positions,
    fetchall,
    find_ids,
    foreign_schema,
    foreign_tables,
    is_busy,
    migrate_one,
    rollback,
    run_batches,
    translated,
)
from eventstore.backends.sqlitewrite import StaleState, Writes
from eventstore.errors import DatabaseError, EventStoreError, SchemaVersionError, StoreClosed
from eventstore.migrations import MigrationSet
from eventstore.model import AppendResult, GuardedBatch, InlineHook, Row

__all__ = ("SqliteBackend",)

log = logging.getLogger("eventstore")
T = TypeVar("T")
Clock = Callable[[], int]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_BACKSTOP_CHECKPOINT_PAGES = 20_000
# Longest run of appends (seconds) that may skip their group-commit turn of the event loop.
_MAX_UNYIELDED = 0.002


class _WouldBlock(Exception):
    """The inline attempt would have had to wait for the write lock."""


class _Abandoned(Exception):
    """The caller was cancelled while the thread waited for the write lock (or its turn): nothing was begun."""


# Set on a CancelledError that interrupted work on the connection's thread: what the work ended with.
_OUTCOME = "eventstore_outcome"
# The outcome of an append whose caller left before it was written (nobody reads it).
_WITHDRAWN = asyncio.CancelledError("the caller left before the append was written")


class _Pending:
    __slots__ = ("done", "requests", "result", "withdrawn")

    def __init__(self, requests: Sequence[PreparedAppend]) -> None:
        self.requests = requests
        self.result: list[AppendResult] | BaseException | None = None
        self.done = False
        #: Its caller left (cancelled) before it was done: never to be sent again.
        self.withdrawn = False


class SqliteBackend(Backend):
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 60.0,
        cache_size_kib: int = 16_384,
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self.path = path
        self.display_name = path
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.cache_size_kib = cache_size_kib
        self._memory = path == ":memory:" or "mode=memory" in path
        # Commits that fsync would stall the event loop: under FULL/EXTRA every write goes to the thread.
        self._inline_writes = self.synchronous in ("OFF", "NORMAL")
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # asyncio primitives, not anyio's: aiosqlite ties this backend to asyncio anyway, and
        # on the single-append path anyio.Lock costs ~6 µs per acquire+release against ~1 µs.
        self._lock = asyncio.Lock()
        # Tasks of one unit of work appending at once: one savepoint (and its work) at a time.
        self._savepoint_lock = asyncio.Lock()
        self._queue: list[_Pending] = []
        self._abandon: threading.Event | None = None  # set: the thread's caller gave up waiting for the lock
        self._writes = Writes(path)
        self._yielded_at = 0.0
        self._in_tx: contextvars.ContextVar[int] = contextvars.ContextVar(f"sqlite_tx_{id(self)}", default=0)
        self._checkpointer: Checkpointer | None = None
        self._changes_at_checkpoint = 0
        self._checkpoint_due = False
        # Created by the first waiter, set and dropped by the next commit: no Event per commit.
        self._appended: anyio.Event | None = None
        self._memory_locks: set[str] = set()

    # -- lifecycle -------------------------------------------------------

    async def open(self, log_migrations: MigrationSet) -> None:
        if not self._memory:
            # Its own read-only connection: abandoned (left to time out) if we are cancelled.
            check = functools.partial(foreign_schema, self.path, self.busy_timeout)
            refused = await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
            if refused:
                raise SchemaVersionError(refused)
        try:
            self._writer = await self._connect(busy_timeout=0.0)
            if not self._memory and refused == UNCHECKED:  # unreadable read-only: ask the writer, first
                refused = await self._on_thread(
                    lambda conn, wait: self._retrying(lambda: foreign_tables(conn, self.path), "read the schema")
                )
                if refused:
                    raise SchemaVersionError(refused)
            # Through _on_thread: a cancellation stops the WAL switch waiting for another process.
            await self._on_thread(lambda conn, wait: self._configure(conn, True))
            if not self._memory:
                self._reader = await self._connect(busy_timeout=self.busy_timeout)
                await self._thread(self._reader, self._configure, False)
                self._checkpointer = Checkpointer(self.path, self.synchronous, self._checkpoint_done)
        except SchemaVersionError:
            await self.aclose()
            raise
        except (sqlite3.Error, EventStoreError) as exc:
            await self.aclose()
            raise DatabaseError(f"cannot open SQLite database {self.path}: {exc}") from exc
        except BaseException:  # cancelled (the WAL switch waiting for another process, say): end the threads
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        try:
            await self.migrate(log_migrations)
        except BaseException:
            await self.aclose()
            raise

    async def _connect(self, busy_timeout: float) -> aiosqlite.Connection:
        # The writer waits for the lock in our own retry loop (never inline), so its
        # busy timeout is 0; check_same_thread is off because inline work and
        # thread work alternate under self._lock, never overlap.
        return await aiosqlite.connect(
            self.path,
            isolation_level=None,
            timeout=busy_timeout,
            check_same_thread=False,
            uri=self.path.startswith("file:"),
        )

    def _configure(self, conn: sqlite3.Connection, writer: bool) -> None:
        if writer and not self._memory:
            self._retrying(lambda: conn.execute("PRAGMA journal_mode=WAL"), "set WAL mode")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA cache_size=-{int(self.cache_size_kib)}")
        # temp_store stays FILE: statement journals live in memory up to 64 KiB and spill to a
        # temp file beyond that. MEMORY made dropping an old projection generation hold every
        # freed page in RAM (+78 MiB at 200k events, +325 MiB at 1M: measured).
        if writer and not self._memory:
            # Checkpoints run on the checkpointer's thread (see Checkpointer); the automatic
            # one inside COMMIT stays only as a backstop far above the checkpointer's trigger.
            conn.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")

    async def aclose(self) -> None:
        # Waiting for the lock (a unit of work may hold it) can be cancelled: the store stays
        # open and whole. Once it is held, aiosqlite's stop() queues each connection's close
        # behind its thread's work and returns at once: the threads end even if this task is
        # cancelled meanwhile (left running, they would keep the interpreter from exiting).
        async with self._lock:
            self._writes.state.clear()  # a reopened store has new connections; the cache is theirs to fill
            stopping = []
            for attr in ("_reader", "_writer"):
                conn: aiosqlite.Connection | None = getattr(self, attr)
                setattr(self, attr, None)
                if conn is not None and (future := conn.stop()) is not None:
                    stopping.append(future)
            checkpointer, self._checkpointer = self._checkpointer, None
            cancelled: asyncio.CancelledError | None = None
            for future in stopping:
                cancelled = await wait_out(future) or cancelled
            if checkpointer is not None:
                if cancelled is None:
                    await anyio.to_thread.run_sync(checkpointer.close)
                else:  # a daemon thread: let it finish on its own
                    threading.Thread(target=checkpointer.close, daemon=True).start()
            if cancelled is not None:
                raise cancelled
        self._notify()

    def set_inline_hook(self, hook: InlineHook | None) -> None:
        self._writes.hook = hook

    # -- running work on a connection -------------------------------------

    def _conn(self, aconn: aiosqlite.Connection | None) -> tuple[aiosqlite.Connection, sqlite3.Connection]:
        if aconn is None:
            raise StoreClosed(f"the store on {self.path} is closed")
        return aconn, aconn._conn

    async def _thread(self, aconn: aiosqlite.Connection | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the connection's aiosqlite thread (for work that may wait)."""
        owner, conn = self._conn(aconn)
        with translated(self.path):
            # _execute is aiosqlite's "run this on the connection thread": one hop for a whole transaction.
            return await owner._execute(fn, conn, *args)  # type: ignore[no-any-return,no-untyped-call]

    def _inline(self, aconn: aiosqlite.Connection | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` right here; only for work that cannot block."""
        _, conn = self._conn(aconn)
        with translated(self.path):
            return fn(conn, *args)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a write transaction (or a savepoint of the open unit of work).

        Callers hold ``self._lock``. Tries inline first; if the write lock is
        held by another process, waits for it on the aiosqlite thread.
        """
        if self._in_tx.get():
            return await self._in_savepoint(work)
        return await self._run_writer(lambda conn, wait: self._transact(conn, work, wait))

    async def _in_savepoint(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in a savepoint of the open unit of work, rolled back if it fails or its caller is
        cancelled: a cancelled append is then not committed by the unit behind the caller's back
        (the thread runs on to its end; the savepoint decides)."""
        async with self._savepoint_lock:
            self._inline(self._writer, _run, "SAVEPOINT es_write")
            try:
                result = await self._run_writer(lambda conn, wait: work(conn))
            except BaseException:
                self._inline(self._writer, _undo_savepoint)
                raise
            self._inline(self._writer, _run, "RELEASE es_write")
            return result

    def _transact(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], wait: bool) -> T:
        # Never inside a unit of work: its writes go through _in_savepoint.
        self._begin(conn, wait)
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self._committed(conn)
        return result

    def _committed(self, conn: sqlite3.Connection) -> None:
        """After a commit: wake the checkpointer once enough rows went into the WAL."""
        if self._checkpointer is not None and conn.total_changes - self._changes_at_checkpoint >= CHECKPOINT_CHANGES:
            self._changes_at_checkpoint = conn.total_changes
            self._checkpointer.request()

    def _checkpoint_done(self) -> None:
        # Called on the checkpointer's thread: the next write finishes the checkpoint (see _run_writer).
        self._checkpoint_due = True

    def _begin(self, conn: sqlite3.Connection, wait: bool) -> None:
        if not wait:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    raise _WouldBlock from exc
                raise
            return
        started = time.monotonic()
        self._retrying(lambda: conn.execute("BEGIN IMMEDIATE"), "waiting for the write lock")
        waited = time.monotonic() - started
        if waited > 1.0:
            log.warning("%s: waited %.2fs for the write lock", self.path, waited)

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` until another process releases the lock, up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        delay, warned = 0.001, False
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                if self._abandon is not None and self._abandon.is_set():
                    raise _Abandoned from exc
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"{self.path} stayed locked by another process for {self.busy_timeout:.0f}s ({what}); "
                        "is a long transaction or a stuck process holding it?"
                    ) from exc
                if delay >= 0.1 and not warned:
                    log.warning("%s: database busy, still retrying (%s)", self.path, what)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        # Inline reads never wait, so a loop of them (verify, a catch-up, an export) would
        # starve the event loop: no timeouts, no cancellation, no other task. One turn
        # every _MAX_UNYIELDED, as appends do.
        now = time.monotonic()
        if now - self._yielded_at > _MAX_UNYIELDED:
            self._yielded_at = now
            await asyncio.sleep(0)
        if self._in_tx.get():
            return self._inline(self._writer, fn, *args)
        if self._memory:
            async with self._lock:
                return self._inline(self._writer, fn, *args)
        return self._inline(self._reader, fn, *args)

    # -- appends ---------------------------------------------------------

    async def append(self, requests: Sequence[PreparedAppend], clock: Clock) -> list[AppendResult]:
        if self._in_tx.get():
            return await self._write(lambda c: self._writes.append_item(c, requests, clock))
        item = _Pending(requests)
        self._queue.append(item)
        try:
            # Group commit: give every other ready appender one turn to join this transaction.
            # With none ready the turn is skipped, but not for longer than _MAX_UNYIELDED: an
            # inline append never waits, so a loop of them would otherwise starve the event
            # loop (no timeouts, no cancellation, no I/O).
            now = time.monotonic()
            if now - self._yielded_at > _MAX_UNYIELDED or _others_ready():
                self._yielded_at = now
                await asyncio.sleep(0)  # what anyio.lowlevel.checkpoint() does on asyncio, minus its lookups
            async with self._lock:
                if not item.done:
                    group, self._queue = self._queue, []
                    try:
                        outcomes = await self._commit_group(group, clock)
                    except asyncio.CancelledError as exc:
                        self._interrupted(exc, item, group)
                        raise
                    except BaseException as exc:  # the whole group failed (e.g. disk full)
                        self._writes.state.clear()
                        outcomes = [exc] * len(group)
                    for pending, outcome in zip(group, outcomes, strict=True):
                        pending.result, pending.done = outcome, True
                    self._notify()
        except BaseException:
            # Cancelled while queued: withdraw, or a later group would write it behind the caller's back.
            # (Already in a group's transaction, it stays there: its outcome is unknown to the caller.)
            item.withdrawn = True
            if item in self._queue:
                self._queue.remove(item)
            raise
        if isinstance(item.result, BaseException):
            raise item.result
        assert item.result is not None
        return item.result

    async def _commit_group(self, group: list[_Pending], clock: Clock) -> list[list[AppendResult] | BaseException]:
        try:
            outcomes = await self._write(lambda c: self._append_group(c, group, clock))
        except StaleState:  # rolled back: once more, from the database
            self._writes.state.clear()
            outcomes = await self._write(lambda c: self._append_group(c, group, clock))
        self._writes.state.committed()
        return outcomes

    def _interrupted(self, cancelled: asyncio.CancelledError, mine: _Pending, group: list[_Pending]) -> None:
        """The group's leader was cancelled while its transaction ran on the thread (see _on_thread).

        The transaction has ended by now. If it committed, the others get their
        results; if nothing was written (abandoned before BEGIN, rolled back),
        they go again; if it failed, they get its error. The leader gets its
        cancellation: its outcome is unknown to it.
        """
        outcome = getattr(cancelled, _OUTCOME, None)
        others = [pending for pending in group if pending is not mine and not pending.withdrawn]
        if isinstance(outcome, list):
            self._writes.state.committed()
            for pending, result in zip(group, outcome, strict=True):
                pending.result, pending.done = result, True
            self._notify()
            return
        self._writes.state.clear()
        if outcome is None or isinstance(outcome, (_Abandoned, StaleState)):
            self._queue[:0] = others
            return
        for pending in others:
            pending.result, pending.done = outcome, True

    def _notify(self) -> None:
        appended, self._appended = self._appended, None
        if appended is not None:
            appended.set()

    def _append_group(
        self, conn: sqlite3.Connection, group: list[_Pending], clock: Clock
    ) -> list[list[AppendResult] | BaseException]:
        # Under the write lock now (the thread may have waited for it): a caller that has
        # left meanwhile is not written behind its back. Its outcome is never read.
        left = [pending.withdrawn for pending in group]
        if not any(left):
            return self._writes.append_items(conn, [pending.requests for pending in group], clock)
        staying = [pending.requests for pending, gone in zip(group, left, strict=True) if not gone]
        outcomes = iter(self._writes.append_items(conn, staying, clock))
        return [_WITHDRAWN if gone else next(outcomes) for gone in left]

    # -- units of work ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        depth = self._in_tx.get()
        if depth:
            async with self._savepoint(f"es_tx_{depth}", depth):
                yield
            return
        async with self._lock:
            # Appends in a unit of work may roll back, and this connection's commits leave
            # data_version unchanged: the state cache cannot follow them, so it starts over.
            self._writes.state.clear()
            try:
                await self._run_writer(self._begin)
            except asyncio.CancelledError:
                self._inline(self._writer, rollback)  # in case BEGIN got the lock first: the unit will not run
                raise
            token = self._in_tx.set(1)
            try:
                yield
            except BaseException:
                self._in_tx.reset(token)
                self._inline(self._writer, rollback)
                raise
            self._in_tx.reset(token)
            try:
                await self._run_writer(commit)
            except BaseException:
                self._inline(self._writer, rollback)
                raise
            self._inline(self._writer, self._committed)
            self._notify()

    async def _run_writer(self, fn: Callable[[sqlite3.Connection, bool], T]) -> T:
        """``fn(conn, wait)``: inline with ``wait=False`` if it cannot block, else on the thread."""
        _, conn = self._conn(self._writer)
        finish_checkpoint = self._checkpoint_due and not conn.in_transaction
        if self._inline_writes and not finish_checkpoint:
            try:
                return self._inline(self._writer, fn, False)
            except _WouldBlock:
                pass
        if finish_checkpoint:
            self._checkpoint_due = False
            fn = functools.partial(checkpoint_first, fn)
        return await self._on_thread(fn)

    async def _on_thread(self, fn: Callable[[sqlite3.Connection, bool], T], *, interrupt: bool = False) -> T:
        """``fn(conn, True)`` on the connection's thread, awaited to its end even if we are cancelled.

        aiosqlite runs a queued call to its end whatever happens to its awaiter,
        and anyio's shield does not stop a plain ``task.cancel()`` or
        ``asyncio.wait_for``. Giving up the connection (and ``self._lock``)
        before the thread is done would let the next writer run statements
        inside that transaction. So a cancellation here first tells the thread
        to stop waiting for the write lock (nothing begun, nothing written:
        within one retry interval), or lets a begun transaction end (a few ms),
        and is then raised as it came, carrying what the work ended with.
        With ``interrupt`` (maintenance), a cancellation also interrupts the
        running statement (see _maintenance_step for one not yet running).
        """
        owner, conn = self._conn(self._writer)
        abandon = self._abandon = threading.Event()

        def on_cancel() -> None:
            abandon.set()
            if interrupt:
                conn.interrupt()

        # aiosqlite's own queue and future, not its _execute coroutine: awaiting that in a
        # task of ours would expose the future to cancellation of that task (e.g. at shutdown).
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        owner._tx.put_nowait((future, functools.partial(fn, conn, True)))
        try:
            cancelled = await wait_out(future, on_cancel)
        finally:
            self._abandon = None
        if cancelled is None:
            with translated(self.path):
                return future.result()
        try:
            with translated(self.path):
                outcome: Any = future.result()
        except BaseException as exc:  # what the others in a group would have got
            outcome = exc
        setattr(cancelled, _OUTCOME, outcome)
        raise cancelled

    @contextlib.asynccontextmanager
    async def _savepoint(self, name: str, depth: int) -> AsyncIterator[None]:
        # Its statements wait for another task's write in flight (on the thread, under FULL):
        # opened inside that write's savepoint, it would be dropped by that write's RELEASE.
        async with self._savepoint_lock:
            self._inline(self._writer, lambda c: c.execute(f"SAVEPOINT {name}"))
        token = self._in_tx.set(depth + 1)
        try:
            yield
        except BaseException:
            self._in_tx.reset(token)
            with anyio.CancelScope(shield=True):  # the rollback must happen: the wait is one write at most
                await self._savepoint_lock.acquire()
            try:
                # Not executescript: in Python < 3.12 it COMMITs the pending transaction first.
                self._inline(self._writer, lambda c: (c.execute(f"ROLLBACK TO {name}"), c.execute(f"RELEASE {name}")))
            finally:
                self._savepoint_lock.release()
            raise
        self._in_tx.reset(token)
        async with self._savepoint_lock:
            self._inline(self._writer, lambda c: c.execute(f"RELEASE {name}"))

    async def apply(self, batches: Sequence[GuardedBatch]) -> list[bool]:
        if self._in_tx.get():
            return await self._write(lambda c: run_batches(c, batches))
        async with self._lock:
            return await self._write(lambda c: run_batches(c, batches))

    # -- reads -----------------------------------------------------------

    async def read_all(
        self, from_position: int, limit: int, types: Sequence[str] | None, stream_prefix: str | None
    ) -> list[Row]:
        sql = f"SELECT {COLUMNS} FROM events WHERE position >= ?"
        params: list[Any] = [from_position]
        if types is not None:
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        if stream_prefix:
            # GLOB (case-sensitive, so SQLite bounds it on the index by its literal start), not a
            # range ending at prefix + U+10FFFF, which sorts below prefix + U+10FFFF + more.
            sql += " AND stream GLOB ?"
            params.append(_glob_literal(stream_prefix) + "*")
        sql += " ORDER BY position LIMIT ?"
        params.append(limit)
        return await self._read(fetchall, sql, params)

    async def read_stream(self, stream: str, from_version: int, backwards: bool, limit: int) -> list[Row]:
        op, order = ("<=", "DESC") if backwards else (">=", "ASC")
        sql = f"SELECT {COLUMNS} FROM events WHERE stream = ? AND version {op} ? ORDER BY version {order} LIMIT ?"
        return await self._read(fetchall, sql, (stream, from_version, limit))

    async def read_positions(self, positions: Sequence[int]) -> list[Row]:
        return await self._read(fetch_positions, positions)

    async def head(self) -> int:
        rows = await self._read(fetchall, "SELECT max(position) FROM events", ())
        return int(rows[0][0] or 0)

    async def stream_version(self, stream: str) -> int:
        rows = await self._read(fetchall, "SELECT max(version) FROM events WHERE stream = ?", (stream,))
        return int(rows[0][0] or 0)

    async def find_event_ids(self, event_ids: Sequence[bytes]) -> list[Row]:
        return await self._read(find_ids, list(event_ids))

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._read(fetchall, sql, params)

    async def wait_for_append(self, timeout: float) -> None:
        # In-process appends wake us at once; other processes' appends are seen
        # by the caller's next read after the timeout (polling is the correctness path).
        with anyio.move_on_after(timeout):
            if self._appended is None:
                self._appended = anyio.Event()
            await self._appended.wait()

    # -- schema and maintenance -----------------------------------------

    async def migrate(self, migrations: MigrationSet) -> list[str]:
        self._refuse_in_unit("a migration")
        applied: list[str] = []
        while True:
            async with self._lock:
                step = await self._write(lambda c: migrate_one(c, migrations, self.path))
            if step is None:
                return applied
            log.info("%s: applied migration %s #%d %s", self.path, migrations.name, step[0], step[1])
            applied.append(step[1])

    async def applied_migrations(self) -> dict[str, int]:
        rows = await self.query("SELECT set_name, max(version) FROM schema_migrations GROUP BY set_name")
        return {name: int(version) for name, version in rows}

    def worker_lock(self, name: str) -> WorkerLock:
        if self._memory:
            return MemoryLock(self._memory_locks, name)
        return FileLock(lock_path(self.path, name))

    async def stats(self) -> dict[str, Any]:
        size = 0
        if not self._memory:
            for suffix in ("", "-wal"):
                with contextlib.suppress(OSError):
                    size += (await anyio.Path(self.path + suffix).stat()).st_size
        return {"file_size_bytes": size, "backend": "sqlite", "synchronous": self.synchronous}

    async def maintain(self, *, vacuum: bool) -> None:
        # Each call returns None, never a cursor: aiosqlite's thread keeps the last result alive,
        # and a cursor with a row left (wal_checkpoint returns one) would keep its statement in
        # progress, so every later COMMIT on this connection would fail.
        # On the writer's thread, waited out if we are cancelled (a cancellation
        # interrupts the statement): the store is not handed on while one runs.
        steps = ["ANALYZE", "PRAGMA optimize"] + (["VACUUM"] if vacuum else [])
        steps += [] if self._memory else ["PRAGMA wal_checkpoint(TRUNCATE)"]
        self._refuse_in_unit("maintenance")
        async with self._lock:
            for sql in steps:
                await self._on_thread(functools.partial(self._maintenance_step, sql), interrupt=True)

    def _refuse_in_unit(self, what: str) -> None:
        """The unit of work holds the writer: waiting for it from inside would wait for ever."""
        if self._in_tx.get():
            raise EventStoreError(f"{what} cannot run inside a unit of work on {self.path}: run it outside")

    def _maintenance_step(self, sql: str, conn: sqlite3.Connection, wait: bool) -> None:
        # A cancellation that came while the step waited in the thread's queue: nothing
        # to interrupt yet (SQLite forgets an interrupt() made between statements).
        if self._abandon is not None and self._abandon.is_set():
            raise _Abandoned
        # Every step may need the write lock another process holds (the writer's busy timeout is 0).
        self._retrying(lambda: _run(conn, sql), sql.lower())


def _undo_savepoint(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK TO es_write")
    conn.execute("RELEASE es_write")


def _glob_literal(text: str) -> str:
    """``text`` as a GLOB pattern matching itself: its wildcards each in a one-character class."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in text)


def _run(conn: sqlite3.Connection, sql: str) -> None:
    """Run ``sql`` to its end, rows and all."""
    conn.execute(sql).fetchall()


def _others_ready() -> bool:
    """Whether another callback is ready to run on this asyncio loop (True when the loop cannot tell).

    If none is, yielding cannot let another appender join the group: an
    appender woken by I/O during the yield would run after us anyway. Skipping
    that idle turn of the loop made single appends ~10% faster (measured).
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)  # CPython's BaseEventLoop; uvloop has none
    return ready is None or len(ready) > 0
