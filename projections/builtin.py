"""The built-in read models: signals, processing and suppression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from eventstore import RecordedEvent, Statement
from eventstore.events import SignalDetected, SignalPushed, SignalRejected, SuppressionSynced
from projections.base import Projection, Tables, iso, json_text

__all__ = ("BUILTIN_PROJECTIONS", "ProcessingProjection", "SignalsProjection", "SuppressionProjection")


def _id_column(dialect: str) -> str:
    # INTEGER PRIMARY KEY is SQLite's rowid alias (no extra index); PostgreSQL wants BIGINT.
    return "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGINT PRIMARY KEY"


class SignalsProjection(Projection):
    """One row per signal; the id is the position of its SignalDetected event."""

    name = "signals"
    version = 1
    tables = ("signals",)
    handles: ClassVar[frozenset[str]] = frozenset({"SignalDetected"})

    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        t = tables["signals"]
        return (
            f"""CREATE TABLE {t} (
                id {_id_column(dialect)},
                signal_type TEXT NOT NULL,
                source_api TEXT NOT NULL,
                canonical_key TEXT NOT NULL,
                company_name TEXT NOT NULL,
                confidence DOUBLE PRECISION NOT NULL,
                raw_data TEXT NOT NULL,
                detected_at TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                actor TEXT
            )""",
            f"CREATE INDEX {t}_canonical_key ON {t} (canonical_key, id)",
            f"CREATE INDEX {t}_detected_at ON {t} (detected_at)",
        )

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        data = event.data
        assert isinstance(data, SignalDetected)
        return (
            Statement(
                f"INSERT INTO {tables['signals']} (id, signal_type, source_api, canonical_key, company_name, "
                "confidence, raw_data, detected_at, recorded_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.position,
                    data.signal_type,
                    data.source_api,
                    data.canonical_key,
                    data.company_name,
                    data.confidence,
                    json_text(data.raw_data),
                    iso(data.detected_at),
                    iso(event.recorded_at),
                    event.actor,
                ),
            ),
        )


class ProcessingProjection(Projection):
    """Processing state per signal: pending, then pushed or rejected.

    The first outcome recorded wins, as in the facade's state machine and the
    audit replay; a later conflicting event (possible only through the raw log
    API) stays in the log but does not change the row.
    """

    name = "processing"
    version = 1
    tables = ("processing",)
    handles: ClassVar[frozenset[str]] = frozenset({"SignalDetected", "SignalPushed", "SignalRejected"})

    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        t = tables["processing"]
        return (
            f"""CREATE TABLE {t} (
                signal_id {_id_column(dialect)},
                status TEXT NOT NULL,
                notion_page_id TEXT,
                rejection_reason TEXT,
                metadata TEXT NOT NULL,
                processed_at TEXT,
                processed_by TEXT,
                confidence DOUBLE PRECISION NOT NULL,
                signal_type TEXT NOT NULL,
                source_api TEXT NOT NULL
            )""",
            f"CREATE INDEX {t}_status ON {t} (status, signal_id)",
        )

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        t, data = tables["processing"], event.data
        if isinstance(data, SignalDetected):
            return (
                Statement(
                    f"INSERT INTO {t} (signal_id, status, metadata, confidence, signal_type, source_api) "
                    "VALUES (?, 'pending', '{}', ?, ?, ?)",
                    (event.position, data.confidence, data.signal_type, data.source_api),
                ),
            )
        if isinstance(data, SignalPushed):
            status, page, reason = "pushed", data.notion_page_id, None
        else:
            assert isinstance(data, SignalRejected)
            status, page, reason = "rejected", None, data.reason
        return (
            Statement(
                f"UPDATE {t} SET status = ?, notion_page_id = ?, rejection_reason = ?, metadata = ?, "
                "processed_at = ?, processed_by = ? WHERE signal_id = ? AND status = 'pending'",
                (status, page, reason, json_text(data.metadata), iso(event.recorded_at), event.actor, data.signal_id),
            ),
        )


class SuppressionProjection(Projection):
    """Canonical key -> the Notion page that suppresses it, until ``expires_at``.

    ``expires_at`` comes from the event, so a rebuild reproduces the same rows;
    queries compare it with the current time.
    """

    name = "suppression"
    version = 1
    tables = ("suppression",)
    handles: ClassVar[frozenset[str]] = frozenset({"SuppressionSynced"})

    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        t = tables["suppression"]
        return (
            f"""CREATE TABLE {t} (
                canonical_key TEXT PRIMARY KEY,
                notion_page_id TEXT NOT NULL,
                status TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                cached_at TEXT NOT NULL,
                position BIGINT NOT NULL
            )""",
            f"CREATE INDEX {t}_expires_at ON {t} (expires_at)",
        )

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        data = event.data
        assert isinstance(data, SuppressionSynced)
        return (
            Statement(
                f"INSERT INTO {tables['suppression']} (canonical_key, notion_page_id, status, expires_at, "
                "cached_at, position) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (canonical_key) DO UPDATE SET "
                "notion_page_id = excluded.notion_page_id, status = excluded.status, "
                "expires_at = excluded.expires_at, cached_at = excluded.cached_at, position = excluded.position",
                (
                    data.canonical_key,
                    data.notion_page_id,
                    data.status,
                    iso(data.expires_at),
                    iso(event.recorded_at),
                    event.position,
                ),
            ),
        )


def BUILTIN_PROJECTIONS() -> list[Projection]:
    """Fresh instances of the built-in projections."""
    return [SignalsProjection(), ProcessingProjection(), SuppressionProjection()]
