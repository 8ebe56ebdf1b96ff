"""Coming from the replaced storage layer: its database is refused untouched, and its data imports as events."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import (
    EventStoreError,
    InvalidEvent,
    SchemaVersionError,
    SignalDetected,
    SignalPushed,
    open_store,
    signal_store,
)
from eventstore.cli import main
from eventstore.legacy import LegacyReport, import_legacy, read_legacy
from tests.conftest import FakeClock, detected

pytestmark = pytest.mark.anyio
legacy_cli = importlib.import_module("eventstore.cli.import_legacy")

# The old layer's schema as its summary describes it (tables, columns named in its API and
# indexes, the UNIQUE dedup key); the columns it does not name are a plausible guess.
OLD_SCHEMA = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP);
INSERT INTO schema_migrations (version) VALUES (1);
CREATE TABLE signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, signal_type TEXT NOT NULL, source_api TEXT NOT NULL,
    canonical_key TEXT NOT NULL, company_name TEXT, confidence REAL NOT NULL, raw_data TEXT,
    detected_at TEXT NOT NULL, created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (canonical_key, signal_type, source_api, detected_at));
CREATE TABLE signal_processing (
    id INTEGER PRIMARY KEY AUTOINCREMENT, signal_id INTEGER NOT NULL REFERENCES signals (id),
    status TEXT NOT NULL DEFAULT 'pending', notion_page_id TEXT, error_message TEXT, metadata TEXT,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP, processed_at TEXT);
CREATE TABLE suppression_cache (
    canonical_key TEXT PRIMARY KEY, notion_page_id TEXT, status TEXT,
    cached_at TEXT DEFAULT CURRENT_TIMESTAMP, expires_at TEXT NOT NULL);
CREATE INDEX idx_signals_canonical_key ON signals (canonical_key);
CREATE INDEX idx_processing_status ON signal_processing (status);
CREATE INDEX idx_suppression_expires_at ON suppression_cache (expires_at);
"""

SIGNALS = [
    # id, type, source, key, name, confidence, raw_data, detected_at (naive = UTC, or aware)
    (3, "github_spike", "github", "domain:acme.ai", "Acme", 0.85, '{"stars": 120}', "2026-01-05T10:00:00"),
    (5, "sec_filing", "sec_edgar", "domain:acme.ai", "Acme", 0.6, None, "2026-01-05T11:00:00+01:00"),
    (8, "github_spike", "github", "domain:beta.io", "Beta", 0.9, '{"repo": "beta/x"}', "2026-01-05 12:00:00"),
    (9, "hiring", "linkedin", "domain:gamma.dev", "Gamma", 0.4, "{}", "2026-01-05T13:00:00Z"),
]
PROCESSING = [
    # id, signal_id, status, notion_page_id, error_message, metadata, processed_at
    (1, 3, "pushed", "page-acme", None, '{"score": 7}', "2026-01-05T10:05:00"),
    (2, 5, "rejected", None, "duplicate", None, "2026-01-05T11:05:00"),
    (3, 8, "pending", None, None, None, None),
    (4, 3, "pushed", "page-acme", None, '{"score": 7}', "2026-01-05T10:06:00"),  # the same push again
]
SUPPRESSION = [
    # canonical_key, notion_page_id, status, expires_at
    ("domain:acme.ai", "page-acme", "Active", "2026-01-12T10:00:00+00:00"),
    ("domain:old.co", "page-old", "Passed", "2026-01-01T00:00:00+00:00"),
]
NOW = dt.datetime(2026, 1, 7, tzinfo=dt.UTC)  # acme's entry live, old.co's expired


def make_old_db(
    path: Path, signals: Any = SIGNALS, processing: Any = PROCESSING, suppression: Any = SUPPRESSION
) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO signals (id, signal_type, source_api, canonical_key, company_name, confidence, raw_data, "
        "detected_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        signals,
    )
    conn.executemany(
        "INSERT INTO signal_processing (id, signal_id, status, notion_page_id, error_message, metadata, "
        "processed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        processing,
    )
    conn.executemany(
        "INSERT INTO suppression_cache (canonical_key, notion_page_id, status, expires_at) VALUES (?, ?, ?, ?)",
        suppression,
    )
    conn.commit()
    conn.close()
    return path


