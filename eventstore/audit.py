"""Audit: what happened, when, by whom, and what did we know at time T.

Everything here reads the log itself, never the read tables, so it answers the
same on both backends and after a rebuild or an import. ``as_of(when)`` works
because ``recorded_at`` never decreases with position: the state at ``when`` is
the state after the log's prefix up to ``log.position_at(when)``, replayed in
memory by the plain folds below (the same rules as the built-in projections).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from eventstore import facade
from eventstore.codec import to_micros
from eventstore.errors import NotFound
from eventstore.events import SignalDetected, SignalPushed, SignalRejected, SuppressionSynced, company_stream
from eventstore.model import RecordedEvent
from eventstore.store import EventStore

__all__ = ("AsOfView", "SignalStory", "as_of", "events", "history", "why")

_ONE_MICROSECOND = dt.timedelta(microseconds=1)
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)  # nothing is recorded before it


async def history(log: EventStore, canonical_key: str) -> list[RecordedEvent]:
    """Every event about a company, in order, with its envelope. NotFound if there is none."""
    found = [event async for event in log.read_stream(company_stream(canonical_key))]
    if not found:
        raise NotFound(f"no events for company {canonical_key!r} in {log.location}")
    return found


async def events(
    log: EventStore,
    *,
    types: Iterable[str] | None = None,
    stream_prefix: str | None = None,
    actor: str | None = None,
    correlation_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[RecordedEvent]:
    """Events matching every given filter, in position order; ``since``/``until`` are inclusive."""
    return [e async for e in iter_events(log, types, stream_prefix, actor, correlation_id, since, until, limit)]


async def iter_events(
    log: EventStore,
    types: Iterable[str] | None = None,
    stream_prefix: str | None = None,
    actor: str | None = None,
    correlation_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> AsyncIterator[RecordedEvent]:
    if limit is not None and limit <= 0:
        return
    start = 1
    if since is not None and (since.tzinfo is None or since > _EARLIEST):  # (position_at refuses a naive time)
        start = (await log.position_at(since - _ONE_MICROSECOND)) + 1
    last = await log.position_at(until) if until is not None else None
    count = 0
    async for event in log.read_all(from_position=start, types=types, stream_prefix=stream_prefix):
        if last is not None and event.position > last:
            return
        if actor is not None and event.actor != actor:
            continue
        if correlation_id is not None and event.correlation_id != correlation_id:
            continue
        yield event
        count += 1
        if limit is not None and count >= limit:
            return


# -- folding events into signals ---------------------------------------------


@dataclass
class Replay:
    """Signals and suppression entries after applying a run of events (in position order)."""

    signals: dict[int, facade.Signal] = field(default_factory=dict)
    suppression: dict[str, facade.SuppressionEntry] = field(default_factory=dict)

    def apply(self, event: RecordedEvent) -> None:
        data = event.data
        if isinstance(data, SignalDetected):
            self.signals[event.position] = _detected_signal(event, data)
        elif isinstance(data, SignalPushed | SignalRejected):
            current = self.signals.get(data.signal_id)
            if current is not None and current.status == "pending":
                self.signals[data.signal_id] = _processed(current, event, data)
        elif isinstance(data, SuppressionSynced):
            self.suppression[data.canonical_key] = facade.SuppressionEntry(
                canonical_key=data.canonical_key,
                notion_page_id=data.notion_page_id,
                status=data.status,
                expires_at=data.expires_at,
                cached_at=event.recorded_at,
            )


def _detected_signal(event: RecordedEvent, data: SignalDetected) -> facade.Signal:
    return facade.Signal(
        id=event.position,
        signal_type=data.signal_type,
        source_api=data.source_api,
        canonical_key=data.canonical_key,
        company_name=data.company_name,
        confidence=data.confidence,
        raw_data=dict(data.raw_data),
        detected_at=data.detected_at,
        recorded_at=event.recorded_at,
        status="pending",
    )


def _processed(signal: facade.Signal, event: RecordedEvent, data: SignalPushed | SignalRejected) -> facade.Signal:
    pushed = isinstance(data, SignalPushed)
    return msgspec.structs.replace(
        signal,
        status="pushed" if pushed else "rejected",
        notion_page_id=data.notion_page_id if isinstance(data, SignalPushed) else None,
        rejection_reason=data.reason if isinstance(data, SignalRejected) else None,
        processed_at=event.recorded_at,
        metadata=dict(data.metadata),
    )


# -- why ---------------------------------------------------------------------


@dataclass(frozen=True)
class SignalStory:
    """A signal, the events that made it what it is, and its company's suppression entries."""

    signal: facade.Signal
    events: Sequence[RecordedEvent]
    #: SuppressionSynced events of the company recorded up to the decision (or up to now if pending).
    suppression: Sequence[RecordedEvent]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        s = self.signal
        detection = self.events[0]
        out = [
            f"Signal {s.id}: {s.signal_type} for {s.canonical_key} ({s.company_name}), "
            f"confidence {s.confidence:g}, status {s.status}",
            f"Detected by {detection.actor or 'unknown actor'} from source {s.source_api} "
            f"at {_t(s.detected_at)}; recorded at {_t(detection.recorded_at)} "
            f"({_delay(s.detected_at, detection.recorded_at)}), position {detection.position}, "
            f"correlation {detection.correlation_id or '-'}",
        ]
        for entry in self.suppression:
            sync = entry.data
            assert isinstance(sync, SuppressionSynced)
            if entry.recorded_at > detection.recorded_at:  # unknown to the store when the signal came in
                state = "synced after detection"
            else:
                state = "live at detection" if sync.expires_at > s.detected_at else "expired at detection"
            out.append(
                f"Suppression for {sync.canonical_key}: Notion page {sync.notion_page_id or '-'} "
                f"(status {sync.status or '-'}), synced by {entry.actor or 'unknown actor'} at "
                f"{_t(entry.recorded_at)}, expires {_t(sync.expires_at)} ({state})"
            )
        for event in self.events[1:]:
            data = event.data
            who = event.actor or "unknown actor"
            if isinstance(data, SignalPushed):
                out.append(f"Pushed by {who} to Notion page {data.notion_page_id} at {_t(event.recorded_at)}")
            elif isinstance(data, SignalRejected):
                out.append(f"Rejected by {who} at {_t(event.recorded_at)}: {data.reason}")
            if isinstance(data, SignalPushed | SignalRejected) and data.metadata:
                out.append(f"  metadata: {_compact(data.metadata)}")
        if s.status == "pending":
            out.append("Not processed yet (pending)")
        return out


