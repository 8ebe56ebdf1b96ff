"""verify catches a tampered log; validate catches missing schema objects and projection drift."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from eventstore import SuppressionEntry, open_store, signal_store
from eventstore.checks import validate
from eventstore.cli import main
from projections.search import default_projections
from tests.test_backup import populate

pytestmark = pytest.mark.anyio


def tamper(path: str, *statements: str) -> None:
    """Change the file behind the store's back, as an attacker with file access would."""
    conn = sqlite3.connect(path)
    try:
        for sql in statements:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "events.db")
    anyio.run(populate, path)
    return path


async def test_an_intact_store_verifies_and_validates(db: str) -> None:
    async with open_store(db) as log:
        report = await log.verify()
        assert report.ok and report.events_checked == 15
        validation = await validate(log, default_projections())
    assert validation.ok, validation.problems
    assert validation.projections_checked == ["processing", "search", "signals", "suppression"]


async def test_the_database_refuses_to_edit_an_event(db: str) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        tamper(db, "UPDATE events SET stream = 'x' WHERE position = 3")


EDIT_PAYLOAD = (
    "DROP TRIGGER events_refuse_update",
    "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), 'Company 2', 'Company X') AS BLOB) WHERE position = 3",
)


async def test_verify_names_the_position_of_an_edited_payload(db: str) -> None:
    tamper(db, *EDIT_PAYLOAD)
    async with open_store(db) as log:
        report = await log.verify()
    assert not report.ok
    assert report.first_bad_position == 3
    assert "hash does not match" in (report.reason or "")


def test_verify_command_exits_1_naming_the_position(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", db]) == 0
    capsys.readouterr()
    tamper(db, *EDIT_PAYLOAD)
    assert main(["verify", db]) == 1
    assert "FAILED at position 3" in capsys.readouterr().out


async def test_verify_names_a_missing_position(db: str) -> None:
    tamper(db, "DROP TRIGGER events_refuse_delete", "DELETE FROM events WHERE position = 7")
    async with open_store(db) as log:
        report = await log.verify()
    assert (report.ok, report.first_bad_position) == (False, 7)
    assert "missing" in (report.reason or "")


async def test_validate_catches_a_dropped_index_and_trigger(db: str) -> None:
    tamper(db, "DROP INDEX signals_g1_canonical_key", "DROP TRIGGER events_refuse_delete")
    async with open_store(db) as log:
        report = await validate(log, default_projections())
    assert not report.ok
    assert "schema: index signals_g1_canonical_key is missing" in report.problems
    assert "schema: trigger events_refuse_delete is missing" in report.problems


def test_validate_command_exits_1_listing_problems(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", db]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    tamper(db, "DROP INDEX signals_g1_canonical_key")
    assert main(["validate", db, "--json"]) == 1
    assert "schema: index signals_g1_canonical_key is missing" in capsys.readouterr().out


async def test_validate_catches_a_trigger_redefined_to_do_nothing(db: str) -> None:
    tamper(
        db,
        "DROP TRIGGER events_refuse_update",
        "CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events BEGIN SELECT 1; END",
    )
    async with open_store(db) as log:
        report = await validate(log, default_projections())
    assert any("trigger events_refuse_update differs" in p for p in report.problems)


async def test_validate_names_drifted_rows(db: str) -> None:
    tamper(
        db,
        "UPDATE processing_g1 SET status = 'pushed', notion_page_id = 'forged' WHERE signal_id = 5",
        "DELETE FROM signals_g1 WHERE id = 6",
        "DELETE FROM search_g1 WHERE signal_id = 7",
    )
    async with open_store(db) as log:
        report = await validate(log, default_projections())
    problems = "\n".join(report.problems)
    assert "drift: processing.processing row (5, 'pushed', 'forged'" in problems
    assert "drift: signals.signals row (6, " in problems and "is missing or differs" in problems
    assert "drift: search.search row (7, " in problems
    assert "suppression" not in problems


async def test_cleaned_suppression_rows_are_not_drift(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    await populate(path)
    async with signal_store(path, background=False, cleanup_interval=None) as store:
        await store.update_suppression_cache([SuppressionEntry(canonical_key="k", notion_page_id="p")], ttl_days=0)
        assert await store.clean_expired_cache() == 2  # the seeded entry expired long ago too
        report = await validate(store.log, default_projections())
    assert report.ok, report.problems
