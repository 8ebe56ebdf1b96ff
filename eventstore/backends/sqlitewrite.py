"""What one append transaction does on SQLite's writer connection.

Plan the group from the state cache or from the database, insert its rows,
run the inline hook (read models applied in the same transaction), and, if the
database refuses something a plan could not foresee, decide it again caller by
caller. Plain methods of a ``sqlite3.Connection`` inside a transaction that
:class:`~eventstore.backends.sqlite.SqliteBackend` began: it decides where
they run and when the transaction commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from eventstore.backends.base import PreparedAppend
from eventstore.backends.plan import LogState, plan_group, repeatable_ids
from eventstore.backends.sqliteops import INSERT, StateCache, find_ids, read_state, run_batches, translate
from eventstore.errors import EventStoreError
from eventstore.model import AppendResult, InlineHook, RecordedEvent, Row

__all__ = ("StaleState", "Writes")

Clock = Callable[[], int]
Outcome = list[AppendResult] | BaseException


class StaleState(Exception):
    """The database refused rows planned from the state cache: plan the group again from the database."""


class Writes:
    """The append side of the writer connection: its state cache and inline hook."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = StateCache()
        self.hook: InlineHook | None = None

    def append_items(
        self, conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]], clock: Clock
    ) -> list[Outcome]:
        if not items:
            return []
        cached = self.state.lookup(conn, items)
        if cached is not None:
            outcomes = self.append_from_cache(conn, items, clock, cached)
            if outcomes is not None:
                return outcomes
        if len(items) == 1:
            return self.append_planned(conn, items, clock, read_state(conn, items))
        # Plan the whole group in memory from one read of the log's state: a caller
        # whose check fails changes nothing, and the accepted rows go in one
        # executemany. Only if the database itself refuses something (a read
        # model's constraint, say) is the group redone one savepoint per caller
        # (never from the cache: see append_from_cache).
        conn.execute("SAVEPOINT es_group")
        try:
            outcomes = self.append_planned(conn, items, clock, read_state(conn, items))
        except sqlite3.Error:
            conn.execute("ROLLBACK TO es_group")
            conn.execute("RELEASE es_group")
            self.state.planned(None)
            return self.append_each(conn, items, clock)
        conn.execute("RELEASE es_group")
        return outcomes

    def append_from_cache(
        self, conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]], clock: Clock, state: LogState
    ) -> list[Outcome] | None:
        """The group planned from the cached state, or None: then plan it from the database.

        The cache knows no event ids. A lone event's INSERT is its own id
        probe: refused by the append-only trigger, it changed nothing. Anything
        larger probes its ids first (a failed executemany would leave rows
        behind, and a savepoint around it costs more than the probe: its
        statement journal spills to disk); should the database still refuse
        its rows, the whole transaction rolls back and runs again from the
        database (StaleState). A refusal planned from the cache is not trusted
        either (an idempotent re-append passes any version check): it, and a
        group whose read models may refuse it, are decided from the database.
        """
        if self.hook is not None and len(items) > 1:
            return None
        lone = len(items) == 1 and len(items[0]) == 1 and len(items[0][0].events) == 1
        if not lone:
            ids = repeatable_ids(items)
            if ids and find_ids(conn, ids):
                return None
        outcomes, rows, recorded = self.plan(items, clock, state)
        if any(isinstance(outcome, BaseException) for outcome in outcomes):
            return None
        try:
            self.insert(conn, rows)
        except sqlite3.IntegrityError as exc:
            if lone:
                return None
            raise StaleState from exc
        self.run_hook(conn, recorded)
        self.state.planned(state)
        return outcomes

    def append_planned(
        self, conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]], clock: Clock, state: LogState
    ) -> list[Outcome]:
        outcomes, rows, recorded = self.plan(items, clock, state)
        self.insert(conn, rows)
        self.run_hook(conn, recorded)
        self.state.planned(state)
        return outcomes

    def plan(
        self, items: list[Sequence[PreparedAppend]], clock: Clock, state: LogState
    ) -> tuple[list[Outcome], list[Row], list[RecordedEvent]]:
        outcomes, rows, recorded = plan_group(state, items, clock, with_records=self.hook is not None)
        return outcomes, rows, [event for events in recorded for event in events]

    def insert(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        if len(rows) == 1:
            conn.execute(INSERT, rows[0])  # executemany costs ~2 µs more for one row
        elif rows:
            conn.executemany(INSERT, rows)

    def run_hook(self, conn: sqlite3.Connection, recorded: list[RecordedEvent]) -> None:
        if recorded and self.hook is not None:
            run_batches(conn, self.hook(recorded))

    def append_each(
        self, conn: sqlite3.Connection, items: list[Sequence[PreparedAppend]], clock: Clock
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for requests in items:
            conn.execute("SAVEPOINT es_item")
            try:
                outcomes.append(self.append_item(conn, requests, clock))
            except (EventStoreError, sqlite3.IntegrityError) as exc:
                conn.execute("ROLLBACK TO es_item")
                outcomes.append(translate(exc, self.path))
            conn.execute("RELEASE es_item")
        self.state.planned(None)  # each item read its own state: forget them
        return outcomes

    def append_item(
        self, conn: sqlite3.Connection, requests: Sequence[PreparedAppend], clock: Clock
    ) -> list[AppendResult]:
        (outcome,) = self.append_planned(conn, [requests], clock, read_state(conn, [requests]))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