def as_json_export(db: Path, out: Path) -> Path:
    """What the old layer's export wrote: every table's rows as objects, plus its schema version."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    tables = {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")] for t in ("signals", "signal_processing")}
    tables["suppression_cache"] = [dict(r) for r in conn.execute("SELECT * FROM suppression_cache")]
    conn.close()
    out.write_text(json.dumps({"schema_version": 1, "exported_at": "2026-01-06T00:00:00", **tables}))
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    return make_old_db(tmp_path / "signals.db")


async def answers(url: str, report: LegacyReport) -> dict[str, Any]:
    """What the facade says about the imported data."""
    async with signal_store(url, clock=FakeClock(NOW), background=False, cleanup_interval=None) as store:
        signals = {old: await store.get_signal(new) for old, new in report.id_map.items()}
        return {
            "stats": await store.get_processing_stats(),
            "pending": [s.id for s in await store.get_pending_signals(limit=50)],
            "signals": {old: (s.canonical_key, s.signal_type, s.confidence, s.raw_data, s.detected_at, s.status,
                              s.notion_page_id, s.rejection_reason) for old, s in signals.items() if s is not None},
            "acme": await store.check_suppression("domain:acme.ai"),
            "old.co": await store.check_suppression("domain:old.co"),
            "verify": (await store.log.verify()).ok,
        }  # fmt: skip


# -- the old database is refused, untouched -------------------------------------------


async def test_opening_an_old_database_names_it_and_changes_nothing(old_db: Path) -> None:
    before = digest(old_db)
    for opener in (lambda: open_store(str(old_db)), lambda: signal_store(str(old_db), background=False)):
        with pytest.raises(SchemaVersionError, match="replaced signal storage layer") as caught:
            async with opener():
                pass
        assert f"eventstore import-legacy NEW.db {old_db}" in str(caught.value)
    assert digest(old_db) == before
    assert sorted(p.name for p in old_db.parent.iterdir()) == ["signals.db"]  # not even switched to WAL mode


async def test_another_applications_migrations_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaVersionError, match="schema_migrations table belongs to another application"):
        async with open_store(str(path)):
            pass


async def test_a_database_with_unrelated_tables_takes_a_store_beside_them(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    async with signal_store(str(path), background=False, cleanup_interval=None) as store:
        await store.save_signal("github_spike", "github", "domain:acme.ai", "Acme", 0.5)
        assert (await store.get_processing_stats())["pending"] == 1


# -- importing -----------------------------------------------------------------------


async def test_import_makes_one_event_per_row_and_the_facade_answers_as_the_old_store(
    store_url: str, old_db: Path
) -> None:
    before = digest(old_db)
    async with open_store(store_url) as log:
        report = await import_legacy(log, old_db)
        events = [e async for e in log.read_all()]
    assert (report.signals, report.pushed, report.rejected, report.pending, report.suppression) == (4, 1, 1, 2, 2)
    assert report.events == len(events) == 4 + 2 + 2  # the repeated push is one event
    assert report.naive_times == 2  # ids 3 and 8, read as UTC
    assert list(report.id_map) == [3, 5, 8, 9]  # old-id order kept
    got = await answers(store_url, report)
    assert got["stats"] == {"pending": 2, "pushed": 1, "rejected": 1, "total": 4}
    assert sorted(got["pending"]) == sorted([report.id_map[8], report.id_map[9]])
    acme = got["signals"][3]
    assert acme[:5] == (
        "domain:acme.ai",
        "github_spike",
        0.85,
        {"stars": 120},
        dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC),
    )
    assert acme[5:7] == ("pushed", "page-acme")
    assert got["signals"][5][4] == dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)  # +01:00 kept as the same instant
    assert got["signals"][5][5:] == ("rejected", None, "duplicate")
    assert got["signals"][5][3] == {}  # NULL raw_data
    assert got["acme"] is not None and got["acme"].notion_page_id == "page-acme"
    assert got["old.co"] is None  # expired in the old cache, expired here
    assert got["verify"]
    pushed = next(e for e in events if e.type == "SignalPushed")
    assert isinstance(pushed.data, SignalPushed)
    assert pushed.data.signal_id == report.id_map[3] and pushed.data.metadata == {"score": 7}
    assert pushed.metadata["actor"] == "legacy-import"
    assert (pushed.metadata["legacy_table"], pushed.metadata["legacy_id"]) == ("signal_processing", 1)
    assert pushed.metadata["legacy_time"] == "2026-01-05T10:05:00"
    assert len({e.metadata["correlation_id"] for e in events}) == 1  # one import, one unit of work
    assert digest(old_db) == before


async def test_a_json_export_imports_like_the_database(store_url: str, old_db: Path, tmp_path: Path) -> None:
    exported = as_json_export(old_db, tmp_path / "backup.json")
    imported_at = FakeClock(NOW)  # the entries' cached_at is when the store learned of them
    async with open_store(store_url, clock=imported_at) as log:
        from_json = await import_legacy(log, exported)
    async with open_store(str(tmp_path / "from_db.db"), clock=imported_at) as log:
        from_db = await import_legacy(log, old_db)
    assert from_json == from_db
    assert await answers(store_url, from_json) == await answers(str(tmp_path / "from_db.db"), from_db)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signals": [(1, "t", "s", "k", "n", 1.5, None, "2026-01-05T10:00:00")]}, r"signals row id=1: .*confidence"),
        ({"signals": [(1, "t", "s", "", "n", 0.5, None, "2026-01-05T10:00:00")]}, r"signals row id=1: .*canonical_key"),
        ({"signals": [(1, "t", "s", "k", "n", 0.5, "[1]", "2026-01-05T10:00:00")]}, r"row id=1: raw_data must be"),
        ({"signals": [(1, "t", "s", "k", "n", 0.5, "{oops", "2026-01-05T10:00:00")]}, r"raw_data is not valid JSON"),
        ({"signals": [(1, "t", "s", "k", "n", 0.5, None, "yesterday")]}, r"detected_at 'yesterday' is not a time"),
        ({"processing": [(1, 99, "pushed", "p", None, None, None)]}, r"row id=1: signal_id 99 is not in the signals"),
        ({"processing": [(1, 3, "pushed", None, None, None, None)]}, r"row id=1: notion_page_id is empty"),
        ({"processing": [(1, 5, "rejected", None, None, None, None)]}, r"reason or rejection_reason or error_message"),
        ({"processing": [(1, 3, "archived", None, None, None, None)]}, r"status 'archived' is not pending, pushed"),
        (
            {"processing": [(1, 3, "pushed", "p", None, None, None), (2, 3, "rejected", None, "dup", None, None)]},
            r"signal_processing row id=2: signal 3 was already pushed \('p'\) by signal_processing row id=1",
        ),
        ({"processing": [(1, 3, "pushed", "p", None, "not json", None)]}, r"row id=1: metadata is not valid JSON"),
        ({"suppression": [("k", "p", "Active", "soon")]}, r"suppression_cache row 1: expires_at 'soon' is not a time"),
    ],
)
async def test_a_row_that_makes_no_valid_event_is_named_and_nothing_is_imported(
    store_url: str, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    old = make_old_db(tmp_path / "bad.db", **change)
    async with open_store(store_url) as log:
        with pytest.raises(InvalidEvent, match=message):
            await import_legacy(log, old)
        assert await log.head_position() == 0


async def test_import_needs_a_new_or_empty_store(store_url: str, old_db: Path) -> None:
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        await store.save_signal("github_spike", "github", "domain:x.ai", "X", 0.5)
    async with open_store(store_url) as log:
        with pytest.raises(EventStoreError, match=r"already holds events .* new or empty store"):
            await import_legacy(log, old_db)
        assert await log.head_position() == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "neither a SQLite database nor a JSON export"),
        (b"[1, 2]", "is an object, not a list"),
        (b'{"signals": [], "signal_processing": []}', "no 'suppression_cache' list in the JSON export"),
        (b'{"signals": {}, "signal_processing": [], "suppression_cache": []}', "'signals' must be a list of objects"),
    ],
)
def test_a_file_that_is_not_the_old_layers_is_refused_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "backup.json"
    path.write_bytes(content)
    with pytest.raises(EventStoreError, match=message):
        read_legacy(path)


def test_a_sqlite_file_without_the_old_tables_or_already_a_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE signals (id INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaVersionError, match="no signal_processing, suppression_cache tables"):
        read_legacy(other)
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE events (position INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaVersionError, match="already an event store"):
        read_legacy(other)
    with pytest.raises(EventStoreError, match="cannot read"):
        read_legacy(tmp_path / "missing.db")


# -- the command line ------------------------------------------------------------------


def test_cli_imports_and_writes_the_id_map(capsys: pytest.CaptureFixture[str], old_db: Path, tmp_path: Path) -> None:
    store, id_map = tmp_path / "new.db", tmp_path / "ids.csv"
    assert main(["import-legacy", str(store), str(old_db), "--id-map", str(id_map), "--actor", "migration"]) == 0
    out = capsys.readouterr().out
    assert "imported 4 signals (1 pushed, 1 rejected, 2 pending) and 2 suppression entries as 8 events" in out
    assert "2 times without a time zone were read as UTC" in out
    assert "signal ids changed" in out
    with id_map.open() as rows:
        assert list(csv.reader(rows)) == [["old_id", "new_id"], ["3", "1"], ["5", "2"], ["8", "3"], ["9", "4"]]
    assert main(["audit", str(store), "signal", "1"]) == 0
    assert "Detected by migration" in capsys.readouterr().out


def test_cli_failed_import_leaves_no_new_store_behind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = make_old_db(tmp_path / "bad.db", processing=[(1, 99, "pushed", "p", None, None, None)])
    store = tmp_path / "new.db"
    assert main(["import-legacy", str(store), str(bad)]) == 1
    assert "signal_id 99 is not in the signals table" in capsys.readouterr().err
    assert not any(p.name.startswith("new.db") for p in tmp_path.iterdir())
    backup = tmp_path / "backup.jsonl"
    backup.write_text('{"format": "something else"}\n')
    assert main(["import", str(store), str(backup)]) == 1
    assert not any(p.name.startswith("new.db") for p in tmp_path.iterdir())


def test_cli_refuses_the_old_database_as_a_store(capsys: pytest.CaptureFixture[str], old_db: Path) -> None:
    before = digest(old_db)
    assert main(["status", str(old_db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "import-legacy" in err
    assert digest(old_db) == before


# -- found in review ------------------------------------------------------------------


def one_signal(**row: Any) -> list[tuple[Any, ...]]:
    values = {"id": 1, "type": "github_spike", "source": "github", "key": "domain:acme.ai", "name": "Acme",
              "confidence": 0.5, "raw_data": None, "detected_at": "2026-01-05T10:00:00Z"}  # fmt: skip
    values.update(row)
    return [tuple(values.values())]


@pytest.mark.parametrize(
    "row",
    [{"name": "Ac\x00me"}, {"raw_data": '{"bio": "a\\u0000b"}'}, {"key": "domain:acme\x00.ai"}],
    ids=["in company_name", "in raw_data", "in canonical_key"],
)
async def test_a_nul_character_is_named_with_its_row_and_nothing_is_imported(
    store_url: str, tmp_path: Path, row: dict[str, Any]
) -> None:
    """On PostgreSQL the events used to commit and the projections' rebuild then failed on them."""
    old = make_old_db(tmp_path / "nul.db", signals=one_signal(**row), processing=[], suppression=[])
    async with open_store(store_url) as log:
        with pytest.raises(InvalidEvent, match=r"signals row id=1: .*NUL character"):
            await import_legacy(log, old)
        assert await log.head_position() == 0
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        assert (await store.get_processing_stats())["total"] == 0


