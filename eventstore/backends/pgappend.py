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

A large request goes in chunks, one call each, inside one transaction
(:func:`append_in_chunks`): while the server writes a chunk, the store
validates and encodes the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio

from eventstore.backends.base import PreparedAppend, wait_out
from eventstore.errors import DatabaseError
from eventstore.model import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion

__all__ = ("BEGIN", "CALL", "WRITTEN", "append_call_args", "append_in_chunks", "results_of")

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


def append_call_args(requests: Sequence[PreparedAppend], clock_us: Callable[[], int]) -> list[Any] | None:
    """The per-request and per-event arrays for one call, or None if the call cannot take them.

    ``clock_us()`` is called once per request with events, in order, as the general path does.
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
    for request in requests:
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
        recorded.append(clock_us() if events else 0)
        metadata.append(meta)
    return [streams, previous, expected, counts, recorded, metadata, event_ids, types, schemas, data]


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


async def append_in_chunks(
    conn: Any, lock_and_channel: Sequence[Any], chunks: Iterator[PreparedAppend], now: int
) -> AppendResult | None:
    """One request, taken chunk by chunk from ``chunks``, written by one call per chunk in one transaction.

    Each call is sent before the next chunk is taken (prepared, by the
    store), so the two overlap; at most one statement is in flight, as asyncpg
    requires. Every call takes the append lock again (it is re-entrant within
    the transaction, which holds it from the first call to the commit), and
    each later chunk starts where the previous one ended. Returns None, having
    rolled back, if a call declines (see the module docstring) or ``chunks``
    holds something a call cannot take; the store then appends the request
    through the general path. ``now`` is the request's ``recorded_at``.
    """
    try:
        await conn.execute(BEGIN)
        result = await _calls(conn, lock_and_channel, chunks, now)
        if result is None:
            await conn.execute("ROLLBACK")
            return None
        status = await conn.execute("COMMIT")
    except BaseException:
        await _abandon(conn)
        raise
    if status != "COMMIT":  # the server rolled back instead (a call failed and we did not see it)
        raise DatabaseError("a chunked append was rolled back, not committed (nothing of it was written)")
    return result


async def _calls(
    conn: Any, lock_and_channel: Sequence[Any], chunks: Iterator[PreparedAppend], now: int
) -> AppendResult | None:
    first = before = 0
    count = sent = 0  # events sent; events sent before the call in flight
    call: asyncio.Future[Any] | None = None

    async def landed() -> bool:
        """Whether the call in flight wrote its chunk, right after the chunks before it."""
        nonlocal call, first, before
        assert call is not None
        status, position, versions = await call
        call = None
        if status != WRITTEN:
            return False
        if sent == 0:
            first, before = position, versions[0]
        return bool(position == first + sent)

    try:
        for chunk in chunks:  # taking a chunk prepares it, while the call before runs on the server
            if call is not None and not await landed():
                return None
            args = append_call_args([chunk], lambda: now)
            if args is None or not chunk.events:
                return None
            sent = count
            call = asyncio.ensure_future(conn.fetchrow(CALL, *lock_and_channel, *args))
            await asyncio.sleep(0)  # the call goes out before the next chunk is prepared
            count += len(chunk.events)
        if call is None or not await landed():
            return None
    finally:
        if call is not None:
            # Preparing a chunk failed, or we were cancelled: the call's chunk is rolled
            # back with the rest, so stop it, and let it end before the rollback (the
            # connection takes one statement at a time). A cancellation meanwhile is raised.
            call.cancel()
            cancelled = await wait_out(call)
            if not call.cancelled():
                call.exception()  # retrieved: the error that matters is the one being raised
            if cancelled is not None:
                raise cancelled
    return AppendResult(positions=list(range(first, first + count)), version=before + count)


async def _abandon(conn: Any) -> None:
    """Roll the transaction back; if the connection cannot take it, end the session (the server rolls back)."""
    if conn.is_closed():
        return
    try:
        with anyio.CancelScope(shield=True):
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
    except Exception:  # e.g. still busy with a cancelled call: the original error is the one to raise
        conn.terminate()
    except BaseException:  # cancelled meanwhile
        conn.terminate()
        raise
