"""The backend contract, and the pure pieces of an append both backends share.

A backend owns the connections and runs SQL; everything above it (validation,
encoding, ids, decoding, subscriptions, verification) is backend-neutral and
lives in :mod:`eventstore.store`. Each backend implements the same guarantees:

* the events table refuses UPDATE and DELETE in the database itself;
* :meth:`Backend.append` writes each request all-or-nothing, checks
  ``expected_version`` and duplicate ids inside the write transaction, assigns
  positions with no gaps and in commit order, stamps ``recorded_at`` so that it
  never decreases with position, and extends the hash chain;
* a reader that pages through positions never skips an event.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, NamedTuple

import anyio

from eventstore.codec import chain_hash, from_micros
from eventstore.errors import DuplicateEventError, WrongExpectedVersion
from eventstore.events import Event
from eventstore.migrations import MigrationSet
from eventstore.model import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    GuardedBatch,
    InlineHook,
    RecordedEvent,
    Row,
)

__all__ = (
    "Backend",
    "PreparedAppend",
    "PreparedEvent",
    "WorkerLock",
    "build_rows",
    "check_expected_version",
    "resolve_known_ids",
    "wait_out",
)

Clock = Callable[[], int]  # microseconds since the epoch


class PreparedEvent(NamedTuple):
    """An event validated and encoded by the store, waiting for its position."""

    event_id: bytes
    type: str
    schema_version: int
    metadata: bytes
    data: bytes
    event: Event
    metadata_obj: dict[str, Any]
    #: True when the id came from the caller or is deterministic, so it may already exist.
    known_id_possible: bool


class PreparedAppend(NamedTuple):
    stream: str
    expected_version: ExpectedVersion
    events: Sequence[PreparedEvent]

    def retried(self) -> PreparedAppend:
        """The same request after an attempt whose outcome is unknown: its ids may be recorded now."""
        return self._replace(events=[event._replace(known_id_possible=True) for event in self.events])


class WorkerLock(abc.ABC):
    """One holder's handle on a named worker lock (see :meth:`Backend.worker_lock`).

    At most one handle per (database, name) holds the lock at a time, across
    processes and machines, and the lock is freed when the holding process
    dies, however it dies (SIGKILL included): the operating system or the
    database server releases it, never a timeout of ours.
    """

    @abc.abstractmethod
    async def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting; True if this handle holds it (also if it already did)."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Give the lock up (if held) and free the handle's resources. Idempotent."""

    @abc.abstractmethod
    async def still_held(self) -> bool:
        """True while this handle holds the lock; False once it is lost (e.g. its connection ended)."""

    async def wait_until_lost(self) -> None:
        """Return as soon as the backend learns the lock may be lost (a hint: ask :meth:`still_held`).

        By default it never does (a file lock is lost with its process only):
        the holder then learns of a loss by polling :meth:`still_held`.
        """
        await anyio.sleep_forever()


