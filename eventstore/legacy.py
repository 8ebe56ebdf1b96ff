"""Import the replaced storage layer's data into an event store.

The old layer kept three mutable tables in a SQLite file (``signals``,
``signal_processing``, ``suppression_cache``) and exported them to JSON. Either
can be imported; each row becomes the event that would have produced it::

    signals row                          -> SignalDetected     (stream company:<canonical_key>)
    signal_processing, status pushed     -> SignalPushed       (of that signal's new id)
    signal_processing, status rejected   -> SignalRejected
    signal_processing, status pending    -> nothing: a detection without a decision is pending
    suppression_cache row                -> SuppressionSynced  (its expires_at kept)

Signal ids change: in an event store a signal's id is its detection's
position (signals are imported in old-id order, so the order is kept). Every
imported event's metadata keeps where it came from (``legacy_table``,
``legacy_id``) and the old row's own time (``legacy_time``), since its
``recorded_at`` is the time of the import: that is when the log learned of it,
and what ``as_of`` answers by.

Columns are found by name (the old layer's; a rejection's reason may be in
``reason``, ``rejection_reason`` or ``error_message``). A time without a zone
is read as UTC (the report counts them). A missing table or column, or a row
that does not make a valid event, stops the import with the table and row
named; the import is one transaction into a new or empty store, so it is all
or nothing. The old file is opened read-only and never changed.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import msgspec

from eventstore.backup import Progress, load_into_empty, refuse_events
from eventstore.codec import new_correlation_id
from eventstore.errors import EventStoreError, InvalidEvent, SchemaVersionError
from eventstore.events import Event, SignalDetected, SignalPushed, SignalRejected, SuppressionSynced, company_stream
from eventstore.model import AppendRequest
from eventstore.store import EventStore

__all__ = ("LegacyData", "LegacyReport", "import_legacy", "read_legacy")

Record = Mapping[str, Any]
_SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 500
# Each table, under the names a JSON export may give it.
_TABLES = {
    "signals": ("signals",),
    "signal_processing": ("signal_processing", "processing"),
    "suppression_cache": ("suppression_cache", "suppression"),
}
_REASON_COLUMNS = ("reason", "rejection_reason", "error_message")
_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d*)?\s*$")
_MAX_UNIX_SECONDS = 100_000_000_000  # the year 5138: a larger number is milliseconds or worse
_TIME_COLUMNS = {
    "signals": ("created_at", "detected_at"),
    "signal_processing": ("processed_at", "updated_at", "created_at"),
    "suppression_cache": ("cached_at", "synced_at", "updated_at", "created_at"),
}


class LegacyData(NamedTuple):
    """The old layer's rows, read from ``source``, each a mapping of column name to value."""

    source: str
    signals: list[Record]
    processing: list[Record]
    suppression: list[Record]


class LegacyReport(msgspec.Struct, frozen=True, kw_only=True):
    signals: int  # detections imported
    merged: int  # old rows that repeat an earlier row's detection (both ids map to it)
    pushed: int
    rejected: int
    pending: int
    suppression: int
    events: int
    head_position: int
    naive_times: int  # times without a zone, read as UTC
    id_map: dict[int, int]  # old signal id -> new signal id


# -- reading ----------------------------------------------------------------


def read_legacy(path: str | Path) -> LegacyData:
    """The old layer's tables from its SQLite file (a path or ``file:`` URI) or its JSON export."""
    if isinstance(path, str) and path.startswith("file:"):
        path = urllib.parse.unquote(urllib.parse.urlparse(path).path)
    path = Path(path)
    try:
        with path.open("rb") as source:
            magic = source.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise EventStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _read_sqlite(path) if magic == _SQLITE_MAGIC else _read_json(path)


