"""What a projection is: a name, a version, its tables and a pure ``handle``.

A projection never touches the database itself. ``handle`` turns one recorded
event into SQL statements (portable dialect, ``?`` placeholders) against the
physical tables of one *generation*; the runner executes them together with
the checkpoint update in one transaction, so every event is applied exactly
once. Bumping ``version`` makes the runner build a new generation from
position 1 and switch the views over when it has caught up.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from eventstore import RecordedEvent, Statement

__all__ = ("Projection", "Tables", "iso", "json_text")

#: Logical table name -> physical table name of one generation (e.g. "signals" -> "signals_g3").
Tables = Mapping[str, str]

_json = msgspec.json.Encoder(order="deterministic")


def iso(when: dt.datetime) -> str:
    """Fixed-width UTC ISO-8601 text: sorts like time, compares as text in SQL."""
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds")


def json_text(value: Any) -> str:
    return _json.encode(value).decode()


class Projection(abc.ABC):
    """A read model built from the log."""

    #: Unique name; also the prefix of status lines.
    name: ClassVar[str]
    #: Bump to rebuild: schema or logic change.
    version: ClassVar[int]
    #: Logical table names; each is exposed as a view of the live generation.
    tables: ClassVar[tuple[str, ...]]
    #: Event types ``handle`` cares about (others are skipped without a call).
    handles: ClassVar[frozenset[str]]

    @abc.abstractmethod
    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        """DDL creating this generation's tables (and their indexes)."""

    @abc.abstractmethod
    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        """Statements applying ``event``. Pure and deterministic."""

    def views(self, tables: Tables) -> Sequence[tuple[str, str]]:
        """(view name, physical table) pairs exposed for queries. Default: every table."""
        return [(logical, tables[logical]) for logical in self.tables]
