"""A runner over the projections a store keeps, and its status as a table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from eventstore.store import EventStore
from projections import ProjectionRunner, ProjectionStatus
from projections.search import default_projections

__all__ = ("PROJECTION_NAMES", "runner_for", "status_rows", "status_table")

PROJECTION_NAMES = tuple(p.name for p in default_projections())


def runner_for(log: EventStore) -> ProjectionRunner:
    return ProjectionRunner(log, default_projections())


def status_rows(statuses: Sequence[ProjectionStatus]) -> list[dict[str, object]]:
    return [s._asdict() for s in statuses]


def status_table(statuses: Sequence[ProjectionStatus], title: str = "projections") -> Table:
    table = Table(title=title)
    for column in ("name", "version", "generation", "checkpoint", "lag", "state"):
        table.add_column(column)
    for s in statuses:
        state = s.state if s.state == "live" else f"{s.state} {s.progress:.0%}"
        table.add_row(s.name, str(s.version), str(s.generation), str(s.checkpoint), str(s.lag), state)
    return table
