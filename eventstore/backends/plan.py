"""Planning a group of appends in memory from one read of the log's state.

A backend reads, under its write lock, the head of the log, the version of
every stream a group commit touches and the rows of any ids that may already
be recorded (one round trip on PostgreSQL, three indexed queries on SQLite).
Each caller's requests are then
checked and given positions here, in Python, in arrival order; a caller whose
check fails changes nothing, so no savepoint is needed, and every accepted row
goes to the database in a single INSERT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eventstore.backends.base import PreparedAppend, build_rows, check_expected_version, resolve_known_ids
from eventstore.errors import EventStoreError
from eventstore.model import AppendResult, RecordedEvent, Row

__all__ = ("LogState", "may_repeat", "plan_group", "repeatable_ids")


def may_repeat(request: PreparedAppend) -> bool:
    """True if some of the request's event ids may already be in the log."""
    return any(event.known_id_possible for event in request.events)


def repeatable_ids(items: Sequence[Sequence[PreparedAppend]]) -> list[bytes]:
    """The event ids of every request in ``items`` that may repeat an id already in the log."""
    return [e.event_id for requests in items for request in requests if may_repeat(request) for e in request.events]


class LogState:
    """The log as one append transaction sees it, advanced by each accepted plan."""

    def __init__(self, head: tuple[int, bytes, int], versions: dict[str, int], known: dict[bytes, Row]) -> None:
        self.head = head
        self.versions = versions
        self.known = known

    def plan(
        self, requests: Sequence[PreparedAppend], now: Callable[[], int], *, with_records: bool = True
    ) -> tuple[list[AppendResult], list[Row], list[RecordedEvent]]:
        """Results, rows and (``with_records``) recorded events for one caller's requests, all or nothing.

        Raises WrongExpectedVersion or DuplicateEventError leaving the state
        unchanged, exactly as if the caller's transaction had rolled back.
        """
        head = self.head
        recorded_at = now()  # one instant per caller: what it appends in one call is recorded at once
        versions: dict[str, int] = {}
        added: dict[bytes, Row] = {}
        results: list[AppendResult] = []
        rows: list[Row] = []
        recorded: list[RecordedEvent] = []
        for request in requests:
            current = versions.get(request.stream, self.versions.get(request.stream, 0))
            if may_repeat(request):
                existing = [row for event in request.events if (row := self._row(event.event_id, added)) is not None]
                known = resolve_known_ids(request, existing, current)
                if known is not None:
                    results.append(known)
                    continue
            check_expected_version(request.stream, request.expected_version, current)
            if not request.events:
                results.append(AppendResult(positions=[], version=current, written=False))
                continue
            new_rows, new_recorded, head = build_rows(request, head, current, recorded_at, with_records=with_records)
            versions[request.stream] = new_rows[-1][3]
            added.update((row[1], row) for row in new_rows)
            rows += new_rows
            recorded += new_recorded
            results.append(AppendResult(positions=[row[0] for row in new_rows], version=new_rows[-1][3]))
        self.head = head
        self.versions.update(versions)
        self.known.update(added)
        return results, rows, recorded

    def _row(self, event_id: bytes, added: dict[bytes, Row]) -> Row | None:
        row = added.get(event_id)
        return row if row is not None else self.known.get(event_id)


def plan_group(
    state: LogState, items: Sequence[Sequence[PreparedAppend]], now: Callable[[], int], *, with_records: bool
) -> tuple[list[list[AppendResult] | BaseException], list[Row], list[list[RecordedEvent]]]:
    """Every caller's plan in arrival order: its results or its error, all rows, each caller's records.

    A caller whose check fails gets its error and changes nothing; the others go on.
    """
    outcomes: list[list[AppendResult] | BaseException] = []
    rows: list[Row] = []
    recorded: list[list[RecordedEvent]] = []
    for requests in items:
        try:
            results, item_rows, item_recorded = state.plan(requests, now, with_records=with_records)
        except EventStoreError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(results)
        rows += item_rows
        recorded.append(item_recorded)
    return outcomes, rows, recorded
