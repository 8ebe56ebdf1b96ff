"""Full-text search over signals: company name and the text in ``raw_data``.

SQLite: an FTS5 table (the projection's own statements keep it; FTS5 stores
its own copy of the text, with the signal id as an unindexed column). PostgreSQL: a plain
table with a generated ``tsvector`` column and a GIN index. Either way it is an
ordinary projection: versioned, rebuilt from the log, checked for drift.

Queries go to the *physical* table of the live generation (an FTS5 ``MATCH``
cannot go through a view), which is why :meth:`SearchProjection.views` is empty.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any, ClassVar

from eventstore import EventStore, RecordedEvent, Statement
from eventstore.events import SignalDetected
from projections.base import Projection, Tables
from projections.builtin import BUILTIN_PROJECTIONS

__all__ = ("SearchProjection", "default_projections", "raw_text", "search_ids")


# PostgreSQL's parser keeps "acme/rocket-engine" as one path token; split on anything
# not a letter or digit, as FTS5's unicode61 tokenizer does, on both sides of a match.
_WORDS = "regexp_replace({}, '[^[:alnum:]]+', ' ', 'g')"


def fold(text: str) -> str:
    """Text as both backends index and match it: accents dropped, case folded ("Zürich" -> "zurich").

    Done here, in Python, because the databases disagree: FTS5's unicode61
    drops most diacritics, PostgreSQL's 'simple' configuration none (its
    ``unaccent`` is an extension that may not be installed).
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def raw_text(value: Any) -> str:
    """Every string and number inside a JSON value, space separated (keys left out)."""
    parts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            parts.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            parts.append(str(item))
    return " ".join(parts)


class SearchProjection(Projection):
    """One document per signal: company name + raw_data text."""

    name = "search"
    version = 2  # 2: text folded (accents, case) before indexing, the same on both backends
    tables = ("search",)
    handles: ClassVar[frozenset[str]] = frozenset({"SignalDetected"})

    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        t = tables["search"]
        if dialect == "sqlite":
            return (
                f"CREATE VIRTUAL TABLE {t} USING fts5(signal_id UNINDEXED, company_name, body, tokenize = 'unicode61')",
            )
        return (
            f"""CREATE TABLE {t} (
                signal_id BIGINT PRIMARY KEY,
                company_name TEXT NOT NULL,
                body TEXT NOT NULL,
                document tsvector GENERATED ALWAYS AS
                    (to_tsvector('simple', {_WORDS.format("company_name || ' ' || body")})) STORED
            )""",
            f"CREATE INDEX {t}_document ON {t} USING GIN (document)",
        )

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        data = event.data
        assert isinstance(data, SignalDetected)
        return (
            Statement(
                f"INSERT INTO {tables['search']} (signal_id, company_name, body) VALUES (?, ?, ?)",
                (event.position, fold(data.company_name), fold(raw_text(data.raw_data))),
            ),
        )

    def views(self, tables: Tables) -> Sequence[tuple[str, str]]:
        return ()

    def compare_columns(self, table: str, dialect: str) -> str:
        # The generated tsvector (PostgreSQL) follows from these; FTS5 internals are not rows.
        return "signal_id, company_name, body"


def _fts_query(text: str) -> str:
    # Each word quoted: user text is matched as words, never parsed as FTS5 syntax.
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


async def search_ids(log: EventStore, table: str, text: str, limit: int = 20) -> list[int]:
    """Ids of the signals matching every word of ``text``, best match first."""
    text = fold(text)
    if not text.split() or limit <= 0:
        return []
    if log.dialect == "sqlite":
        sql = f"SELECT signal_id FROM {table} WHERE {table} MATCH ? ORDER BY rank, signal_id LIMIT ?"
        rows = await log.query(sql, (_fts_query(text), int(limit)))
    else:
        sql = (
            f"SELECT signal_id FROM {table} WHERE document @@ plainto_tsquery('simple', {_WORDS.format('?')}) "
            f"ORDER BY ts_rank(document, plainto_tsquery('simple', {_WORDS.format('?')})) DESC, signal_id LIMIT ?"
        )
        rows = await log.query(sql, (text, text, int(limit)))
    return [int(row[0]) for row in rows]


def default_projections() -> list[Projection]:
    """The projections a store keeps current: the built-in three, plus search."""
    return [*BUILTIN_PROJECTIONS(), SearchProjection()]
