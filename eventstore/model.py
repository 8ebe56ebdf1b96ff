"""Plain data the log hands out and takes in: versions, recorded events, results."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import msgspec

from eventstore.events import Event

__all__ = (
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "ExpectedVersion",
    "GuardedBatch",
    "InlineHook",
    "RecordedEvent",
    "Row",
    "Statement",
    "VerifyReport",
)


class _Expect(enum.Enum):
    NO_STREAM = "NO_STREAM"
    STREAM_EXISTS = "STREAM_EXISTS"
    ANY = "ANY"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


NO_STREAM = _Expect.NO_STREAM
STREAM_EXISTS = _Expect.STREAM_EXISTS
ANY = _Expect.ANY
ExpectedVersion: TypeAlias = "int | _Expect"


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as the log recorded it: the envelope plus the typed ``data``."""

    position: int
    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    schema_version: int
    recorded_at: dt.datetime
    metadata: dict[str, Any]
    data: Event
    hash: bytes

    @property
    def actor(self) -> str | None:
        value = self.metadata.get("actor")
        return value if isinstance(value, str) else None

    @property
    def correlation_id(self) -> str | None:
        value = self.metadata.get("correlation_id")
        return value if isinstance(value, str) else None


class AppendResult(msgspec.Struct, frozen=True):
    """What an append did: one position per event and the stream's version after it."""

    positions: list[int]
    version: int
    #: False when every event id was already in the log (an idempotent no-op).
    written: bool = True


class AppendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One stream's share of a multi-stream atomic append (see ``EventStore.append_batch``)."""

    stream: str
    events: Sequence[Event]
    expected_version: Any = msgspec.field(default_factory=lambda: ANY)
    event_ids: Sequence[uuid.UUID] | None = None
    metadata: dict[str, Any] | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    """Result of :meth:`EventStore.verify`."""

    ok: bool
    events_checked: int
    head_position: int
    first_bad_position: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.events_checked} events verified up to position {self.head_position}"
        return f"FAILED at position {self.first_bad_position}: {self.reason}"


#: One database row of the events table, in column order:
#: (position, event_id, stream, version, type, schema_version, recorded_at_us,
#:  metadata, data, hash).
Row: TypeAlias = tuple[int, bytes, str, int, str, int, int, bytes, bytes, bytes]


class Statement(NamedTuple):
    """One SQL statement in the store's portable dialect (``?`` placeholders)."""

    sql: str
    params: Sequence[Any] = ()


class GuardedBatch(NamedTuple):
    """Statements run in one transaction only if ``guard`` changes exactly one row.

    This is how a read model applies events exactly once: the guard advances its
    checkpoint from the position it expects, and the row changes ride along.
    """

    guard: Statement | None
    statements: Sequence[Statement]
    #: Called (on the database thread, inside the transaction) when the guard did not hold.
    on_skip: Callable[[], None] | None = None


#: Called inside the append transaction with the events just written; returns
#: statements to run in that same transaction (used by the projections layer to
#: keep read models up to date without a second commit). Must be pure and fast:
#: on SQLite it runs on the database thread.
InlineHook: TypeAlias = Callable[[Sequence[RecordedEvent]], Sequence[GuardedBatch]]