async def test_refusing_an_old_database_in_wal_mode_leaves_its_wal_alone(tmp_path: Path) -> None:
    """The old layer stopped with its last commit still in signals.db-wal (a crash, or files copied while it
    ran): closing a read-write connection would have folded the WAL into the file and removed it."""
    live = make_old_db(tmp_path / "live.db")
    conn = sqlite3.connect(live)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE signal_processing SET status = 'rejected', error_message = 'late' WHERE id = 3")
    conn.commit()
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{live}{suffix}", copy / f"signals.db{suffix}")
    conn.close()
    # Compared: the file and its WAL. The -shm is SQLite's shared-memory index, which every reader updates.
    before = {p.name: digest(p) for p in copy.iterdir() if not p.name.endswith("-shm")}
    with pytest.raises(SchemaVersionError, match="nothing was changed"):
        async with open_store(str(copy / "signals.db")):
            pass
    assert {p.name: digest(p) for p in copy.iterdir() if not p.name.endswith("-shm")} == before
    data = read_legacy(copy / "signals.db")  # and the import sees the commit still in the WAL
    assert [r["status"] for r in data.processing if r["id"] == 3] == ["rejected"]


def test_a_store_made_at_the_path_during_the_import_is_never_replaced_or_deleted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], old_db: Path, tmp_path: Path
) -> None:
    store = tmp_path / "events.db"
    real = legacy_cli.import_legacy

    async def meanwhile(log: Any, data: Any, **options: Any) -> Any:
        # The application, already pointed at the new path, starts while the import runs.
        async with signal_store(str(store), background=False, cleanup_interval=None) as app:
            await app.save_signal("github_spike", "github", "domain:new.io", "New", 0.5)
        return await real(log, data, **options)

    monkeypatch.setattr(legacy_cli, "import_legacy", meanwhile)
    assert main(["import-legacy", str(store), str(old_db)]) == 1
    err = capsys.readouterr().err
    assert f"{store} appeared while the import ran; the imported store is kept as" in err
    kept = Path(err.split("kept as ", 1)[1].strip())
    monkeypatch.undo()
    assert main(["stats", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signals"] == 1  # the application's store, untouched
    assert main(["stats", str(kept), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signals"] == 4  # and the import, whole


def test_a_new_store_appears_only_once_the_import_succeeded(
    monkeypatch: pytest.MonkeyPatch, old_db: Path, tmp_path: Path
) -> None:
    store = tmp_path / "events.db"
    real = legacy_cli.import_legacy
    seen: list[bool] = []

    async def watched(log: Any, data: Any, **options: Any) -> Any:
        seen.append(store.exists())
        return await real(log, data, **options)

    monkeypatch.setattr(legacy_cli, "import_legacy", watched)
    assert main(["import-legacy", str(store), str(old_db)]) == 0
    assert seen == [False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.db", "signals.db"]  # no WAL or temporary left


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (1736071200, dt.datetime(2025, 1, 5, 10, tzinfo=dt.UTC)),  # TEXT affinity keeps it as '1736071200'
        ("1736071200.5", dt.datetime(2025, 1, 5, 10, 0, 0, 500000, tzinfo=dt.UTC)),
        (1736071200000, None),  # milliseconds: refused, not read as the year 1736
    ],
)
async def test_unix_times_in_a_text_column(tmp_path: Path, stored: object, expected: dt.datetime | None) -> None:
    old = make_old_db(tmp_path / "t.db", signals=one_signal(detected_at=stored), processing=[], suppression=[])
    async with open_store(str(tmp_path / "new.db")) as log:
        if expected is None:
            with pytest.raises(
                InvalidEvent,
                match=r"signals row id=1: detected_at '1736071200000' is not Unix seconds \(milliseconds\?\)",
            ):
                await import_legacy(log, old)
            return
        await import_legacy(log, old)
        (event,) = await log.get_events([1])
    assert isinstance(event.data, SignalDetected)
    assert event.data.detected_at == expected


def test_an_id_map_that_cannot_be_written_fails_before_the_import(
    capsys: pytest.CaptureFixture[str], old_db: Path, tmp_path: Path
) -> None:
    store, id_map = tmp_path / "events.db", tmp_path / "maps" / "ids.csv"
    assert main(["import-legacy", str(store), str(old_db), "--id-map", str(id_map)]) == 1
    assert f"cannot write the id map {id_map}" in capsys.readouterr().err
    assert not store.exists()
    id_map.parent.mkdir()  # fixed, the same command runs again
    assert main(["import-legacy", str(store), str(old_db), "--id-map", str(id_map)]) == 0
    assert id_map.read_text().splitlines()[0] == "old_id,new_id"
    assert sorted(p.name for p in id_map.parent.iterdir()) == ["ids.csv"]


async def test_a_json_export_in_another_order_is_imported_in_old_id_order(old_db: Path, tmp_path: Path) -> None:
    exported = as_json_export(old_db, tmp_path / "backup.json")
    document = json.loads(exported.read_text())
    document["signals"].reverse()  # exported newest first
    document["signal_processing"].reverse()
    exported.write_text(json.dumps(document))
    async with open_store(str(tmp_path / "new.db")) as log:
        report = await import_legacy(log, exported)
    assert report.id_map == {3: 1, 5: 2, 8: 3, 9: 4}
    assert report.pushed == 1


async def test_a_repeated_push_to_the_same_page_is_one_push_as_in_the_facade(tmp_path: Path) -> None:
    processing = [
        (1, 3, "pushed", "page-acme", None, '{"score": 7}', "2026-01-05T10:05:00"),
        (2, 3, "pushed", "page-acme", None, '{"score": 7, "attempt": 2}', "2026-01-05T10:06:00"),  # a retry
    ]
    old = make_old_db(tmp_path / "old.db", processing=processing)
    async with open_store(str(tmp_path / "new.db")) as log:
        report = await import_legacy(log, old)
        pushes = [e async for e in log.read_all(types=["SignalPushed"])]
    assert report.pushed == 1
    assert [(e.data.metadata, e.metadata["legacy_id"]) for e in pushes] == [({"score": 7}, 1)]  # type: ignore[attr-defined]


def test_text_that_is_not_utf8_names_its_table_and_row(tmp_path: Path) -> None:
    old = make_old_db(tmp_path / "old.db")
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE signals SET company_name = CAST(X'41FF' AS TEXT) WHERE id = 5")
    with pytest.raises(InvalidEvent, match=r"signals row id=5: company_name is not UTF-8 text"):
        read_legacy(old)


def test_the_command_a_refusal_suggests_works_for_a_file_uri(
    capsys: pytest.CaptureFixture[str], old_db: Path, tmp_path: Path
) -> None:
    assert main(["status", f"file:{old_db}"]) == 1
    suggested = capsys.readouterr().err.split("with: ", 1)[1].split()
    assert suggested[:3] == ["eventstore", "import-legacy", "NEW.db"]
    assert main(["import-legacy", str(tmp_path / "new.db"), *suggested[3:]]) == 0, capsys.readouterr().err


async def test_one_detection_stored_twice_maps_both_old_ids_to_it(tmp_path: Path) -> None:
    """The old UNIQUE compared text: one instant spelt two ways got in twice. As with save_signal, the first
    detection stands, and both old ids name it."""
    signals = [*one_signal(id=1), *one_signal(id=2, detected_at="2026-01-05T10:00:00+00:00", confidence=0.9)]
    old = make_old_db(tmp_path / "old.db", signals=signals, processing=[(1, 2, "rejected", None, "dup", None, None)])
    async with open_store(str(tmp_path / "new.db")) as log:
        report = await import_legacy(log, old)
    assert (report.signals, report.merged, report.rejected, report.pending) == (1, 1, 1, 0)
    assert report.id_map == {1: 1, 2: 1}


async def test_an_import_into_a_new_path_is_not_replaced_by_a_wal_left_there(tmp_path: Path) -> None:
    """A -wal left by a deleted store (its app crashed, the user removed events.db to start again) would be
    replayed into the store put in place: the import refuses, naming it, and writes nothing."""
    source, target, dump = (str(tmp_path / name) for name in ("src.db", "events.db", "dump.jsonl"))
    async with open_store(source) as src:
        for n in range(5):
            await src.append(f"company:domain:c{n}.ai", [detected(f"domain:c{n}.ai")])
    async with open_store(target) as old:  # the old events.db, whose WAL its crashed app never checkpointed
        for n in range(50):
            await old.append(f"company:domain:old{n}.ai", [detected(f"domain:old{n}.ai")])
        shutil.copy(target + "-wal", str(tmp_path / "saved-wal"))
    os.remove(target)  # "start again from the backup"
    os.rename(str(tmp_path / "saved-wal"), target + "-wal")

    with anyio.fail_after(60):
        assert await anyio.to_thread.run_sync(main, ["export", source, dump]) == 0
        assert await anyio.to_thread.run_sync(main, ["import", target, dump]) == 1
    left = sorted(name for name in os.listdir(tmp_path) if name.startswith(("events.db", ".events.db")))
    assert left == ["events.db-wal"]  # nothing put in place, nothing left behind; the leftover is the user's
