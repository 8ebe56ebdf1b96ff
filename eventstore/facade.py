"""The compatible facade: the old SignalStore API on top of the event log.

Every write is an append; every query reads the projections. Read your writes:
the built-in projections are applied *inline*, in the same transaction as the
append (one commit per call); if that was skipped because another process got
there first, the call catches up before returning.

Processing is a state machine (pending -> pushed | rejected) checked against
the company's stream in the log, not against a read table, and the append
uses the stream version it read as ``expected_version``: two gates racing on
the same signal cannot both win.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import msgspec

from eventstore import audit
from eventstore.codec import signal_event_id
from eventstore.errors import (
    DatabaseError,
    DuplicateEventError,
    EventStoreError,
    InvalidEvent,
    InvalidTransition,
    NotFound,
    WrongExpectedVersion,
)
from eventstore.events import SignalDetected, SignalPushed, SignalRejected, SuppressionSynced, company_stream
from eventstore.model import AppendRequest, GuardedBatch, RecordedEvent, Statement
from eventstore.store import MAX_POSITION, Clock, EventStore, open_store
from projections import ProjectionRunner, ProjectionStatus, iso
from projections.search import default_projections, search_ids

__all__ = ("Signal", "SignalStore", "SuppressionEntry", "signal_store")

log = logging.getLogger("eventstore")
_decode_json = msgspec.json.Decoder(dict[str, Any]).decode
_TRANSITION_RETRIES = 20

_SIGNAL_COLUMNS = (
    "s.id, s.signal_type, s.source_api, s.canonical_key, s.company_name, s.confidence, s.raw_data, "
    "s.detected_at, s.recorded_at, p.status, p.notion_page_id, p.rejection_reason, p.processed_at, p.metadata"
)
_SIGNAL_FROM = "signals s JOIN processing p ON p.signal_id = s.id"


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """A signal with its processing state, as the facade returns it."""

    id: int
    signal_type: str
    source_api: str
    canonical_key: str
    company_name: str
    confidence: float
    raw_data: dict[str, Any]
    detected_at: dt.datetime
    recorded_at: dt.datetime
    status: str
    notion_page_id: str | None = None
    rejection_reason: str | None = None
    processed_at: dt.datetime | None = None
    metadata: dict[str, Any] = {}


class SuppressionEntry(msgspec.Struct, kw_only=True):
    """A company already in Notion; collectors skip it until ``expires_at``."""

    canonical_key: str
    notion_page_id: str
    status: str = ""
    expires_at: dt.datetime | None = None
    cached_at: dt.datetime | None = None


def _when(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def _signal(row: Sequence[Any]) -> Signal:
    return Signal(
        id=int(row[0]),
        signal_type=row[1],
        source_api=row[2],
        canonical_key=row[3],
        company_name=row[4],
        confidence=float(row[5]),
        raw_data=_decode_json(row[6]),
        detected_at=dt.datetime.fromisoformat(row[7]),
        recorded_at=dt.datetime.fromisoformat(row[8]),
        status=row[9],
        notion_page_id=row[10],
        rejection_reason=row[11],
        processed_at=_when(row[12]),
        metadata=_decode_json(row[13]),
    )


class SignalStore:
    """The storage API collectors, the gate and the Notion sync were written against."""

    def __init__(
        self,
        log: EventStore,
        *,
        cleanup_interval: float | None = 3600.0,
        poll_interval: float = 0.5,
        background: bool = True,
    ) -> None:
        self.log = log
        self.runner = ProjectionRunner(log, default_projections())  # built-ins + search
        self.cleanup_interval = cleanup_interval
        self.poll_interval = poll_interval
        self.background = background
        self._tasks: anyio.abc.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------

    async def __aenter__(self) -> SignalStore:
        await self.log.open()
        try:
            await self.runner.start()
            if self.background:
                self._tasks = anyio.create_task_group()
                await self._tasks.__aenter__()
                self._tasks.start_soon(self._follow)
                if self.cleanup_interval:
                    self._tasks.start_soon(self._clean_periodically, self.cleanup_interval)
        except BaseException:
            await self.log.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, None
        try:
            if tasks is not None:
                tasks.cancel_scope.cancel()
                await tasks.__aexit__(None, None, None)
        finally:
            self.runner.stop_inline()
            await self.log.aclose()

    async def _follow(self) -> None:
        # Inline application covers this process's writes; this picks up other
        # processes' appends and finishes version rebuilds in the background.
        await self.runner.follow(poll_interval=self.poll_interval)

    async def _clean_periodically(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await self.clean_expired_cache()
            except EventStoreError:  # housekeeping must not take the store down; the next round retries
                log.exception("%s: cleaning expired suppression rows failed", self.log.location)

    @property
    def clock(self) -> Clock:
        return self.log.clock

    @staticmethod
    def _meta(actor: str | None, correlation_id: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if actor is not None:
            meta["actor"] = actor
        if correlation_id is not None:  # otherwise the log gives the whole call one
            meta["correlation_id"] = correlation_id
        return meta

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SignalStore]:
        """Several calls, one atomic unit: all their events and read rows, or none."""
        async with self.log.transaction():
            yield self
        await self.runner.ensure_current()

    # -- signals -----------------------------------------------------------

    async def save_signal(
        self,
        signal_type: str,
        source_api: str,
        canonical_key: str,
        company_name: str,
        confidence: float,
        raw_data: Mapping[str, Any] | None = None,
        detected_at: dt.datetime | None = None,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> int:
        """Record a detection; a duplicate (same key, type, source and detected_at) returns the existing id."""
        event = self._detected(signal_type, source_api, canonical_key, company_name, confidence, raw_data, detected_at)
        meta = self._meta(actor, correlation_id)
        try:
            result = await self.log.append(company_stream(event.canonical_key), [event], metadata=meta)
        except DuplicateEventError:
            # Same dedup key, different details (e.g. a new confidence): the first detection stands.
            return (await self.log.get_event(signal_event_id(event))).position
        await self.runner.ensure_current()
        return result.positions[0]

    def _detected(
        self,
        signal_type: str,
        source_api: str,
        canonical_key: str,
        company_name: str,
        confidence: float,
        raw_data: Mapping[str, Any] | None = None,  # optional as in save_signal: save_signals passes dicts
        detected_at: dt.datetime | None = None,
    ) -> SignalDetected:
        return SignalDetected(
            signal_type=signal_type,
            source_api=source_api,
            canonical_key=canonical_key,
            company_name=company_name,
            confidence=confidence,
            raw_data=dict(raw_data) if raw_data is not None else {},
            detected_at=detected_at if detected_at is not None else self.log.now(),
        )

    async def save_signals(
        self,
        signals: Iterable[Mapping[str, Any] | SignalDetected],
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> list[int]:
        """Save many signals in one atomic append; each duplicate gets the existing id."""
        events = [s if isinstance(s, SignalDetected) else self._detected(**s) for s in signals]
        ids = [signal_event_id(e) for e in events]
        meta = self._meta(actor, correlation_id)
        async with self.log.transaction():
            known = await self.log.find_positions(ids)
            by_stream: dict[str, tuple[list[SignalDetected], list[uuid.UUID]]] = {}
            for event, event_id in zip(events, ids, strict=True):
                if event_id in known:
                    continue
                known[event_id] = 0  # placeholder: a repeat within this batch
                stream_events, stream_ids = by_stream.setdefault(company_stream(event.canonical_key), ([], []))
                stream_events.append(event)
                stream_ids.append(event_id)
            requests = [
                AppendRequest(stream=stream, events=evs, event_ids=eids, metadata=meta)
                for stream, (evs, eids) in by_stream.items()
            ]
            results = await self.log.append_batch(requests) if requests else []
            for request, result in zip(requests, results, strict=True):
                for event_id, position in zip(request.event_ids or (), result.positions, strict=True):
                    known[event_id] = position
        await self.runner.ensure_current()
        return [known[event_id] for event_id in ids]

    async def get_signal(self, signal_id: int) -> Signal | None:
        if not _is_signal_id(signal_id):
            return None
        rows = await self.log.query(f"SELECT {_SIGNAL_COLUMNS} FROM {_SIGNAL_FROM} WHERE s.id = ?", (signal_id,))
        return _signal(rows[0]) if rows else None

    async def get_pending_signals(
        self,
        limit: int = 100,
        signal_type: str | None = None,
        source_api: str | None = None,
        min_confidence: float | None = None,
    ) -> list[Signal]:
        """Pending signals, oldest first, optionally filtered."""
        sql = f"SELECT {_SIGNAL_COLUMNS} FROM {_SIGNAL_FROM} WHERE p.status = 'pending'"
        params: list[Any] = []
        if signal_type is not None:
            sql += " AND p.signal_type = ?"
            params.append(signal_type)
        if source_api is not None:
            sql += " AND p.source_api = ?"
            params.append(source_api)
        if min_confidence is not None:
            sql += " AND p.confidence >= ?"
            params.append(float(min_confidence))
        sql += " ORDER BY p.signal_id"
        if int(limit) >= 0:  # a negative limit is no limit, as SQLite's LIMIT -1 was for the old store
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_signal(row) for row in await self.log.query(sql, params)]

    async def get_signals_for_company(self, canonical_key: str) -> list[Signal]:
        rows = await self.log.query(
            f"SELECT {_SIGNAL_COLUMNS} FROM {_SIGNAL_FROM} WHERE s.canonical_key = ? ORDER BY s.id", (canonical_key,)
        )
        return [_signal(row) for row in rows]

    # -- processing --------------------------------------------------------

    async def mark_pushed(
        self,
        signal_id: int,
        notion_page_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> bool:
        """pending -> pushed. Repeating it with the same page is a no-op; anything else conflicting raises."""
        event = SignalPushed(signal_id=signal_id, notion_page_id=notion_page_id, metadata=dict(metadata or {}))
        return await self._transition(event, self._meta(actor, correlation_id))

    async def mark_rejected(
        self,
        signal_id: int,
        reason: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> bool:
        """pending -> rejected. Repeating it with the same reason is a no-op; anything else conflicting raises."""
        event = SignalRejected(signal_id=signal_id, reason=reason, metadata=dict(metadata or {}))
        return await self._transition(event, self._meta(actor, correlation_id))

    async def _transition(self, event: SignalPushed | SignalRejected, meta: dict[str, Any]) -> bool:
        """Append ``event`` if the signal is pending; True if appended, False if it repeated the outcome."""
        if isinstance(event.signal_id, bool) or not isinstance(event.signal_id, int) or event.signal_id < 1:
            raise NotFound(f"no signal with id {event.signal_id!r}")  # unknown, not merely invalid
        self.log.registry.encode(event)  # validate before touching the log
        for _ in range(_TRANSITION_RETRIES):
            detected = await self._detection(event.signal_id)
            outcome, version = await self._outcome(detected)
            if outcome is not None:
                if _same_outcome(outcome, event):
                    return False
                raise InvalidTransition(_conflict(event, outcome))
            try:
                await self.log.append(detected.stream, [event], expected_version=version, metadata=meta)
            except WrongExpectedVersion:
                continue  # the company's stream moved (a sync, another gate): read again
            await self.runner.ensure_current()
            return True
        raise InvalidTransition(f"signal {event.signal_id}: stream kept changing; gave up after {_TRANSITION_RETRIES}")

    async def _detection(self, signal_id: int) -> RecordedEvent:
        found = await self.log.get_events([signal_id]) if _is_signal_id(signal_id) else []
        if not found or not isinstance(found[0].data, SignalDetected):
            raise NotFound(f"no signal with id {signal_id}")
        return found[0]

    async def _outcome(self, detected: RecordedEvent) -> tuple[RecordedEvent | None, int]:
        """The push/reject already recorded for this signal (if any), and the stream's version."""
        outcome, version = None, detected.version
        async for recorded in self.log.read_stream(detected.stream, from_version=detected.version + 1):
            version = recorded.version
            data = recorded.data
            related = isinstance(data, SignalPushed | SignalRejected) and data.signal_id == detected.position
            if outcome is None and related:
                outcome = recorded
        return outcome, version

    async def get_processing_stats(self) -> dict[str, int]:
        rows = await self.log.query("SELECT status, count(*) FROM processing GROUP BY status")
        stats = {"pending": 0, "pushed": 0, "rejected": 0}
        stats.update({str(status): int(count) for status, count in rows})
        stats["total"] = sum(stats.values())
        return stats

    # -- suppression -------------------------------------------------------

    async def update_suppression_cache(
        self,
        entries: Iterable[SuppressionEntry],
        ttl_days: float = 7,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> int:
        """Record a Notion sync: one SuppressionSynced per entry, in one atomic append. Returns the count."""
        if isinstance(ttl_days, bool) or not isinstance(ttl_days, int | float) or not ttl_days >= 0:
            raise InvalidEvent(f"ttl_days must be a non-negative number, not {ttl_days!r}", field="ttl_days")
        try:
            expires_at = self.log.now() + dt.timedelta(days=ttl_days)
        except OverflowError as exc:  # inf, or past year 9999
            raise InvalidEvent(f"ttl_days={ttl_days!r} puts expires_at out of range", field="ttl_days") from exc
        meta = self._meta(actor, correlation_id)
        requests = [
            AppendRequest(
                stream=company_stream(entry.canonical_key),
                events=[
                    SuppressionSynced(
                        canonical_key=entry.canonical_key,
                        notion_page_id=entry.notion_page_id,
                        status=entry.status,
                        expires_at=expires_at,
                    )
                ],
                metadata=meta,
            )
            for entry in entries
        ]
        if requests:
            await self.log.append_batch(requests)
            await self.runner.ensure_current()
        return len(requests)

    async def check_suppression(self, canonical_key: str) -> SuppressionEntry | None:
        """The live (unexpired) entry for ``canonical_key``, or None."""
        rows = await self.log.query(
            "SELECT canonical_key, notion_page_id, status, expires_at, cached_at FROM suppression "
            "WHERE canonical_key = ? AND expires_at > ?",
            (canonical_key, iso(self.log.now())),
        )
        if not rows:
            return None
        key, page, status, expires_at, cached_at = rows[0]
        return SuppressionEntry(
            canonical_key=key,
            notion_page_id=page,
            status=status,
            expires_at=dt.datetime.fromisoformat(expires_at),
            cached_at=dt.datetime.fromisoformat(cached_at),
        )

    async def clean_expired_cache(self) -> int:
        """Delete expired rows from the suppression read table; returns how many.

        This is read-table housekeeping, not an event: expired rows are already
        invisible to ``check_suppression``, and a rebuild brings them back only
        until the next cleanup.
        """
        now = iso(self.log.now())
        async with self.log.transaction():
            await self.runner.refresh()  # another store may have switched generations (and dropped ours)
            table = self.runner.table("suppression", "suppression")
            rows = await self.log.query(f"SELECT count(*) FROM {table} WHERE expires_at <= ?", (now,))
            count = int(rows[0][0])
            if count:
                await self.log.apply(
                    [GuardedBatch(None, [Statement(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))])]
                )
        return count

    # -- statistics --------------------------------------------------------

    async def get_database_stats(self) -> dict[str, Any]:
        by_type = {str(t): int(n) for t, n in await self.log.query("SELECT type, count(*) FROM events GROUP BY type")}
        signals = (await self.log.query("SELECT count(*) FROM signals"))[0][0]
        suppression = (await self.log.query("SELECT count(*) FROM suppression"))[0][0]
        backend = await self.log.backend_stats()
        return {
            "events": sum(by_type.values()),
            "events_by_type": by_type,
            "signals": int(signals),
            "suppression_entries": int(suppression),
            "head_position": await self.log.head_position(),
            "file_size_bytes": int(backend.get("file_size_bytes", 0)),
            "backend": backend.get("backend"),
            "projections": {
                s.name: {"version": s.version, "checkpoint": s.checkpoint, "lag": s.lag, "state": s.state}
                for s in await self.projection_status()
                if s.state == "live"
            },
        }

    async def projection_status(self) -> list[ProjectionStatus]:
        return await self.runner.status()

    # -- audit and search (issue 4; see eventstore/audit.py) -----------------

    async def history(self, canonical_key: str) -> list[RecordedEvent]:
        """Every event about a company, with its envelope; NotFound for an unknown key."""
        return await audit.history(self.log, canonical_key)

    async def why(self, signal_id: int) -> audit.SignalStory:
        """The signal's story (``str()`` tells it); NotFound for an unknown id."""
        return await audit.why(self.log, signal_id)

    async def as_of(self, when: dt.datetime) -> audit.AsOfView:
        """A read-only view answering the query methods as of ``when`` (by recorded_at, inclusive)."""
        return await audit.as_of(self.log, when)

    async def events(
        self,
        *,
        types: Iterable[str] | None = None,
        stream_prefix: str | None = None,
        actor: str | None = None,
        correlation_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Recorded events matching every given filter, in position order."""
        return await audit.events(
            self.log,
            types=types,
            stream_prefix=stream_prefix,
            actor=actor,
            correlation_id=correlation_id,
            since=since,
            until=until,
            limit=limit,
        )

    async def search(self, text: str, limit: int = 20) -> list[Signal]:
        """Signals whose company name or raw_data text contains every word of ``text``, best first."""
        await self.runner.ensure_current()
        for attempt in range(2):
            await self.runner.refresh()  # another store may have switched generations (and dropped ours)
            try:
                ids = await search_ids(self.log, self.runner.table("search", "search"), text, limit)
                break
            except DatabaseError:  # ... even between that refresh and this query: once more
                if attempt:
                    raise
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = await self.log.query(f"SELECT {_SIGNAL_COLUMNS} FROM {_SIGNAL_FROM} WHERE s.id IN ({marks})", ids)
        found = {signal.id: signal for signal in map(_signal, rows)}
        return [found[i] for i in ids if i in found]


def _is_signal_id(value: object) -> bool:
    """Whether ``value`` can be a signal id (a position): a positive 64-bit integer."""
    return isinstance(value, int) and 0 < value <= MAX_POSITION


def _same_outcome(recorded: RecordedEvent, event: SignalPushed | SignalRejected) -> bool:
    data = recorded.data
    if isinstance(event, SignalPushed):
        return isinstance(data, SignalPushed) and data.notion_page_id == event.notion_page_id
    return isinstance(data, SignalRejected) and data.reason == event.reason


def _conflict(event: SignalPushed | SignalRejected, recorded: RecordedEvent) -> str:
    data = recorded.data
    wanted = "push" if isinstance(event, SignalPushed) else "reject"
    if isinstance(data, SignalPushed):
        was = f"already pushed to Notion page {data.notion_page_id}"
    else:
        assert isinstance(data, SignalRejected)
        was = f"already rejected ({data.reason})"
    return f"cannot {wanted} signal {event.signal_id}: {was} at position {recorded.position}"


def signal_store(
    path: str = "signals.db",
    *,
    actor: str | None = None,
    clock: Clock | None = None,
    cleanup_interval: float | None = 3600.0,
    background: bool = True,
    **options: Any,
) -> SignalStore:
    """The compatible facade on the store at ``path`` (SQLite file, ``:memory:`` or ``postgresql://``).

    ``async with signal_store("signals.db") as store: ...``. ``actor`` is the
    default actor of every write; ``clock`` (aware UTC) is for tests;
    ``cleanup_interval`` seconds between automatic clean-ups of expired
    suppression rows (None: never). Other options go to ``open_store``.
    """
    return SignalStore(
        open_store(path, actor=actor, clock=clock, **options),
        cleanup_interval=cleanup_interval,
        background=background,
    )