class Backend(abc.ABC):
    """What a storage backend provides. One instance per open store."""

    #: ``"sqlite"`` or ``"postgresql"``: which SQL the projections layer may use.
    dialect: str
    #: The database (file path, or URL with any password masked), for messages.
    display_name: str

    @abc.abstractmethod
    async def open(self, log_migrations: MigrationSet) -> None:
        """Connect and bring the log schema up to date (raise SchemaVersionError if newer)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every connection. Idempotent."""

    @abc.abstractmethod
    def set_inline_hook(self, hook: InlineHook | None) -> None:
        """Statements from ``hook`` run inside every append transaction (see InlineHook)."""

    @abc.abstractmethod
    async def append(self, requests: Sequence[PreparedAppend], clock: Clock) -> list[AppendResult]:
        """Append every request atomically (all or none), in order, in one transaction.

        Inside a :meth:`transaction` the writes join it. Raises WrongExpectedVersion
        or DuplicateEventError, having written nothing.
        """

    async def append_streamed(self, chunks: Iterator[PreparedAppend], clock: Clock) -> AppendResult | None:
        """One large request, its events prepared chunk by chunk while the database writes earlier ones.

        ``chunks`` yields the request in order: its first chunk carries the
        expected version, the others ``ANY``; taking the next chunk prepares it
        (and raises InvalidEvent for a bad event). Returns the request's result
        if every chunk was written, in one transaction; or None, with nothing
        written, when this backend or a check declines: the store then appends
        the whole request through :meth:`append`. This default declines at once.
        """
        return None

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A unit of work: appends, applies and queries inside it commit or roll back together."""

    @abc.abstractmethod
    async def read_all(
        self, from_position: int, limit: int, types: Sequence[str] | None, stream_prefix: str | None
    ) -> list[Row]:
        """Up to ``limit`` rows with position >= ``from_position``, in position order."""

    @abc.abstractmethod
    async def read_stream(self, stream: str, from_version: int, backwards: bool, limit: int) -> list[Row]:
        """Up to ``limit`` rows of ``stream`` from ``from_version`` (inclusive), in version order."""

    @abc.abstractmethod
    async def read_positions(self, positions: Sequence[int]) -> list[Row]:
        """The rows at the given positions (missing ones are left out), in position order."""

    @abc.abstractmethod
    async def head(self) -> int:
        """The last committed position (0 for an empty log)."""

    @abc.abstractmethod
    async def stream_version(self, stream: str) -> int:
        """The stream's current version (0 if it has no events)."""

    @abc.abstractmethod
    async def find_event_ids(self, event_ids: Sequence[bytes]) -> list[Row]:
        """The rows whose event_id is one of ``event_ids``."""

    @abc.abstractmethod
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``?`` placeholders). Inside a transaction it sees that transaction's writes."""

    @abc.abstractmethod
    async def apply(self, batches: Sequence[GuardedBatch]) -> list[bool]:
        """Run guarded batches in one transaction; True for each batch whose guard held."""

    @abc.abstractmethod
    async def migrate(self, migrations: MigrationSet) -> list[str]:
        """Apply pending steps of ``migrations``; return the names applied."""

    @abc.abstractmethod
    async def applied_migrations(self) -> dict[str, int]:
        """Set name -> number of steps applied."""

    @abc.abstractmethod
    async def wait_for_append(self, timeout: float) -> None:
        """Sleep until something may have been appended (any process), or ``timeout`` passes.

        Waking is only a hint: callers re-read by position, which is the correctness path.
        """

    @abc.abstractmethod
    def worker_lock(self, name: str) -> WorkerLock:
        """A new, unheld handle on the worker lock ``name`` of this database (see WorkerLock)."""

    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Backend facts for status: e.g. ``file_size_bytes``."""

    @abc.abstractmethod
    async def maintain(self, *, vacuum: bool) -> None:
        """The database's own maintenance (statistics, optionally reclaim space)."""

    async def stream_rows(self, page_size: int = 2000) -> AsyncIterator[Row]:
        """Every row in position order, page by page (bounded memory)."""
        position = 1
        while rows := await self.read_all(position, page_size, None, None):
            for row in rows:
                yield row
            position = rows[-1][0] + 1


def check_expected_version(stream: str, expected: ExpectedVersion, current: int) -> None:
    if expected is ANY:
        return
    if expected is NO_STREAM or expected == 0:
        ok = current == 0
    elif expected is STREAM_EXISTS:
        ok = current > 0
    else:
        ok = current == expected
    if not ok:
        raise WrongExpectedVersion(stream, expected, current)


