"""PostgreSQL appends in one round trip: the calling side of ``eventstore_append``.

The general append path (``pgwrite.Writes.append_group``) takes four round
trips: BEGIN with the append lock, the state read, the INSERT, COMMIT. With
~0.1 ms per round trip and a commit that must wait for the WAL flush, that
capped single appends at a quarter of a raw autocommit INSERT (measured).
``eventstore_append`` (log migration 3, SQL in :mod:`eventstore.schema`) does
the same work inside the server in one autocommit statement: it takes the same
lock, reads the head, checks each request's expected version, numbers and
hashes the events and inserts them.

It only takes the common case, everything new and every expected version
holding. Anything else (a version conflict, an id recorded already, caught as
a unique violation) comes back as a status with nothing written, and the caller runs the general
path, which reports the conflict precisely or answers the idempotent
re-append from the recorded rows. So the rules live in one place (Python,
``plan.LogState``) and the server only ever commits what they would accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventstore.backends.base import PreparedAppend
from eventstore.model import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion

__all__ = ("BEGIN", "CALL", "WRITTEN", "append_call_args", "results_of")

BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"

_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, 14))
CALL = f"SELECT status, first_position, versions FROM eventstore_append({_PLACEHOLDERS})"
#: The status of a call that wrote the events; any other means nothing was written.
WRITTEN = 0
_EXPECTED_CODES = {ANY: -1, NO_STREAM: -2, STREAM_EXISTS: -3}
_MAX_BIGINT = 2**63 - 1


def _expected_code(expected: ExpectedVersion) -> int | None:
    if isinstance(expected, int):
        return expected if expected <= _MAX_BIGINT else None  # cannot hold; the general path says so
    return _EXPECTED_CODES[expected]


def append_call_args(items: Sequence[Sequence[PreparedAppend]], clock_us: Callable[[], int]) -> list[Any] | None:
    """The per-request and per-event arrays for one call (each caller's requests), or None if it cannot take them.

    ``clock_us()`` is called once per caller, in order, as the general path does: each caller's
    requests are recorded at one instant.
    """
    streams: list[str] = []
    previous: list[int] = []
    last_request: dict[str, int] = {}
    expected: list[int] = []
    counts: list[int] = []
    recorded: list[int] = []
    metadata: list[bytes] = []
    event_ids: list[bytes] = []
    types: list[str] = []
    schemas: list[int] = []
    data: list[bytes] = []
    for request, instant in _with_instants(items, clock_us):
        events = request.events
        meta = events[0].metadata if events else b"{}"
        for event in events:
            if event.metadata is not meta:  # the store shares one encoding per request; anything else is not ours
                return None
            event_ids.append(event.event_id)
            types.append(event.type)
            schemas.append(event.schema_version)
            data.append(event.data)
        code = _expected_code(request.expected_version)
        if code is None:
            return None
        streams.append(request.stream)
        previous.append(last_request.get(request.stream, 0))
        last_request[request.stream] = len(streams)
        expected.append(code)
        counts.append(len(events))
        recorded.append(instant if events else 0)
        metadata.append(meta)
    return [streams, previous, expected, counts, recorded, metadata, event_ids, types, schemas, data]


def _with_instants(
    items: Sequence[Sequence[PreparedAppend]], clock_us: Callable[[], int]
) -> Iterator[tuple[PreparedAppend, int]]:
    for requests in items:
        instant = clock_us()
        for request in requests:
            yield request, instant


def results_of(requests: Sequence[PreparedAppend], first_position: int, versions: Sequence[int]) -> list[AppendResult]:
    """Each request's result from where the call put the first event and each stream's version before it."""
    results: list[AppendResult] = []
    position = first_position
    for request, before in zip(requests, versions, strict=True):
        count = len(request.events)
        if not count:
            results.append(AppendResult(positions=[], version=before, written=False))
            continue
        results.append(AppendResult(positions=list(range(position, position + count)), version=before + count))
        position += count
    return results
