"""Export and import the log as JSON Lines, preserving positions, ids and hashes.

Format (version 1): a header line, then one line per event in position order::

    {"format":"eventstore-jsonl","format_version":1,"schema_version":1,"head_position":N,"event_count":N}
    {"position":1,"event_id":"<uuid>","stream":"...","version":1,"type":"...","schema_version":1,
     "data":{...},"metadata":{...},"recorded_at":"<ISO 8601, microseconds, UTC>","hash":"<hex>"}

``data`` and ``metadata`` are the stored JSON bytes embedded verbatim (not
re-encoded), which is what lets an import recompute exactly the same hash chain.
Both directions stream: memory does not grow with the size of the log.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import IO, Any, TypeVar

import msgspec

from eventstore.codec import GENESIS_HASH, NUL_REFUSED, chain_hash, decode_metadata, from_micros, nul_path, to_micros
from eventstore.errors import EventStoreError, IntegrityViolation
from eventstore.model import GuardedBatch, Row, Statement
from eventstore.schema import LOG_MIGRATIONS
from eventstore.store import EventStore
from projections import ProjectionRunner
from projections.search import default_projections

__all__ = (
    "FORMAT",
    "FORMAT_VERSION",
    "ExportHeader",
    "ImportReport",
    "export_log",
    "import_log",
    "load_into_empty",
    "refuse_events",
    "restore",
)

FORMAT = "eventstore-jsonl"
FORMAT_VERSION = 1
_CHUNK = 500
_COLUMNS = "position, event_id, stream, version, type, schema_version, recorded_at, metadata, data, hash"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
Progress = Callable[[int, int], None]
T = TypeVar("T")


class ExportHeader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: str
    format_version: int
    schema_version: int
    head_position: int
    event_count: int


class _Line(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    position: int
    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    schema_version: int
    data: msgspec.Raw
    metadata: msgspec.Raw
    recorded_at: dt.datetime
    hash: str


class ImportReport(msgspec.Struct, frozen=True):
    events: int
    head_position: int


_encode = msgspec.json.Encoder().encode
_header_decoder = msgspec.json.Decoder(ExportHeader)
_line_decoder = msgspec.json.Decoder(_Line)


async def export_log(log: EventStore, out: IO[bytes], *, progress: Progress | None = None) -> ExportHeader:
    """Write the log up to its current head to ``out``; returns the header written."""
    head = await log.head_position()
    count = int((await log.query("SELECT count(*) FROM events WHERE position <= ?", (head,)))[0][0])
    header = ExportHeader(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        schema_version=LOG_MIGRATIONS.latest,
        head_position=head,
        event_count=count,
    )
    out.write(_encode(header) + b"\n")
    written = 0
    async for row in log.raw_rows():
        if row[0] > head:
            break
        out.write(_encode(_to_line(row)) + b"\n")
        written += 1
        if progress is not None and written % _CHUNK == 0:
            progress(written, count)
    if progress is not None:
        progress(written, count)
    return header


def _to_line(row: Row) -> _Line:
    position, event_id, stream, version, type_, schema_version, recorded_at, metadata, data, hash_ = row
    return _Line(
        position=position,
        event_id=uuid.UUID(bytes=bytes(event_id)),
        stream=stream,
        version=version,
        type=type_,
        schema_version=schema_version,
        data=msgspec.Raw(bytes(data)),
        metadata=msgspec.Raw(bytes(metadata)),
        recorded_at=from_micros(recorded_at),
        hash=bytes(hash_).hex(),
    )


async def import_log(log: EventStore, lines: Iterable[bytes], *, progress: Progress | None = None) -> ImportReport:
    """Load an export into an empty store, all or nothing.

    Checks every line as it goes (format, contiguous positions, stream
    versions, non-decreasing times, the hash chain, decodable data, the
    header's counts) and raises IntegrityViolation naming the line; the
    transaction then rolls back and the store is left as empty as it was.
    """
    reader = _Reader(log, iter(lines))
    header = reader.header()
    async with log.transaction():
        await refuse_events(log)
        chunk: list[Row] = []
        async for row in reader.rows():
            chunk.append(row)
            if len(chunk) >= _CHUNK:
                await reader.insert(chunk)
                chunk = []
                if progress is not None:
                    progress(reader.count, header.event_count)
        if chunk:
            await reader.insert(chunk)
        reader.finish()
    if progress is not None:
        progress(reader.count, header.event_count)
    return ImportReport(events=reader.count, head_position=reader.position)


async def restore(log: EventStore, lines: Iterable[bytes], *, progress: Progress | None = None) -> ImportReport:
    """Import into a new or empty store, then rebuild every projection from the imported log."""
    return await load_into_empty(log, lambda: import_log(log, lines, progress=progress), progress=progress)


async def refuse_events(log: EventStore) -> None:
    """Raise unless the store holds no events (an import goes into a new or empty store)."""
    existing = await log.head_position()
    if existing:
        raise EventStoreError(
            f"cannot import into {log.location}: it already holds events (head position {existing}); "
            "import needs a new or empty store"
        )


async def load_into_empty(log: EventStore, load: Callable[[], Awaitable[T]], *, progress: Progress | None = None) -> T:
    """``load()`` (an import: its own transaction, checked with :func:`refuse_events`) into a new or
    empty store, then every projection rebuilt from what it wrote."""
    await refuse_events(log)
    runner = ProjectionRunner(log, default_projections())
    await runner.start(inline=False)  # empty tables at checkpoint 0, so nothing to catch up yet
    result = await load()
    await runner.rebuild(progress=progress)
    return result


class _Reader:
    """Parses and checks an export line by line."""

    def __init__(self, log: EventStore, lines: Any) -> None:
        self.log = log
        self.lines = lines
        self.line_no = 0
        self.count = 0
        self.position = 0
        self.previous_hash = GENESIS_HASH
        self.last_recorded = 0
        self.versions: dict[str, int] = {}
        self._header: ExportHeader | None = None

    def _fail(self, reason: str, line: int | None = None) -> IntegrityViolation:
        where = line if line is not None else self.line_no
        return IntegrityViolation(f"backup line {where}: {reason}", line=where, position=self.position + 1)

    def header(self) -> ExportHeader:
        self.line_no = 1
        first = next(self.lines, None)
        if first is None or not first.strip():
            raise self._fail("empty file: expected the header line")
        try:
            header = _header_decoder.decode(first)
        except msgspec.DecodeError as exc:
            raise self._fail(f"not a valid header: {exc}") from exc
        if header.format != FORMAT or header.format_version != FORMAT_VERSION:
            raise self._fail(f"unknown format {header.format!r} version {header.format_version}")
        if header.schema_version > LOG_MIGRATIONS.latest:
            raise self._fail(f"schema_version {header.schema_version} is newer than this code knows")
        if header.event_count < 0 or header.head_position < header.event_count:
            raise self._fail("header counts are inconsistent")
        self._header = header
        return header

    async def rows(self) -> AsyncIterator[Row]:
        for raw in self.lines:
            self.line_no += 1
            if not raw.strip():
                raise self._fail("blank line")
            yield self._check(raw)

    def _check(self, raw: bytes) -> Row:
        try:
            line = _line_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise self._fail(f"not a valid event line: {exc}") from exc
        if line.position != self.position + 1:
            seen = "repeated" if line.position <= self.position else "missing positions before it"
            raise self._fail(f"expected position {self.position + 1}, found {line.position} ({seen})")
        expected_version = self.versions.get(line.stream, 0) + 1
        if line.version != expected_version:
            raise self._fail(f"stream {line.stream} expected version {expected_version}, found {line.version}")
        if line.recorded_at.tzinfo is None:
            raise self._fail("recorded_at has no time zone")
        recorded = to_micros(line.recorded_at)
        if recorded < self.last_recorded:
            raise self._fail("recorded_at goes back in time")
        try:
            stored_hash = bytes.fromhex(line.hash)
        except ValueError as exc:
            raise self._fail("hash is not hex") from exc
        data, metadata = bytes(line.data), bytes(line.metadata)
        row: Row = (
            line.position, line.event_id.bytes, line.stream, line.version, line.type,
            line.schema_version, recorded, metadata, data, stored_hash,
        )  # fmt: skip
        if chain_hash(self.previous_hash, row) != stored_hash:
            raise self._fail(f"hash of position {line.position} does not match its content and the chain")
        try:
            event = self.log.registry.decode(line.type, line.schema_version, data)
        except (msgspec.DecodeError, EventStoreError) as exc:
            raise self._fail(f"data does not decode as {line.type}: {exc}") from exc
        self._check_metadata(metadata)
        if self.log.dialect == "postgresql":  # SQLite stores NUL (older logs may hold one); PostgreSQL cannot
            self._refuse_nul(line, event, data, metadata)
        self.position, self.previous_hash, self.last_recorded = line.position, stored_hash, recorded
        self.versions[line.stream] = line.version
        self.count += 1
        return row

    def _refuse_nul(self, line: _Line, event: Any, data: bytes, metadata: bytes) -> None:
        if "\x00" in line.stream:
            raise self._fail(f"the stream name {NUL_REFUSED}")
        for what, raw, value in (("data", data, event), ("metadata", metadata, None)):
            if b"\\u0000" in raw:
                where = nul_path(msgspec.to_builtins(value) if value is not None else decode_metadata(raw))
                if where is not None:
                    label = f"{line.type}.{where}" if what == "data" else f"metadata.{where}"
                    raise self._fail(f"{label} {NUL_REFUSED}")

    def _check_metadata(self, metadata: bytes) -> None:
        """Metadata as an append would have written it: a JSON object, its envelope keys strings or null."""
        try:
            meta = decode_metadata(metadata)
        except msgspec.DecodeError as exc:
            raise self._fail(f"metadata is not a JSON object: {exc}") from exc
        for key in ("actor", "correlation_id", "causation_id"):
            value = meta.get(key)
            if value is not None and not isinstance(value, str):
                raise self._fail(f"metadata.{key} must be a string, not {type(value).__name__}")

    async def insert(self, rows: list[Row]) -> None:
        """Insert the rows just checked (they end at the current line); a repeated event id names its line."""
        try:
            await self.log.apply([GuardedBatch(None, [Statement(_INSERT, row) for row in rows])])
        except EventStoreError as exc:
            # Ids are not remembered line by line (a million of them would not fit in bounded
            # memory): the database's unique index catches a repeat, and we find its line here.
            first_line = self.line_no - len(rows) + 1
            ids = [uuid.UUID(bytes=row[1]) for row in rows]
            earlier = await self.log.find_positions(ids)  # imported by an earlier chunk
            for offset, (event_id, row) in enumerate(zip(ids, rows, strict=True)):
                if earlier.get(event_id, row[0]) != row[0]:
                    message = f"event id {event_id} repeats the id of position {earlier[event_id]}"
                    raise self._fail(message, first_line + offset) from exc
                earlier.setdefault(event_id, row[0])
            raise

    def finish(self) -> None:
        header = self._header
        assert header is not None
        if self.count != header.event_count or self.position != header.head_position:
            raise self._fail(
                f"truncated or incomplete: the header promises {header.event_count} events up to position "
                f"{header.head_position}, the file has {self.count} up to position {self.position}",
                line=self.line_no + 1,
            )