def resolve_known_ids(request: PreparedAppend, existing: Sequence[Row], current_version: int) -> AppendResult | None:
    """Decide an append whose ids may already be recorded.

    Returns the original positions (with the stream's current version, not
    written) when every id is known with the same content
    (stream, type, data), None when none is known, and raises otherwise.
    """
    if not existing:
        return None
    by_id = {bytes(row[1]): row for row in existing}
    positions: list[int] = []
    for event in request.events:
        row = by_id.get(event.event_id)
        if row is None:
            known = len(by_id)
            raise DuplicateEventError(
                f"append to {request.stream} mixes {known} event id(s) already in the log with new ones; "
                "retry with only the new events"
            )
        if row[2] != request.stream or row[4] != event.type or bytes(row[8]) != event.data:
            raise DuplicateEventError(
                f"event id {_uuid(event.event_id)} is already recorded at position {row[0]} "
                f"(stream {row[2]}, type {row[4]}) with different content"
            )
        positions.append(row[0])
    return AppendResult(positions=positions, version=current_version, written=False)


def build_rows(
    request: PreparedAppend,
    head: tuple[int, bytes, int],
    current_version: int,
    now_us: int,
    *,
    with_records: bool = True,
) -> tuple[list[Row], list[RecordedEvent], tuple[int, bytes, int]]:
    """Positions, versions, timestamps and hashes for a checked append.

    ``head`` is (position, hash, recorded_at) of the last event in the log.
    ``recorded_at`` never goes below the previous event's, so that it orders
    like position and an as-of query is a prefix of the log. The
    RecordedEvents (for an inline hook) are only built ``with_records``.
    """
    position, previous, last_recorded = head
    recorded_at = max(now_us, last_recorded)
    stream = request.stream
    rows: list[Row] = []
    version = current_version
    for event in request.events:
        position += 1
        version += 1
        event_id, type_, schema_version, metadata, data = event[:5]
        unhashed: Row = (position, event_id, stream, version, type_, schema_version, recorded_at, metadata, data, b"")
        previous = chain_hash(previous, unhashed)
        rows.append((position, event_id, stream, version, type_, schema_version, recorded_at, metadata, data, previous))
    recorded: list[RecordedEvent] = []
    if with_records:
        when = from_micros(recorded_at)
        recorded = [_recorded(row, event, when) for row, event in zip(rows, request.events, strict=True)]
    return rows, recorded, (position, previous, recorded_at)


def _recorded(row: Row, event: PreparedEvent, when: Any) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        event_id=uuid.UUID(bytes=event.event_id),
        stream=row[2],
        version=row[3],
        type=event.type,
        schema_version=event.schema_version,
        recorded_at=when,
        metadata=event.metadata_obj,
        data=event.event,
        hash=row[9],
    )


def _uuid(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))


#: How often wait_out looks at the anyio scopes around it while the work runs (seconds).
_LOOK_AGAIN = 0.05


async def wait_out(
    work: asyncio.Future[Any], on_cancel: Callable[[], None] | None = None
) -> asyncio.CancelledError | None:
    """Wait until ``work`` is done, whatever cancels us meanwhile; return the first such cancellation.

    anyio's shield stops anyio's cancellation only, not a plain ``task.cancel()``
    or ``asyncio.wait_for``. The caller raises the cancellation afterwards, as
    it came: ``asyncio.timeout()`` and ``TaskGroup`` recognise only their own.
    """
    cancelled: asyncio.CancelledError | None = None
    told = False
    while not work.done():
        # An anyio scope around us (a deadline, a cancel()) cannot reach into the shield: look
        # at it between short waits, so that ``on_cancel`` is told at once all the same.
        if not told and on_cancel is not None and anyio.current_effective_deadline() <= anyio.current_time():
            on_cancel()
            told = True
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.wait((work,), timeout=_LOOK_AGAIN)  # unlike awaiting it, never cancels the work
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
            if on_cancel is not None and not told:
                on_cancel()
                told = True
    if told and cancelled is None and work.exception() is not None:
        # The work stopped for it (abandoned, interrupted): the anyio cancellation, raised here
        # where the caller hands it on as it came. Work that ran to its end is reported as done,
        # as before; the cancellation then comes at the caller's next checkpoint.
        try:
            await anyio.lowlevel.checkpoint()
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled
