"""What one append transaction does on a PostgreSQL connection.

A group of appends goes through ``eventstore_append`` in one round trip (see
:mod:`eventstore.backends.pgappend`) unless the function declines or an inline
hook must run; then through the general path: BEGIN with the append lock, one
state read, the plan (:mod:`eventstore.backends.plan`), one INSERT, the hook's
statements, COMMIT. A single large request is copied in chunk by chunk
(:meth:`Writes.append_streamed`). Methods of an asyncpg connection that
:class:`~eventstore.backends.postgres.PostgresBackend` hands over: it decides
which connection, under which locks, and turns errors into EventStoreErrors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import asyncpg

from eventstore.backends.base import PreparedAppend, wait_out
from eventstore.backends.pgappend import BEGIN, CALL, WRITTEN, append_call_args, results_of
from eventstore.backends.pgops import COLUMNS, INSERT, read_head, read_state, run_batches, undo
from eventstore.backends.pgtext import quote_literal
from eventstore.backends.plan import plan_group
from eventstore.errors import DatabaseError, EventStoreError
from eventstore.model import AppendResult, InlineHook

__all__ = ("CONNECTION_LOST", "GIVING_UP", "Writes")

log = logging.getLogger("eventstore")
T = TypeVar("T")
Clock = Callable[[], int]
Outcome = list[AppendResult] | BaseException  # one caller's share of a group commit
# asyncpg reports a connection lost mid-statement as these PostgresError subclasses.
#: The session is gone (not QueryCanceledError, also an "operator intervention": a statement_timeout
#: ends one statement of one caller, and the session goes on).
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.DatabaseDroppedError,
    asyncpg.exceptions.IdleSessionTimeoutError,
)
#: The server gave up on a statement (lock_timeout, statement_timeout): not a reason to take another path.
GIVING_UP = (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.QueryCanceledError)
_COLUMNS = COLUMNS.split(", ")
# Set on an error from a caller's inline hook or its statements: that caller's index in the group.
_CALLER = "eventstore_caller"


class Writes:
    """The append side of a store's connections: the paths an append takes, and the inline hook."""

    def __init__(
        self,
        lock_keys: tuple[int, int],
        channel: str,
        display_name: str,
        driver_error: Callable[[BaseException], EventStoreError],
    ) -> None:
        self.lock_keys = lock_keys
        self.channel = channel
        self.append_lock = f"SELECT pg_advisory_xact_lock({lock_keys[0]}, {lock_keys[1]})"
        self.hook: InlineHook | None = None
        self._display_name = display_name
        self._driver_error = driver_error
        self._one_call_failed = False

    async def append_group(self, conn: Any, items: list[Sequence[PreparedAppend]], clock: Clock) -> list[Outcome]:
        # WHY A LOCK, AND NOT A SEQUENCE. Readers follow the log by position:
        # "give me everything after the last position I saw". With a sequence,
        # writer A takes position 10, writer B takes 11, B commits first; a
        # reader now sees 11, moves its cursor past it, and when A commits 10
        # later the reader never looks back: the event is skipped for good.
        #
        # So every append transaction first takes this transaction-scoped lock,
        # then (in a *later* statement, hence a fresh READ COMMITTED snapshot
        # that includes every commit before the lock was granted) reads the
        # head and writes head + 1, head + 2, ... The lock is released only
        # after the commit is visible, so the next writer's head includes it:
        # positions are contiguous and become visible strictly in order, and
        # every snapshot a reader takes sees a prefix of the log. A rolled-back
        # append writes nothing and the next writer reuses its positions, so
        # on PostgreSQL too there are no gaps, let alone holes filled later.
        #
        # Why an advisory lock rather than LOCK TABLE events IN EXCLUSIVE MODE:
        # both serialise appenders the same way, but the table lock also
        # conflicts with (auto)VACUUM and ANALYZE, so autovacuum on the busiest
        # table would either stall every writer or keep being cancelled. The
        # price: the guarantee holds for writers that go through this code;
        # the application role may only INSERT through the store (see
        # app_role_sql), never with hand-written SQL.
        if self.hook is None:
            outcomes = await self.append_in_one_call(conn, items, clock)
            if outcomes is not None:
                return outcomes
        locked = False

        async def write() -> list[Outcome]:
            nonlocal locked
            locked = True
            return await self.write_items(conn, items, clock)

        try:
            return await self.append_transaction(conn, write)
        except CONNECTION_LOST:
            raise
        except Exception as exc:
            culprit = getattr(exc, _CALLER, None)
            if len(items) == 1 or not locked:
                raise  # a lone caller's error, or BEGIN or the lock failed (lock_timeout): everyone's
            if culprit is None and not isinstance(exc, asyncpg.PostgresError):
                raise  # neither the database nor a caller's hook: the whole group's
            failed = {culprit: exc} if culprit is not None else {}
        # The database refused something (a read model's constraint, say) or a caller's
        # inline hook raised: redo the group one caller at a time to fail only its owner
        # (known already if its inline hook failed: it is not run again).
        return await self.write_each(conn, items, clock, failed)

    async def append_streamed(self, conn: Any, chunks: Iterator[PreparedAppend], clock: Clock) -> AppendResult | None:
        """One large request, its chunks copied in while the store prepares the next; or None.

        BEGIN with the append lock, one read of the head and the stream's
        version, then each chunk planned here (positions, hashes) and sent by
        COPY; taking the next chunk from ``chunks`` prepares it while the
        server writes the one before. No id is probed first: a recorded id
        fails its COPY on the unique index. That, a version conflict or any
        other database error rolls back and declines (None): the store then
        appends the request the general way, which decides it precisely.
        """
        first = next(chunks, None)  # prepared before the lock is taken
        if first is None:
            return None
        try:
            result = await _copy_chunks(conn, f"{BEGIN}; {self.append_lock}", first, chunks, clock())
            if result is None:
                await conn.execute("ROLLBACK")
                return None
            notify = f"SELECT pg_notify({quote_literal(self.channel)}, '{result.positions[-1]}')"
            status = await conn.execute(f"{notify}; COMMIT")
        except BaseException as exc:
            await undo(conn, self._display_name)
            # Lost: the COMMIT may have gone through (unknown, as for any append). Timed out:
            # the general path would wait all over again. Anything else, it decides.
            if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, (*CONNECTION_LOST, *GIVING_UP)):
                raise
            if not _recorded_id(exc):
                self._general_path_after(exc)
            return None
        if status != "COMMIT":  # the server rolled back instead (a statement failed and we did not see it)
            raise DatabaseError(f"a large append to {self._display_name} was rolled back, not committed")
        return result

    async def append_in_one_call(
        self, conn: Any, items: list[Sequence[PreparedAppend]], clock: Clock
    ) -> list[Outcome] | None:
        """The group through ``eventstore_append`` (one round trip), or None: take the general path.

        None when the server wrote nothing because a check needs the general
        path (see :mod:`eventstore.backends.pgappend`). A lost connection
        raises, as a failed COMMIT would: the outcome is unknown to us.
        """
        flat = [request for requests in items for request in requests]
        args = append_call_args(items, clock)
        if args is None:
            return None
        try:
            status, first, versions = await conn.fetchrow(CALL, *self.lock_keys, self.channel, *args)
        except (*CONNECTION_LOST, *GIVING_UP):
            # Lost: the call may have committed before the reply was: unknown, as for a failed COMMIT.
            # Timed out: the general path would only wait all over again.
            raise
        except asyncpg.PostgresError as exc:  # the statement failed, so nothing was written
            self._general_path_after(exc)
            return None
        if status != WRITTEN:
            return None
        results = results_of(flat, first, versions)
        outcomes: list[Outcome] = []
        for requests in items:
            outcomes.append(results[: len(requests)])
            del results[: len(requests)]
        return outcomes

    def _general_path_after(self, exc: BaseException) -> None:
        # Declines come back as a status (or a recorded id's unique violation), so
        # an error here is unexpected (the function dropped, say): say so once.
        level = logging.DEBUG if self._one_call_failed else logging.WARNING
        self._one_call_failed = True
        log.log(level, "%s; appending through the general path", self._driver_error(exc))

    async def append_transaction(self, conn: Any, work: Callable[[], Awaitable[T]]) -> T:
        try:
            await conn.execute(f"{BEGIN}; {self.append_lock}")
            result = await work()
            await conn.execute("COMMIT")
        except BaseException:
            await undo(conn, self._display_name)
            raise
        return result

    async def write_each(
        self,
        conn: Any,
        items: list[Sequence[PreparedAppend]],
        clock: Clock,
        failed: dict[int, Exception],
    ) -> list[Outcome]:
        """Each caller in its own transaction; ``failed`` callers get their error without running again.

        A caller whose statement waits for a lock held elsewhere waits up to the
        server's lock_timeout, as any statement does. Committing caller by caller
        releases the append lock in between: other processes append meanwhile,
        instead of waiting for every such caller's timeout in turn. A lost
        connection fails the caller it hit and those not yet run; the callers
        committed before it keep their results.
        """
        outcomes: list[Outcome] = []
        for index, requests in enumerate(items):
            if index in failed:
                outcomes.append(self._caller_error(failed[index]))
                continue
            try:
                one = functools.partial(self.write_items, conn, [requests], clock)
                outcomes += await self.append_transaction(conn, one)
            except (*CONNECTION_LOST, asyncpg.InterfaceError) as exc:
                outcomes += [self._driver_error(exc)] * (len(items) - index)
                break
            except Exception as exc:  # a statement of its own failed, or its inline hook raised
                outcomes.append(self._caller_error(exc))
        return outcomes

    def _caller_error(self, exc: Exception) -> Exception:
        """What one caller of a group gets: a database error translated, its own hook's error as raised."""
        return self._driver_error(exc) if isinstance(exc, asyncpg.PostgresError) else exc

    async def write_items(self, conn: Any, items: list[Sequence[PreparedAppend]], clock: Clock) -> list[Outcome]:
        """Check, number and insert every caller's requests; a failed check fails only its caller.

        A failing inline-hook statement is marked with its caller's index in ``items``.
        """
        state = await read_state(conn, items)
        outcomes, rows, recorded = plan_group(state, items, clock, with_records=self.hook is not None)
        if rows:
            await conn.execute(INSERT, *zip(*rows, strict=True), self.channel, str(rows[-1][0]))
        if self.hook is not None:
            planned = [index for index, outcome in enumerate(outcomes) if not isinstance(outcome, BaseException)]
            for caller, events in zip(planned, recorded, strict=True):
                if events:
                    try:
                        await run_batches(conn, self.hook(events))
                    except Exception as exc:  # its statements failed, or the hook itself raised
                        with contextlib.suppress(AttributeError):  # (an exception type without a __dict__)
                            setattr(exc, _CALLER, caller)
                        raise
        return outcomes


async def _copy_chunks(
    conn: Any, begin: str, first: PreparedAppend, chunks: Iterator[PreparedAppend], now: int
) -> AppendResult | None:
    """BEGIN and the lock, then COPY each chunk; None if a check fails (the caller rolls back).

    One statement is in flight at a time (asyncpg's rule) while the next chunk
    is prepared: the lock wait overlaps the second chunk, each COPY the one after.
    """
    begun: asyncio.Future[Any] = asyncio.ensure_future(conn.execute(begin))
    in_flight: asyncio.Future[Any] | None = begun
    try:
        await asyncio.sleep(0)  # the statement goes out before the next chunk is prepared
        upcoming = next(chunks, None)
        await begun
        in_flight = None
        state = await read_head(conn, first.stream)
        position, version = state.head[0], state.versions[first.stream]
        chunk: PreparedAppend | None = first
        count = 0
        declined = False
        while chunk is not None:
            outcomes, rows, _ = plan_group(state, [[chunk]], lambda: now, with_records=False)
            if isinstance(outcomes[0], BaseException) or not outcomes[0][0].written:
                # A version conflict, or ids seen in an earlier chunk (the state knows only
                # those): the general path decides, e.g. "appears twice in one append".
                declined = True
                break
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.ensure_future(conn.copy_records_to_table("events", records=rows, columns=_COLUMNS))
            await asyncio.sleep(0)
            count += len(rows)
            chunk, upcoming = upcoming, next(chunks, None)
        if in_flight is not None:
            # Declined, the COPY in flight ends first (it is rolled back with the rest).
            with contextlib.suppress(asyncpg.PostgresError) if declined else contextlib.nullcontext():
                await in_flight
            in_flight = None
    except BaseException:
        if in_flight is not None and not in_flight.done():
            # Preparing a chunk failed, or we were cancelled: it is all rolled back, so stop
            # the statement and let it end first (a connection runs one thing at a time).
            in_flight.cancel()
            cancelled = await wait_out(in_flight)
            if not in_flight.cancelled():
                in_flight.exception()  # retrieved: the error that matters is the one being raised
            if cancelled is not None:
                raise cancelled from None
        raise
    if declined:
        return None
    return AppendResult(positions=list(range(position + 1, position + count + 1)), version=version + count)


def _recorded_id(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "events_event_id_key"