async def why(log: EventStore, signal_id: int) -> SignalStory:
    """The story of a signal: detection, decision, and the company's suppression entries."""
    detection = await _detection(log, signal_id)
    related, suppression, decided_at = [detection], [], None
    async for event in log.read_stream(detection.stream):
        data = event.data
        if isinstance(data, SignalPushed | SignalRejected) and data.signal_id == signal_id and decided_at is None:
            related.append(event)
            decided_at = event.position
        elif isinstance(data, SuppressionSynced) and decided_at is None:
            suppression.append(event)
    replay = Replay()
    for event in related:
        replay.apply(event)
    return SignalStory(replay.signals[signal_id], related, suppression)


async def _detection(log: EventStore, signal_id: int) -> RecordedEvent:
    valid = isinstance(signal_id, int) and not isinstance(signal_id, bool) and signal_id > 0
    found = await log.get_events([signal_id]) if valid else []
    if not found or not isinstance(found[0].data, SignalDetected):
        raise NotFound(f"no signal with id {signal_id} in {log.location}")
    return found[0]


# -- as of -------------------------------------------------------------------


async def as_of(log: EventStore, when: dt.datetime) -> AsOfView:
    """A read-only view answering as of ``when`` (events recorded at or before it)."""
    if when.tzinfo is None:
        raise ValueError(f"as-of time must be timezone-aware, not {when.isoformat()}")
    return AsOfView(log, when, await log.position_at(when))


class AsOfView:
    """The facade's queries, answered from the log's prefix up to ``position``.

    Per-company questions replay only that company's stream; the whole-table
    ones (pending signals, processing counts) replay the prefix once and cache it.
    """

    def __init__(self, log: EventStore, when: dt.datetime, position: int) -> None:
        self.log = log
        self.when = when
        self.position = position
        self._all: Replay | None = None

    def __repr__(self) -> str:
        return f"AsOfView({self.when.isoformat()}, position={self.position})"

    async def _company(self, canonical_key: str) -> Replay:
        replay = Replay()
        async for event in self.log.read_stream(company_stream(canonical_key)):
            if event.position > self.position:
                break
            replay.apply(event)
        return replay

    async def _everything(self) -> Replay:
        if self._all is None:
            replay = Replay()
            if self.position:
                types = ("SignalDetected", "SignalPushed", "SignalRejected")
                async for event in self.log.read_all(types=types):
                    if event.position > self.position:
                        break
                    replay.apply(event)
            self._all = replay
        return self._all

    async def get_signal(self, signal_id: int) -> facade.Signal | None:
        if not isinstance(signal_id, int) or not 0 < signal_id <= self.position:
            return None
        found = await self.log.get_events([signal_id])
        if not found or not isinstance(found[0].data, SignalDetected):
            return None
        return (await self._company(found[0].data.canonical_key)).signals.get(signal_id)

    async def get_signals_for_company(self, canonical_key: str) -> list[facade.Signal]:
        replay = await self._company(canonical_key)
        return [replay.signals[key] for key in sorted(replay.signals)]

    async def get_pending_signals(
        self,
        limit: int = 100,
        signal_type: str | None = None,
        source_api: str | None = None,
        min_confidence: float | None = None,
    ) -> list[facade.Signal]:
        replay = await self._everything()
        out: list[facade.Signal] = []
        if limit == 0:
            return out
        for key in sorted(replay.signals):
            s = replay.signals[key]
            if s.status != "pending" or (signal_type is not None and s.signal_type != signal_type):
                continue
            if (source_api is not None and s.source_api != source_api) or (
                min_confidence is not None and s.confidence < min_confidence
            ):
                continue
            out.append(s)
            if len(out) == limit:  # a negative limit is no limit, as on the live store
                break
        return out

    async def get_processing_stats(self) -> dict[str, int]:
        stats = {"pending": 0, "pushed": 0, "rejected": 0}
        for s in (await self._everything()).signals.values():
            stats[s.status] += 1
        stats["total"] = sum(stats.values())
        return stats

    async def check_suppression(self, canonical_key: str) -> facade.SuppressionEntry | None:
        """The entry live at ``when`` (expires strictly after it), or None."""
        entry = (await self._company(canonical_key)).suppression.get(canonical_key)
        if entry is None or entry.expires_at is None or entry.expires_at <= self.when:
            return None
        return entry


# -- formatting helpers ----------------------------------------------------


def _t(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds" if not when.microsecond else "milliseconds")


def _delay(detected: dt.datetime, recorded: dt.datetime) -> str:
    seconds = (to_micros(recorded) - to_micros(detected)) / 1e6
    if seconds >= 0:
        return f"{_span(seconds)} after detection"
    return f"{_span(-seconds)} before the detected time"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.3g}s"


def _compact(value: dict[str, Any]) -> str:
    return msgspec.json.encode(value).decode()
