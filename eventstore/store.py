"""The event log: append, read, subscribe, verify. Backend-neutral.

``open_store(url)`` picks the backend from the URL (SQLite path or
``postgresql://``); everything here works the same on both.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime as dt
import logging
import os
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from types import TracebackType
from typing import Any

import anyio

from eventstore.backends import backend_for
from eventstore.backends.base import Backend, PreparedAppend, PreparedEvent, WorkerLock
from eventstore.codec import (
    GENESIS_HASH,
    NUL_REFUSED,
    EventRegistry,
    Upcaster,
    chain_hash,
    encode_metadata,
    new_correlation_id,
    new_event_id_bytes,
    nul_path,
    signal_event_id_bytes,
    to_micros,
)
from eventstore.errors import (
    DatabaseError,
    DuplicateEventError,
    InvalidEvent,
    NotFound,
    StoreClosed,
    WorkerLockLost,
)
from eventstore.events import Event, SignalDetected
from eventstore.migrations import MigrationSet
from eventstore.model import (
    ANY,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    GuardedBatch,
    InlineHook,
    RecordedEvent,
    Row,
    VerifyReport,
    _Expect,
)
from eventstore.schema import LOG_MIGRATIONS

__all__ = ("Clock", "EventStore", "open_store", "system_clock")

log = logging.getLogger("eventstore")
Clock = Callable[[], dt.datetime]
PAGE_SIZE = 2000
#: Positions and versions are 64-bit signed integers in both databases.
MAX_POSITION = 2**63 - 1
#: A single request of at least this many events is offered to the backend in chunks of
#: STREAMED_APPEND_CHUNK (see EventStore._append_streamed). Chunks of 64 and 128 measured
#: alike at 1000 events, 256 slower; below 256 events the one-call path is as fast or faster.
STREAMED_APPEND_MIN = 256
STREAMED_APPEND_CHUNK = 128
_BAD_EXPECTED = "expected_version must be an int >= 0, NO_STREAM, STREAM_EXISTS or ANY"


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_actor() -> str:
    """The process name: what writes are attributed to when no actor is given."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name or "python"


