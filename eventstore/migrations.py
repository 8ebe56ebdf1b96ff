"""Named migration sets: ordered steps, each applied atomically with its record.

One set for the log itself, one per projection version. A step is a function
of the SQL dialect name (``"sqlite"`` or ``"postgresql"``) returning the DDL
statements to run; the backend applies each step and writes its row in
``schema_migrations`` in the same transaction, so a crash never leaves a step
half-applied or applied-but-unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from eventstore.errors import SchemaVersionError

__all__ = ("MIGRATIONS_TABLE", "Migration", "MigrationSet")

StepFn = Callable[[str], Sequence[str]]

#: Where each backend records applied steps (the same DDL on SQLite and PostgreSQL).
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (set_name TEXT NOT NULL, version INTEGER NOT NULL, "
    "name TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (set_name, version))"
)


class Migration(NamedTuple):
    version: int
    name: str
    statements: StepFn


class MigrationSet:
    """An ordered, named list of schema steps. Versions start at 1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Migration] = []

    def step(self, fn: StepFn) -> StepFn:
        """Decorator: register ``fn`` as the next step, named after the function."""
        self.steps.append(Migration(len(self.steps) + 1, fn.__name__, fn))
        return fn

    @property
    def latest(self) -> int:
        return len(self.steps)

    def pending(self, applied: int) -> list[Migration]:
        return self.steps[applied:]

    def next_step(self, applied: int, where: str) -> Migration | None:
        """The step after ``applied`` (None when up to date); refuses a database written by newer code."""
        if applied > self.latest:
            raise SchemaVersionError(
                f"{where} was written by a newer eventstore: migration set '{self.name}' is at "
                f"step {applied}, this code knows {self.latest}; upgrade eventstore to open it"
            )
        pending = self.pending(applied)
        return pending[0] if pending else None
