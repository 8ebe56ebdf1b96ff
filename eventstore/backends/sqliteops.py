"""What runs on a sqlite3 connection: the append state read, guarded batches,
error translation and the background WAL checkpointer.

Plain functions of a ``sqlite3.Connection``, so the backend can run them
inline on the event loop thread or on aiosqlite's thread alike (see
:mod:`eventstore.backends.sqlite` for which and why).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from eventstore.backends.base import PreparedAppend
from eventstore.backends.plan import LogState, may_repeat, repeatable_ids
from eventstore.codec import GENESIS_HASH
from eventstore.errors import DatabaseError, DuplicateEventError, StoreClosed
from eventstore.migrations import MIGRATIONS_TABLE, MigrationSet
from eventstore.model import GuardedBatch, Row, Statement

__all__ = (
    "CHECKPOINT_CHANGES",
    "COLUMNS",
    "ID_CHUNK",
    "INSERT",
    "UNCHECKED",
    "Checkpointer",
    "StateCache",
    "checkpoint_first",
    "commit",
    "fetch_positions",
    "fetchall",
    "find_ids",
    "foreign_schema",
    "foreign_tables",
    "is_busy",
    "migrate_one",
    "read_state",
    "rollback",
    "run_batches",
    "translate",
    "translated",
)

log = logging.getLogger("eventstore")
T = TypeVar("T")

COLUMNS = "position, event_id, stream, version, type, schema_version, recorded_at, metadata, data, hash"
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_STREAM_VERSION = "SELECT max(version) FROM events WHERE stream = ?"
_HEAD = "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1"
# The head, the first stream's version and whether a lone event's id is known, in one
# statement: each statement is ~4 µs of a ~40 µs single-event transaction. No row = empty log.
_PROBE = (
    "SELECT position, hash, recorded_at, (SELECT max(version) FROM events WHERE stream = ?), "
    "(SELECT position FROM events WHERE event_id = ?) FROM events ORDER BY position DESC LIMIT 1"
)
ID_CHUNK = 500
# ~650-byte events: ~4000 rows is ~600 pages of WAL, below SQLite's default autocheckpoint of 1000.
CHECKPOINT_CHANGES = 4000


def is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


#: The replaced storage layer's tables (see README "Coming from the old storage layer").
LEGACY_TABLES = ("signals", "signal_processing", "suppression_cache")


def foreign_schema(path: str, timeout: float) -> str | None:
    """Why the database at ``path`` cannot hold an event store, or None if it can (or is not there yet).

    Checked before the store changes anything, on a read-only connection of
    its own: WAL mode is recorded in the file, and closing the last read-write
    connection checkpoints (and removes) a WAL another program left behind. A
    database of the replaced storage layer, or any database whose
    ``schema_migrations`` table is another application's, is refused with what
    to do instead. Other tables beside ours are left alone. A file this cannot
    read is left to the store's own opening, which names the problem.
    """
    uri = _read_only_uri(path)
    if uri is None:
        return None
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            return foreign_tables(conn, path)
        finally:
            conn.close()
    except sqlite3.Error:
        return UNCHECKED


#: What :func:`foreign_schema` says when it could not read the file (a hot journal a read-only
#: connection cannot roll back, say): the store checks again on its writer, before changing anything.
UNCHECKED = ""


def _read_only_uri(path: str) -> str | None:
    """A URI that reads ``path`` without writing beside it: ``immutable`` when it has neither a WAL
    nor a rollback journal (then the file holds only committed pages; a read-only connection to a
    WAL-mode file would create its -wal and -shm), else ``mode=ro``, which takes the locks."""
    if path.startswith("file:"):
        base, _, query = path.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        if params.get("mode") == "memory":
            return None
        file = urllib.parse.unquote(urllib.parse.urlsplit(base).path)
    elif os.path.exists(path):
        base, params, file = f"file:{urllib.parse.quote(os.path.abspath(path))}", {}, path
    else:
        return None
    params.pop("mode", None)
    busy = os.path.exists(f"{file}-wal") or os.path.exists(f"{file}-journal")
    params.update({"mode": "ro"} if busy else {"immutable": "1"})
    return f"{base}?{urllib.parse.urlencode(params)}"


def foreign_tables(conn: sqlite3.Connection, path: str) -> str | None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    if "events" in tables:
        return None
    if "signal_processing" in tables:
        return (
            f"{path} is a database of the replaced signal storage layer (tables "
            f"{', '.join(t for t in LEGACY_TABLES if t in tables)}), not an event store; nothing was changed. "
            f"Import its data into a new store with: eventstore import-legacy NEW.db {path}"
        )
    if "schema_migrations" in tables:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")}
        if "set_name" not in columns:
            return (
                f"{path} is not an event store: its schema_migrations table belongs to another application "
                "(no set_name column); nothing was changed. Use a new file for the event store"
            )
    return None


def fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def read_state(conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]]) -> LogState:
    """The head, every touched stream's version and the rows of ids that may be known."""
    if len(items) == 1 and len(items[0]) == 1:
        return _read_state_of_one(conn, items[0][0])
    head = conn.execute(_HEAD).fetchone() or (0, GENESIS_HASH, 0)
    streams = list(dict.fromkeys(request.stream for requests in items for request in requests))
    # One probe per stream: max(version) over an IN list would scan each stream's whole index range.
    versions = {stream: conn.execute(_STREAM_VERSION, (stream,)).fetchone()[0] or 0 for stream in streams}
    ids = repeatable_ids(items)
    known = {bytes(row[1]): row for row in find_ids(conn, ids)} if ids else {}
    return LogState((head[0], head[1], head[2]), versions, known)


def _read_state_of_one(conn: sqlite3.Connection, request: PreparedAppend) -> LogState:
    """The common case, one request: head, version and a lone event's id in one statement."""
    lone = request.events[0] if len(request.events) == 1 else None
    probe_id = lone.event_id if lone is not None and lone.known_id_possible else None
    row = conn.execute(_PROBE, (request.stream, probe_id)).fetchone()
    if row is None:  # an empty log: no stream and no id can exist yet
        return LogState((0, GENESIS_HASH, 0), {}, {})
    maybe_known = row[4] is not None if lone is not None else may_repeat(request)
    ids = [event.event_id for event in request.events] if maybe_known else []
    known = {bytes(r[1]): r for r in find_ids(conn, ids)} if ids else {}
    return LogState((row[0], row[1], row[2]), {request.stream: row[3] or 0}, known)


class StateCache:
    """The log's head and stream versions as one connection last committed them.

    Lets an append skip the state read (the head, the stream's version, whether
    the ids are known: ~6 µs of a ~85 µs single append, measured). Trusted only
    on the connection that filled it, and only while nothing else has written:

    * SQLite's ``PRAGMA data_version``, read under the write lock, changes
      whenever another connection (of any process) committed, and sometimes
      otherwise (another connection's checkpoint: a cache miss, harmless);
      never for this connection's own commits, and its values mean nothing
      across connections;
    * this connection's ``total_changes``, unchanged since :meth:`committed`,
      says it wrote nothing the cache did not plan (a unit of work, a rolled
      back transaction, an ``apply`` of raw rows).

    It knows nothing of event ids. A lone event planned from it is its own id
    probe: the append-only trigger refuses a recorded id, nothing was written,
    and the caller plans it again from :func:`read_state`, which decides the
    idempotent re-append. Larger appends probe their ids first.
    """

    # Streams remembered at most; beyond that the cache starts over (one state read per stream).
    MAX_STREAMS = 100_000

    def __init__(self) -> None:
        self._stamp: tuple[sqlite3.Connection | None, int, int] = (None, -1, -1)
        self._seen: tuple[sqlite3.Connection, int, int] | None = None
        self._head: tuple[int, bytes, int] | None = None
        self._planned: LogState | None = None
        self._versions: dict[str, int] = {}

    def lookup(self, conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]]) -> LogState | None:
        """At the start of a write transaction: the state to plan ``items`` from, or None if unknown."""
        self._seen = (conn, conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        self._planned = None
        if self._head is None or self._seen != self._stamp:
            return None
        versions: dict[str, int] = {}
        cached = self._versions
        for requests in items:
            for request in requests:
                stream = request.stream
                if stream not in versions:
                    version = cached.get(stream)
                    if version is None:
                        version = conn.execute(_STREAM_VERSION, (stream,)).fetchone()[0] or 0
                    versions[stream] = version
        return LogState(self._head, versions, {})

    def planned(self, state: LogState | None) -> None:
        """``state`` (advanced by its plans) is what this transaction leaves once it commits; None: unknown."""
        self._planned = state

    def committed(self) -> None:
        """The transaction :meth:`lookup` began committed: remember what it planned, if anything."""
        state, seen, self._planned = self._planned, self._seen, None
        if state is None or seen is None:
            self.clear()
            return
        conn, data_version, _ = seen
        if seen[:2] != self._stamp[:2] or len(self._versions) > self.MAX_STREAMS:
            self._versions = {}
        self._stamp, self._head = (conn, data_version, conn.total_changes), state.head
        self._versions.update(state.versions)

    def clear(self) -> None:
        self._stamp, self._seen, self._head, self._planned, self._versions = (None, -1, -1), None, None, None, {}


def fetch_positions(conn: sqlite3.Connection, positions: Sequence[int]) -> list[Row]:
    return sorted(_rows_where_in(conn, "position", positions))


def migrate_one(conn: sqlite3.Connection, migrations: MigrationSet, where: str) -> tuple[int, str] | None:
    """Apply the next pending step of ``migrations`` with its record (in the caller's transaction), or None."""
    conn.execute(MIGRATIONS_TABLE)
    done = conn.execute(
        "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE set_name = ?", (migrations.name,)
    )
    step = migrations.next_step(done.fetchone()[0], where)
    if step is None:
        return None
    for sql in step.statements("sqlite"):
        conn.execute(sql)
    conn.execute(
        "INSERT INTO schema_migrations VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        (migrations.name, step.version, step.name),
    )
    return step.version, step.name


def find_ids(conn: sqlite3.Connection, event_ids: Sequence[bytes]) -> list[Row]:
    return _rows_where_in(conn, "event_id", event_ids)


def _rows_where_in(conn: sqlite3.Connection, column: str, values: Sequence[Any]) -> list[Row]:
    rows: list[Row] = []
    for start in range(0, len(values), ID_CHUNK):
        chunk = values[start : start + ID_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows += conn.execute(f"SELECT {COLUMNS} FROM events WHERE {column} IN ({marks})", chunk).fetchall()
    return rows


def run_batches(conn: sqlite3.Connection, batches: Sequence[GuardedBatch]) -> list[bool]:
    held: list[bool] = []
    for guard, statements, on_skip in batches:
        if guard is not None and conn.execute(guard.sql, guard.params).rowcount != 1:
            held.append(False)
            if on_skip is not None:
                on_skip()
            continue
        _execute_grouped(conn, statements)
        held.append(True)
    return held


def _execute_grouped(conn: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """Run statements in order; runs of the same SQL go through one executemany."""
    index, count = 0, len(statements)
    while index < count:
        sql = statements[index].sql
        end = index + 1
        while end < count and statements[end].sql == sql:
            end += 1
        if end - index == 1:
            conn.execute(sql, statements[index].params)
        else:
            conn.executemany(sql, [s.params for s in statements[index:end]])
        index = end


def commit(conn: sqlite3.Connection, wait: bool) -> None:
    conn.execute("COMMIT")


def checkpoint_first(fn: Callable[[sqlite3.Connection, bool], T], conn: sqlite3.Connection, wait: bool) -> T:
    # The checkpointer copied the WAL in the background; what was committed since is
    # little. Completing it here, with no transaction of ours open, lets the next
    # write restart the WAL from its beginning instead of growing it.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return fn(conn, wait)


class Checkpointer:
    """Checkpoints the WAL on its own thread and connection.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses
    ``wal_autocheckpoint`` pages: it copies ~4 MB into the database file and
    fsyncs it — a blocking wait on the event loop thread, and ~25% of raw
    sqlite3's single-append time here. Instead the writer wakes this thread
    every ``CHECKPOINT_CHANGES`` rows; it runs a PASSIVE checkpoint (which
    never waits for readers or writers) in parallel with further appends, then
    asks the writer to finish it on the writer's aiosqlite thread (a few pages:
    the frames committed meanwhile), so the WAL is restarted rather than grown.
    """

    def __init__(self, path: str, synchronous: str, done: Callable[[], None]) -> None:
        self._path, self._synchronous, self._done = path, synchronous, done
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"eventstore-checkpoint:{path}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop and join the thread (blocking: call it from a worker thread)."""
        self._closing = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, uri=self._path.startswith("file:"))
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except sqlite3.Error as exc:
            log.warning("%s: no background checkpoints (%s); SQLite checkpoints inside commits", self._path, exc)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("%s: background checkpoint failed: %s", self._path, exc)
                    continue
                self._done()
        finally:
            conn.close()


class translated:
    """The one boundary where sqlite3 errors become EventStoreErrors.

    A class, not @contextmanager: entered on every inline call, where the
    generator version costs ~1.5 µs.
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        path = self.path
        if isinstance(exc, sqlite3.IntegrityError):
            raise translate(exc, path) from exc
        if isinstance(exc, sqlite3.Error):
            raise DatabaseError(f"SQLite error on {path}: {exc}") from exc
        if isinstance(exc, ValueError) and ("closed" in str(exc).lower() or "no active connection" in str(exc)):
            raise StoreClosed(f"the store on {path} is closed") from exc


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def translate(exc: BaseException, path: str) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        # Only a repeated event id is a duplicate; the append-only triggers and read
        # models' own constraints are not (they must not look like an idempotency hit).
        if "events.event_id" in str(exc):
            return DuplicateEventError(f"event id already recorded in {path}: {exc}")
        return DatabaseError(f"constraint failed in {path}: {exc}")
    return exc