class EventStore:
    """An open event log. Use ``async with open_store(...) as log``."""

    def __init__(
        self,
        backend: Backend,
        registry: EventRegistry,
        *,
        clock: Clock = system_clock,
        actor: str | None = None,
    ) -> None:
        self._backend = backend
        self.registry = registry
        self.clock = clock
        self.actor = actor or default_actor()
        self._open = False
        #: Inside transaction(): the instant its first append is recorded at, for all of them.
        self._unit_instant: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
            "eventstore_unit_instant", default=None
        )

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> EventStore:
        if not self._open:
            await self._backend.open(LOG_MIGRATIONS)
            self._open = True
        return self

    async def aclose(self) -> None:
        self._open = False
        await self._backend.aclose()

    async def __aenter__(self) -> EventStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def dialect(self) -> str:
        return self._backend.dialect

    @property
    def location(self) -> str:
        """The database, for messages (passwords masked)."""
        return self._backend.display_name

    def now(self) -> dt.datetime:
        when = self.clock()
        if when.tzinfo is None:
            raise ValueError("the store's clock must return an aware datetime")
        return when

    def _now_us(self) -> int:
        if self.clock is system_clock:  # the same instant without building a datetime (~0.5 µs per append)
            return time.time_ns() // 1000
        return to_micros(self.now())

    def _clock(self) -> Callable[[], int]:
        """The clock an append records by: inside ``transaction()``, one instant for the whole unit.

        Everything a unit of work appends then shares one ``recorded_at``, as it
        shares one commit, so an as-of query never shows part of it.
        """
        unit = self._unit_instant.get()
        if unit is None:
            return self._now_us

        def pinned() -> int:
            if not unit:
                unit.append(self._now_us())
            return unit[0]

        return pinned

    def _check_open(self) -> None:
        if not self._open:
            raise StoreClosed(f"the store on {self.location} is not open (use 'async with open_store(...)')")

    # -- appending -------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        *,
        expected_version: ExpectedVersion = ANY,
        metadata: Mapping[str, Any] | None = None,
        event_ids: Sequence[uuid.UUID] | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` atomically; see DESIGN.md "Conventions"."""
        request = AppendRequest(
            stream=stream,
            events=events,
            expected_version=expected_version,
            event_ids=event_ids,
            metadata=dict(metadata) if metadata else None,
        )
        return (await self.append_batch([request]))[0]

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """Append to several streams in one all-or-nothing transaction."""
        self._check_open()
        # One call is one unit of work: its events share one default correlation id.
        correlation_id = new_correlation_id()
        if len(requests) == 1 and _is_large(requests[0].events):
            return [await self._append_streamed(requests[0], correlation_id)]
        prepared = [self._prepare(request, correlation_id) for request in requests]
        _refuse_repeated_ids(prepared)
        return await self._backend.append(prepared, self._clock())

    async def _append_streamed(self, request: AppendRequest, correlation_id: str) -> AppendResult:
        """A large request, offered to the backend chunk by chunk (see Backend.append_streamed).

        On PostgreSQL, validating and encoding the next chunk here overlaps the
        server writing (COPY) the one before: 42k -> 66k events/s at 1000 events
        per append (medians of interleaved runs; about even at 256). The result,
        errors and guarantees are those of :meth:`append_batch`.
        """
        stream, events, expected, ids, meta, meta_bytes = self._check_request(request, correlation_id)
        prepared: list[PreparedEvent] = []

        def chunks() -> Iterator[PreparedAppend]:
            for start in range(0, len(events), STREAMED_APPEND_CHUNK):
                end = start + STREAMED_APPEND_CHUNK
                part_ids = None if ids is None else ids[start:end]
                part = self._prepare_events(events[start:end], part_ids, meta, meta_bytes)
                prepared.extend(part)
                yield PreparedAppend(stream, expected if start == 0 else ANY, part)

        taken = chunks()
        result = await self._backend.append_streamed(taken, self._clock())
        if result is not None:
            return result
        for _ in taken:  # declined, nothing written: the whole request the usual way
            pass
        whole = [PreparedAppend(stream, expected, prepared)]
        _refuse_repeated_ids(whole)
        return (await self._backend.append(whole, self._clock()))[0]

    def _prepare(self, request: AppendRequest, correlation_id: str) -> PreparedAppend:
        stream, events, expected, ids, meta, meta_bytes = self._check_request(request, correlation_id)
        return PreparedAppend(stream, expected, self._prepare_events(events, ids, meta, meta_bytes))

    def _check_request(
        self, request: AppendRequest, correlation_id: str
    ) -> tuple[str, list[Event], ExpectedVersion, Sequence[uuid.UUID] | None, dict[str, Any], bytes]:
        """The request's stream, events, expected version and event ids, checked; its metadata, encoded too."""
        stream, events = request.stream, list(request.events)
        if not isinstance(stream, str) or not stream or (not stream.isprintable() and not _is_text(stream)):
            raise InvalidEvent(f"stream must be a non-empty UTF-8 string without NUL, not {stream!r}", field="stream")
        expected = request.expected_version
        valid_int = isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0
        if not (valid_int or isinstance(expected, _Expect)):
            raise InvalidEvent(f"{_BAD_EXPECTED}, not {expected!r}", field="expected_version")
        ids = request.event_ids
        if ids is not None and len(ids) != len(events):
            raise InvalidEvent(f"{len(ids)} event_ids given for {len(events)} events", field="event_ids")
        meta = self._metadata(request.metadata, correlation_id)
        meta_bytes = encode_metadata(meta)
        if b"\\u0000" in meta_bytes:  # rare: then look for a real NUL (see EventRegistry.encode)
            nul_at = nul_path(meta)
            if nul_at is not None:
                raise InvalidEvent(f"invalid metadata.{nul_at}: {NUL_REFUSED}", field=nul_at.split(".", 1)[0])
        return stream, events, expected, ids, meta, meta_bytes

    def _prepare_events(
        self, events: Sequence[Event], ids: Sequence[uuid.UUID] | None, meta: dict[str, Any], meta_bytes: bytes
    ) -> list[PreparedEvent]:
        """Validate and encode ``events``; give each its id (``ids``, deterministic, or a new UUIDv7)."""
        prepared = []
        for index, event in enumerate(events):
            name, schema_version, data, event = self.registry.encode(event)
            if ids is not None:
                event_id, explicit = _as_uuid(ids[index]).bytes, True
            elif isinstance(event, SignalDetected):
                event_id, explicit = signal_event_id_bytes(event), True
            else:
                event_id, explicit = new_event_id_bytes(), False
            prepared.append(PreparedEvent(event_id, name, schema_version, meta_bytes, data, event, meta, explicit))
        return prepared

    def _metadata(self, given: Mapping[str, Any] | None, correlation_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"actor": self.actor, "correlation_id": correlation_id, "causation_id": None}
        if not given and type(self.actor) is str and self.actor:
            return meta
        if given:
            meta.update(given)
        for key in ("actor", "correlation_id", "causation_id"):
            value = meta[key]
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"metadata.{key} must be a string, not {type(value).__name__}", field=key)
        if not meta["actor"]:
            meta["actor"] = self.actor
        return meta

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Several appends (any streams) and applies, committed together or not at all."""
        self._check_open()
        return self._unit_of_work()

    @contextlib.asynccontextmanager
    async def _unit_of_work(self) -> AsyncIterator[None]:
        async with self._backend.transaction():
            outermost = self._unit_instant.get() is None
            token = self._unit_instant.set([]) if outermost else None
            try:
                yield
            finally:
                if token is not None:
                    self._unit_instant.reset(token)

    # -- reading ---------------------------------------------------------

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """The stream's events in version order (or reverse), from ``from_version`` inclusive."""
        self._check_open()
        version = from_version if from_version is not None else (2**62 if backwards else 1)
        version = min(max(version, 0), MAX_POSITION)  # beyond what a database holds: read as its bound
        remaining = limit if limit is not None else 2**62
        if not backwards and from_version is not None and from_version > MAX_POSITION:
            return
        while remaining > 0:
            rows = await self._backend.read_stream(stream, version, backwards, min(PAGE_SIZE, remaining))
            for event in self.registry.iter_records(rows):
                yield event
            if len(rows) < min(PAGE_SIZE, remaining):
                return
            remaining -= len(rows)
            version = rows[-1][3] + (-1 if backwards else 1)

    async def read_all(
        self,
        *,
        from_position: int = 1,
        limit: int | None = None,
        types: Iterable[str] | None = None,
        stream_prefix: str | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Every event from ``from_position`` (inclusive) in position order, in bounded memory."""
        self._check_open()
        async for rows in self._pages(from_position, limit, types, stream_prefix):
            for event in self.registry.iter_records(rows):
                yield event

    async def _pages(
        self, position: int, limit: int | None, types: Iterable[str] | None, stream_prefix: str | None
    ) -> AsyncIterator[list[Row]]:
        type_list = list(types) if types is not None else None
        remaining = limit if limit is not None else 2**62
        position = max(position, 1)
        if position > MAX_POSITION:  # beyond any position a database can hold: nothing there
            return
        while remaining > 0:
            size = min(PAGE_SIZE, remaining)
            rows = await self._backend.read_all(position, size, type_list, stream_prefix)
            if rows:
                yield rows
            if len(rows) < size:
                return
            remaining -= len(rows)
            position = rows[-1][0] + 1

    async def subscribe(
        self,
        *,
        from_position: int = 1,
        types: Iterable[str] | None = None,
        stream_prefix: str | None = None,
        poll_interval: float = 0.05,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from ``from_position`` (inclusive), then deliver new events as they commit.

        New events from this process wake the subscriber at once; other
        processes' are picked up within ``poll_interval``. Never skips or
        repeats a position. Stop by breaking out of the loop or cancelling.
        """
        self._check_open()
        type_list = list(types) if types is not None else None
        position = min(max(from_position, 1), MAX_POSITION)
        filtered = type_list is not None or bool(stream_prefix)
        while self._open:
            # A filtered read scans past events it does not return; the head taken
            # *before* the read says how far it certainly got.
            head = await self._backend.head() if filtered else 0
            rows = await self._backend.read_all(position, PAGE_SIZE, type_list, stream_prefix)
            for event in self.registry.iter_records(rows):
                yield event
            if rows:
                position = rows[-1][0] + 1
            if len(rows) < PAGE_SIZE:
                position = max(position, head + 1)
                await self._backend.wait_for_append(poll_interval)

    async def wait_for_append(self, timeout: float) -> None:
        """Sleep until something may have been appended (by any process), or ``timeout`` passes."""
        self._check_open()
        await self._backend.wait_for_append(timeout)

    async def head_position(self) -> int:
        self._check_open()
        return await self._backend.head()

    async def stream_version(self, stream: str) -> int:
        self._check_open()
        return await self._backend.stream_version(stream)

    async def get_events(self, positions: Sequence[int]) -> list[RecordedEvent]:
        """The events at ``positions`` (missing positions are left out), in position order."""
        self._check_open()
        valid = [position for position in positions if 0 < position <= MAX_POSITION]
        return list(self.registry.iter_records(await self._backend.read_positions(valid)))

    async def find_positions(self, event_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Event id -> position, for the ids already in the log."""
        self._check_open()
        rows = await self._backend.find_event_ids([event_id.bytes for event_id in event_ids])
        return {uuid.UUID(bytes=bytes(row[1])): row[0] for row in rows}

    async def get_event(self, event_id: uuid.UUID) -> RecordedEvent:
        self._check_open()
        rows = await self._backend.find_event_ids([event_id.bytes])
        if not rows:
            raise NotFound(f"no event with id {event_id} in {self.location}")
        return self.registry.record(rows[0])

    async def position_at(self, when: dt.datetime) -> int:
        """The last position recorded at or before ``when`` (0 if none).

        ``recorded_at`` never decreases with position, so this is a binary search.
        """
        self._check_open()
        if when.tzinfo is None:
            raise ValueError(f"as-of time must be timezone-aware, not {when.isoformat()}")
        target = to_micros(when)
        low, high = 0, await self._backend.head()
        while low < high:
            middle = (low + high + 1) // 2
            rows = await self._backend.read_positions([middle])
            recorded = rows[0][6] if rows else target + 1
            if recorded <= target:
                low = middle
            else:
                high = middle - 1
        return low

    # -- integrity -------------------------------------------------------

    async def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Recompute the hash chain and check positions; name the first position that does not match."""
        self._check_open()
        head = await self._backend.head()
        # The chain below is read from position 1 up: a row slipped in below it (the triggers
        # dropped first) would be served by read_stream, yet never be looked at.
        lowest = (await self._backend.query("SELECT min(position) FROM events"))[0][0]
        if lowest is not None and lowest < 1:
            return _bad(0, head, lowest, "an event lies below position 1, outside the chain")
        previous, expected, checked = GENESIS_HASH, 1, 0
        async for rows in self._pages(1, None, None, None):
            for row in rows:
                if row[0] != expected:
                    return _bad(checked, head, expected, f"position {expected} is missing (next is {row[0]})")
                if not _hash_matches(previous, row):
                    return _bad(checked, head, row[0], "hash does not match the event's content and chain")
                try:
                    self.registry.decode(row[4], row[5], bytes(row[8]))
                except Exception as exc:
                    return _bad(checked, head, row[0], f"data does not decode as {row[4]}: {exc}")
                previous, expected, checked = bytes(row[9]), expected + 1, checked + 1
            if progress is not None:
                progress(checked)
        return VerifyReport(ok=True, events_checked=checked, head_position=head)

    # -- workers ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def worker_lock(
        self,
        name: str,
        *,
        wait: bool = True,
        poll_interval: float = 0.5,
        on_wait: Callable[[], None] | None = None,
    ) -> AsyncIterator[bool]:
        """Hold the worker lock ``name`` for the block: one holder per name and database at a time.

        Exclusive across processes and machines; freed when the block exits or
        the holder's process dies, even by SIGKILL (SQLite: a ``flock`` on
        ``<db>.<name>.lock``; PostgreSQL: a session advisory lock on a
        connection of its own). With ``wait`` it tries every ``poll_interval``
        seconds (calling ``on_wait`` once, before the first wait) and yields
        True once held; without, it yields whether it got the lock.

        While held, the lock is checked every ``max(poll_interval, 1)`` seconds,
        and at once when PostgreSQL's lock session ends (the server restarted,
        say): the block is cancelled, the lock released only once the block
        has stopped, and :class:`WorkerLockLost` raised. The server frees a
        session's lock the moment the session ends, so a standby may take it
        during the few milliseconds the holder needs to hear of it (and, after
        a network partition, until the holder's side notices); work that must
        never overlap also needs a fence in the data it writes (projections
        have one: the checkpoint guard). While waiting, a
        database error (a server restarting, say) is logged and retried.
        """
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ValueError(f"a worker lock needs a non-empty name, not {name!r}")
        lock = self._backend.worker_lock(name)
        lost = False
        failure: BaseException | None = None
        try:
            if not await _take(lock, name, wait, poll_interval, on_wait):
                yield False
                return
            holding = anyio.CancelScope()

            async def watch() -> None:
                nonlocal lost
                interval = max(poll_interval, 1.0)
                while True:
                    # Woken at once if the backend hears of a loss (PostgreSQL: the lock's session
                    # ended); polled too, for what sends no word (a file lock, a silent network).
                    with anyio.move_on_after(interval) as waited:
                        await lock.wait_until_lost()
                    if not await lock.still_held():
                        break
                    if not waited.cancelled_caught:
                        await anyio.sleep(interval)  # a stale word: back to polling, no spinning
                lost = True
                holding.cancel()  # stop the holder's work: another worker may take over now

            async with anyio.create_task_group() as guard:
                guard.start_soon(watch)
                try:
                    with holding:
                        yield True
                except BaseException as exc:  # re-raised below: a task group would wrap it in an ExceptionGroup
                    failure = exc
                guard.cancel_scope.cancel()
            # What the block raised while stopping for a lost lock is reported as its cause, unless it is
            # an outer cancellation (``holding`` absorbs its own), which must go on.
            if failure is not None and (not lost or isinstance(failure, anyio.get_cancelled_exc_class())):
                raise failure
        finally:
            with anyio.CancelScope(shield=True):
                await lock.release()
        if lost:
            raise WorkerLockLost(
                f"lost the worker lock {name!r} on {self.location} (its connection ended); the work holding it "
                "was stopped so that another worker can take over"
            ) from failure

    # -- the SQL service for read models (projections, facade, audit) ----

    def set_inline_hook(self, hook: InlineHook | None) -> None:
        """Run ``hook``'s statements inside every append transaction of this store."""
        self._backend.set_inline_hook(hook)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query on the store's database (``?`` placeholders)."""
        self._check_open()
        return await self._backend.query(sql, params)

    async def apply(self, batches: Sequence[GuardedBatch]) -> list[bool]:
        """Run guarded statement batches in one transaction (see GuardedBatch)."""
        self._check_open()
        return await self._backend.apply(batches)

    async def migrate(self, migrations: MigrationSet) -> list[str]:
        self._check_open()
        return await self._backend.migrate(migrations)

    async def applied_migrations(self) -> dict[str, int]:
        self._check_open()
        return await self._backend.applied_migrations()

    async def backend_stats(self) -> dict[str, Any]:
        self._check_open()
        return await self._backend.stats()

    async def maintain(self, *, vacuum: bool = False) -> None:
        self._check_open()
        await self._backend.maintain(vacuum=vacuum)

    async def raw_rows(self, from_position: int = 1) -> AsyncIterator[Row]:
        """Stored rows as they are (for export), in position order."""
        self._check_open()
        async for rows in self._pages(from_position, None, None, None):
            for row in rows:
                yield row

    @property
    def backend(self) -> Backend:
        return self._backend


async def _take(
    lock: WorkerLock, name: str, wait: bool, poll_interval: float, on_wait: Callable[[], None] | None
) -> bool:
    told = False
    while True:
        try:
            if await lock.try_acquire():
                return True
        except DatabaseError as exc:  # e.g. the server restarting: a standby keeps standing by
            if not wait:
                raise
            log.warning("worker lock %r: %s; retrying in %.1fs", name, exc, poll_interval)
            await lock.release()
        if not wait:
            return False
        if not told and on_wait is not None:
            on_wait()
        told = True
        await anyio.sleep(poll_interval)


def _is_large(events: Iterable[Event]) -> bool:
    return isinstance(events, Sized) and len(events) >= STREAMED_APPEND_MIN


def _hash_matches(previous: bytes, row: Row) -> bool:
    try:
        return isinstance(row[9], bytes | bytearray | memoryview) and chain_hash(previous, row) == bytes(row[9])
    except (TypeError, ValueError, AttributeError, struct.error):
        return False  # a column of the wrong type (SQLite is dynamically typed): tampered


def _refuse_repeated_ids(prepared: Sequence[PreparedAppend]) -> None:
    ids = [event.event_id for request in prepared for event in request.events]
    if len(ids) > 1 and len(set(ids)) != len(ids):
        repeated = next(event_id for event_id, count in collections.Counter(ids).items() if count > 1)
        raise DuplicateEventError(f"event id {uuid.UUID(bytes=repeated)} appears twice in one append; nothing written")


def _bad(checked: int, head: int, position: int, reason: str) -> VerifyReport:
    return VerifyReport(
        ok=False, events_checked=checked, head_position=head, first_bad_position=position, reason=reason
    )


def _is_text(text: str) -> bool:
    """Storable as text on every backend: UTF-8 (no lone surrogates) and no NUL (PostgreSQL refuses it)."""
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates
        return False
    return "\x00" not in text


def _as_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise InvalidEvent(f"event id {value!r} is not a UUID", field="event_ids") from exc


def open_store(
    url: str,
    *,
    event_types: Iterable[type[Event]] = (),
    upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
    clock: Clock | None = None,
    actor: str | None = None,
    **backend_options: Any,
) -> EventStore:
    """The event log at ``url`` (a SQLite path, ``:memory:`` or ``postgresql://...``).

    Use as ``async with open_store(url) as log:`` (or ``await open_store(url).open()``).
    ``event_types`` registers further tagged Structs; ``upcasters`` maps
    ``(type name, from schema_version)`` to a function upgrading the data dict.
    Backend options: SQLite ``synchronous`` ("NORMAL" by default, "FULL" for
    durability across power loss) and ``busy_timeout``; PostgreSQL ``schema``.
    """
    registry = EventRegistry(event_types, upcasters)
    return EventStore(backend_for(url, **backend_options), registry, clock=clock or system_clock, actor=actor)