def _read_sqlite(path: Path) -> LegacyData:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise EventStoreError(f"cannot open {path} read-only: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.text_factory = bytes  # decoded row by row, so that bad text names its row
        master = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {bytes(name).decode(errors="replace") for (name,) in master}
        if "events" in tables:
            raise SchemaVersionError(
                f"{path} is already an event store; copy it with 'eventstore export' and 'eventstore import'"
            )
        missing = [table for table in _TABLES if table not in tables]
        if missing:
            raise SchemaVersionError(
                f"{path} is not a database of the old storage layer: no {', '.join(missing)} table"
                + ("s" if len(missing) > 1 else "")
            )
        rows = {table: _all_rows(conn, table) for table in _TABLES}
    except sqlite3.Error as exc:
        raise EventStoreError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()
    return LegacyData(str(path), rows["signals"], rows["signal_processing"], rows["suppression_cache"])


def _all_rows(conn: sqlite3.Connection, table: str) -> list[Record]:
    """Every row of ``table`` (one of ours, not user input), its text decoded (the plan orders them)."""
    rows: list[Record] = []
    for index, row in enumerate(conn.execute(f"SELECT * FROM {table}")):
        record = dict(row)
        for column, value in record.items():
            if isinstance(value, bytes):
                try:
                    record[column] = value.decode()
                except UnicodeDecodeError:
                    name = _row_name(table, record, index)
                    raise InvalidEvent(f"{name}: {column} is not UTF-8 text: {value!r}", field=column) from None
        rows.append(record)
    return rows


def _read_json(path: Path) -> LegacyData:
    try:
        document = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise EventStoreError(f"{path} is neither a SQLite database nor a JSON export: {exc}") from exc
    if not isinstance(document, dict):
        raise SchemaVersionError(f"{path}: a JSON export of the old storage layer is an object, not {_kind(document)}")
    holder = next((document[key] for key in ("tables", "data") if isinstance(document.get(key), dict)), document)
    found: dict[str, list[Record]] = {}
    for table, names in _TABLES.items():
        name = next((n for n in names if n in holder), None)
        if name is None:
            keys = ", ".join(sorted(map(str, holder))) or "none"
            raise SchemaVersionError(f"{path}: no {table!r} list in the JSON export (its keys: {keys})")
        rows = holder[name]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise SchemaVersionError(f"{path}: {name!r} must be a list of objects (one per row)")
        found[table] = rows
    return LegacyData(str(path), found["signals"], found["signal_processing"], found["suppression_cache"])


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else type(value).__name__


# -- rows to events ------------------------------------------------------------


def _row_name(table: str, record: Record, index: int) -> str:
    row_id = record.get("id")
    return f"{table} row id={row_id!r}" if row_id is not None else f"{table} row {index + 1}"


def _by_id(records: Sequence[Record]) -> list[tuple[int, Record]]:
    """(index, row) in old-id order (rows without an integer id keep their place at the end)."""

    def key(item: tuple[int, Record]) -> tuple[int, int]:
        row_id = item[1].get("id")
        return (0, row_id) if isinstance(row_id, int) and not isinstance(row_id, bool) else (1, item[0])

    return sorted(enumerate(records), key=key)


class _Row:
    """One old row, with errors that name it."""

    def __init__(self, table: str, record: Record, index: int) -> None:
        self.table = table
        self.record = record
        self.name = _row_name(table, record, index)

    def error(self, message: str, field: str | None = None) -> InvalidEvent:
        return InvalidEvent(f"{self.name}: {message}", field=field)

    def get(self, *columns: str, required: bool = True) -> Any:
        for column in columns:
            value = self.record.get(column)
            if value is not None:
                return value
        if required:
            what = " or ".join(columns)
            absent = all(column not in self.record for column in columns)
            raise self.error(f"no {what} column" if absent else f"{what} is empty", field=columns[0])
        return None

    def text(self, *columns: str, required: bool = True) -> str:
        value = self.get(*columns, required=required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(f"{columns[0]} must be text, not {value!r}", field=columns[0])
        return value

    def integer(self, column: str) -> int:
        value = self.get(column)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{column} must be an integer, not {value!r}", field=column)
        return value

    def json_object(self, column: str) -> dict[str, Any]:
        value = self.get(column, required=False)
        if value is None or value == "":
            return {}
        if isinstance(value, str | bytes):
            try:
                value = msgspec.json.decode(value)
            except msgspec.DecodeError as exc:
                raise self.error(f"{column} is not valid JSON: {exc}", field=column) from exc
        if not isinstance(value, dict):
            raise self.error(f"{column} must be a JSON object, not {_kind(value)}", field=column)
        return value

    def time(self, column: str, naive: list[int]) -> dt.datetime:
        stored = value = self.get(column)
        if isinstance(value, str) and _NUMBER.match(value):
            value = float(value)  # a TEXT column keeps a number written to it as text
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and abs(value) >= _MAX_UNIX_SECONDS:
            message = f"{column} {stored!r} is not Unix seconds (milliseconds?); write it as ISO 8601 or seconds"
            raise self.error(message, field=column)
        try:
            if number:
                return dt.datetime.fromtimestamp(value, dt.UTC)
            if not isinstance(value, str):
                raise TypeError
            when = dt.datetime.fromisoformat(value.strip())
        except (TypeError, ValueError, OverflowError, OSError):
            raise self.error(f"{column} {stored!r} is not a time (ISO 8601 or Unix seconds)", field=column) from None
        if when.tzinfo is None:
            naive[0] += 1
            when = when.replace(tzinfo=dt.UTC)
        return when

    def metadata(self, actor: str, correlation_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "actor": actor,
            "correlation_id": correlation_id,
            "legacy_table": self.table,
            "legacy_id": self.record.get("id"),
        }
        when = next((self.record[c] for c in _TIME_COLUMNS[self.table] if self.record.get(c) is not None), None)
        if isinstance(when, str | int | float):
            meta["legacy_time"] = when
        return meta


class _Plan:
    """The events the old rows make, checked before anything is written."""

    def __init__(self, log: EventStore, data: LegacyData, actor: str) -> None:
        self.log = log
        self.actor = actor
        self.correlation_id = new_correlation_id()
        self.naive = [0]
        self.signals: list[AppendRequest] = []  # one per detection, in old-id order
        self.index_of: dict[int, int] = {}  # old signal id -> its detection in self.signals
        self.merged = 0
        self._keys: dict[tuple[str, str, str, dt.datetime], int] = {}
        for index, record in _by_id(data.signals):
            self._add_detection(_Row("signals", record, index))
        self.decisions = self._decisions(data.processing)
        self.pending = len(self.signals) - len(self.decisions)
        self.suppression = [self._suppression(_Row("suppression_cache", r, i)) for i, r in enumerate(data.suppression)]

    def _checked(self, row: _Row, event: Event) -> Event:
        try:
            self.log.registry.encode(event)
        except InvalidEvent as exc:
            raise row.error(str(exc), field=exc.field) from exc
        return event

    def _request(self, row: _Row, stream: str, event: Event) -> AppendRequest:
        return AppendRequest(
            stream=stream,
            events=[self._checked(row, event)],
            metadata=row.metadata(self.actor, self.correlation_id),
        )

    def _add_detection(self, row: _Row) -> None:
        old_id = row.integer("id")
        if old_id in self.index_of:
            raise row.error(f"another row has id={old_id}", field="id")
        confidence = row.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            raise row.error(f"confidence must be a number, not {confidence!r}", field="confidence")
        event = SignalDetected(
            signal_type=row.text("signal_type"),
            source_api=row.text("source_api"),
            canonical_key=row.text("canonical_key"),
            company_name=row.text("company_name", required=False),
            confidence=float(confidence),
            raw_data=row.json_object("raw_data"),
            detected_at=row.time("detected_at", self.naive),
        )
        request = self._request(row, company_stream(event.canonical_key), event)
        key = (event.canonical_key, event.signal_type, event.source_api, event.detected_at)
        first = self._keys.get(key)
        if first is not None:
            # One detection stored twice (e.g. one instant spelt two ways, which the old text
            # UNIQUE let through): as with save_signal, the first stands and both ids name it.
            self.index_of[old_id] = first
            self.merged += 1
            return
        self._keys[key] = self.index_of[old_id] = len(self.signals)
        self.signals.append(request)

    def _decisions(self, records: Sequence[Record]) -> list[tuple[int, str, Callable[[int], Event], _Row]]:
        """Each signal's push or rejection: (its detection's index, status, event for its new id, row)."""
        decided: dict[int, tuple[str, str, _Row]] = {}
        found: list[tuple[int, str, Callable[[int], Event], _Row]] = []
        for position, record in _by_id(records):
            row = _Row("signal_processing", record, position)
            old_id = row.integer("signal_id")
            status = row.text("status").strip().lower()
            index = self.index_of.get(old_id)
            if index is None:
                raise row.error(f"signal_id {old_id} is not in the signals table", field="signal_id")
            if status == "pending":
                continue
            make, outcome = self._decision(row, status)
            self._checked(row, make(1))
            earlier = decided.get(index)
            if earlier is not None:
                if earlier[:2] == (status, outcome):
                    continue  # the same push (page) or rejection (reason) again: one event, as the facade
                was = f"{earlier[0]} ({earlier[1]!r}) by {earlier[2].name}"
                raise row.error(f"signal {old_id} was already {was}", field="status")
            decided[index] = (status, outcome, row)
            found.append((index, status, make, row))
        return found

    def _decision(self, row: _Row, status: str) -> tuple[Callable[[int], Event], str]:
        """The event for the signal's new id, and what decides a repeat: the page, or the reason."""
        metadata = row.json_object("metadata")
        if status == "pushed":
            page = row.text("notion_page_id")
            return lambda signal_id: SignalPushed(signal_id=signal_id, notion_page_id=page, metadata=metadata), page
        if status == "rejected":
            reason = row.text(*_REASON_COLUMNS)
            return lambda signal_id: SignalRejected(signal_id=signal_id, reason=reason, metadata=metadata), reason
        raise row.error(f"status {status!r} is not pending, pushed or rejected", field="status")

    def _suppression(self, row: _Row) -> AppendRequest:
        event = SuppressionSynced(
            canonical_key=row.text("canonical_key"),
            notion_page_id=row.text("notion_page_id", required=False),
            status=row.text("status", required=False),
            expires_at=row.time("expires_at", self.naive),
        )
        return self._request(row, company_stream(event.canonical_key), event)

    @property
    def total(self) -> int:
        return len(self.signals) + len(self.decisions) + len(self.suppression)


async def import_legacy(
    log: EventStore,
    source: str | Path | LegacyData,
    *,
    actor: str = "legacy-import",
    progress: Progress | None = None,
) -> LegacyReport:
    """Import the old layer's file (or rows already read) into a new or empty store, all or nothing."""
    data = source if isinstance(source, LegacyData) else await anyio.to_thread.run_sync(read_legacy, source)
    plan = _Plan(log, data, actor)
    return await load_into_empty(log, lambda: _append(log, plan, progress), progress=progress)


async def _append(log: EventStore, plan: _Plan, progress: Progress | None) -> LegacyReport:
    async with log.transaction():
        await refuse_events(log)
        return await _append_all(log, plan, progress)


async def _append_all(log: EventStore, plan: _Plan, progress: Progress | None) -> LegacyReport:
    done = 0

    async def append(requests: Sequence[AppendRequest]) -> list[int]:
        nonlocal done
        positions: list[int] = []
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start : start + _CHUNK]
            positions += [result.positions[0] for result in await log.append_batch(chunk)]
            done += len(chunk)
            if progress is not None:
                progress(done, plan.total)
        return positions

    new_ids = await append(plan.signals)
    decisions = [
        AppendRequest(
            stream=plan.signals[index].stream,
            events=[make(new_ids[index])],
            metadata=row.metadata(plan.actor, plan.correlation_id),
        )
        for index, _, make, row in plan.decisions
    ]
    await append(decisions)
    await append(plan.suppression)
    pushed = sum(1 for _, status, _, _ in plan.decisions if status == "pushed")
    return LegacyReport(
        signals=len(plan.signals),
        merged=plan.merged,
        pushed=pushed,
        rejected=len(plan.decisions) - pushed,
        pending=plan.pending,
        suppression=len(plan.suppression),
        events=plan.total,
        head_position=await log.head_position(),
        naive_times=plan.naive[0],
        id_map={old_id: new_ids[index] for old_id, index in plan.index_of.items()},
    )
