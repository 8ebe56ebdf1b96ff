"""Export and import: a faithful round trip, and every kind of corrupt backup refused whole."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import EventStoreError, IntegrityViolation, SuppressionEntry, backup, open_store, signal_store
from eventstore.backup import export_log, import_log, restore
from eventstore.codec import GENESIS_HASH, chain_hash, to_micros
from eventstore.schema import LOG_MIGRATIONS
from tests.conftest import FakeClock, detected

pytestmark = pytest.mark.anyio


async def populate(url: str) -> None:
    clock = FakeClock()
    async with signal_store(url, clock=clock, background=False, cleanup_interval=None, actor="seed") as store:
        ids = []
        for n in range(12):
            clock.advance(seconds=30)
            ids.append(
                await store.save_signal(
                    "github_spike", "github", f"domain:c{n % 5}.ai", f"Company {n % 5}", 0.5 + n / 40,
                    {"repo": f"c{n}/rocket", "stars": n},
                )
            )  # fmt: skip
        await store.update_suppression_cache(
            [SuppressionEntry(canonical_key="domain:c1.ai", notion_page_id="page-c1", status="Active")]
        )
        await store.mark_pushed(ids[0], "page-0", {"score": 3})
        await store.mark_rejected(ids[1], "duplicate")


async def export_bytes(url: str) -> bytes:
    out = io.BytesIO()
    async with open_store(url) as log:
        await export_log(log, out)
    return out.getvalue()


async def facade_answers(url: str) -> list[object]:
    clock = FakeClock(dt.datetime(2026, 1, 7, tzinfo=dt.UTC))
    async with signal_store(url, clock=clock, background=False, cleanup_interval=None) as store:
        return [
            await store.get_processing_stats(),
            await store.get_pending_signals(limit=50),
            [await store.get_signal(i) for i in range(1, 16)],
            await store.get_signals_for_company("domain:c1.ai"),
            await store.check_suppression("domain:c1.ai"),
            await store.search("rocket", limit=50),
            str(await store.why(1)),
        ]


async def raw(url: str) -> list[tuple[object, ...]]:
    async with open_store(url) as log:
        return [
            tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in row) async for row in log.raw_rows()
        ]


async def test_round_trip_keeps_positions_ids_hashes_and_answers(tmp_path: Path, store_url: str) -> None:
    source = str(tmp_path / "source.db")
    await populate(source)
    dump = await export_bytes(source)
    header = json.loads(dump.splitlines()[0])
    assert header == {"format": "eventstore-jsonl", "format_version": 1, "schema_version": LOG_MIGRATIONS.latest,
                      "head_position": 15, "event_count": 15}  # fmt: skip
    async with open_store(store_url) as log:
        report = await restore(log, io.BytesIO(dump))
        assert (report.events, report.head_position) == (15, 15)
        assert (await log.verify()).ok
    assert await raw(store_url) == await raw(source)
    assert await facade_answers(store_url) == await facade_answers(source)
    assert await export_bytes(store_url) == dump


def _lines(dump: bytes) -> list[bytes]:
    return dump.splitlines(keepends=True)


def _edit(line: bytes) -> bytes:
    return line.replace(b"Company", b"Kompany", 1)


def _forged(lines: list[bytes], edit: Callable[[list[dict[str, Any]]], object]) -> list[bytes]:
    """The backup's events changed by ``edit``, the hash chain recomputed, as anyone holding the file can.

    The chain has no key: only the import's checks of the content itself can refuse these.
    """
    header, events = lines[0], [json.loads(line) for line in lines[1:]]
    edit(events)
    previous, forged = GENESIS_HASH, [header]
    for event in events:
        data, metadata = (json.dumps(event.pop(key), separators=(",", ":")).encode() for key in ("data", "metadata"))
        when = to_micros(dt.datetime.fromisoformat(event["recorded_at"]))
        row = (
            event["position"], uuid.UUID(event["event_id"]).bytes, event["stream"], event["version"], event["type"],
            event["schema_version"], when, metadata, data, b"",
        )  # fmt: skip
        previous = chain_hash(previous, row)
        envelope = json.dumps({**event, "hash": previous.hex()}).encode()
        forged.append(envelope[:-1] + b', "data": ' + data + b', "metadata": ' + metadata + b"}\n")
    return forged


def _set(index: int, **fields: object) -> Callable[[list[dict[str, Any]]], object]:
    return lambda events: events[index].update(fields)


def _same_id(events: list[dict[str, Any]]) -> None:
    events[3]["event_id"] = events[2]["event_id"]


Corruption = Callable[[list[bytes]], list[bytes]]
CORRUPTIONS: dict[str, tuple[Corruption, int, str]] = {
    "truncated": (lambda ls: ls[:-2], 15, "truncated"),
    "reordered": (lambda ls: [*ls[:4], ls[5], ls[4], *ls[6:]], 5, "expected position 4, found 5"),
    "duplicated": (lambda ls: [*ls[:6], ls[5], *ls[6:]], 7, "expected position 6, found 5"),
    "edited": (lambda ls: [*ls[:3], _edit(ls[3]), *ls[4:]], 4, "hash of position 3 does not match"),
    "bad header": (lambda ls: [b'{"format":"something-else"}\n', *ls[1:]], 1, "not a valid header"),
    "not json": (lambda ls: [*ls[:2], b"{oops\n", *ls[3:]], 3, "not a valid event line"),
    "empty": (lambda ls: [], 1, "empty file"),
    "forged: metadata not an object": (lambda ls: _forged(ls, _set(2, metadata=[1, 2])), 4, "not a JSON object"),
    "forged: actor not a string": (
        lambda ls: _forged(ls, _set(2, metadata={"actor": 7})),
        4,
        "metadata.actor must be a string",
    ),
    "forged: a repeated event id": (lambda ls: _forged(ls, _same_id), 5, "repeats the id of position 3"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
async def test_a_corrupt_backup_fails_with_its_line_and_leaves_the_store_empty(
    tmp_path: Path, store_url: str, kind: str
) -> None:
    source = str(tmp_path / "source.db")
    await populate(source)
    corrupt, line, reason = CORRUPTIONS[kind]
    data = b"".join(corrupt(_lines(await export_bytes(source))))
    async with open_store(store_url) as log:
        with pytest.raises(IntegrityViolation, match=reason) as caught:
            await restore(log, io.BytesIO(data))
        assert caught.value.line == line
        assert f"line {line}" in str(caught.value)
        assert await log.head_position() == 0
        assert await log.query("SELECT count(*) FROM events") == [(0,)]


async def test_a_nul_character_is_refused_by_an_import_into_postgresql_only(tmp_path: Path, store_url: str) -> None:
    """A log written on SQLite before NUL was refused may hold one: SQLite takes it back, PostgreSQL cannot."""
    source = str(tmp_path / "source.db")
    await populate(source)

    def nul_in_a_name(events: list[dict[str, Any]]) -> None:
        events[2]["data"]["company_name"] = "Ac\x00me"

    data = b"".join(_forged(_lines(await export_bytes(source)), nul_in_a_name))
    async with open_store(store_url) as log:
        if log.dialect == "postgresql":
            with pytest.raises(IntegrityViolation, match=r"line 4: SignalDetected.company_name contains a NUL"):
                await restore(log, io.BytesIO(data))
            assert await log.head_position() == 0
        else:
            assert (await restore(log, io.BytesIO(data))).events == 15


async def test_a_repeated_event_id_in_a_later_chunk_names_its_line(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repeat of an id imported by an earlier chunk is found in the database, not in memory."""
    monkeypatch.setattr(backup, "_CHUNK", 3)  # positions 1-3, then 4-6: position 4 repeats position 3's id
    source = str(tmp_path / "source.db")
    await populate(source)
    data = b"".join(_forged(_lines(await export_bytes(source)), _same_id))
    async with open_store(store_url) as log:
        with pytest.raises(IntegrityViolation, match=r"line 5: event id .* repeats the id of position 3"):
            await restore(log, io.BytesIO(data))
        assert await log.head_position() == 0


async def test_import_refuses_a_store_that_already_has_events(tmp_path: Path, store_url: str) -> None:
    source = str(tmp_path / "source.db")
    await populate(source)
    await populate(store_url)
    dump = await export_bytes(source)
    async with open_store(store_url) as log:
        before = await log.head_position()
        with pytest.raises(EventStoreError, match="already holds events"):
            await restore(log, io.BytesIO(dump))
        with pytest.raises(EventStoreError, match="already holds events"):
            await import_log(log, io.BytesIO(dump))
        assert await log.head_position() == before


async def test_export_streams_only_up_to_the_head_it_started_with(tmp_path: Path) -> None:
    source = str(tmp_path / "source.db")
    await populate(source)
    out = io.BytesIO()
    progress: list[tuple[int, int]] = []
    async with open_store(source) as log:
        header = await export_log(log, out, progress=lambda done, total: progress.append((done, total)))
    assert header.event_count == len(out.getvalue().splitlines()) - 1 == 15
    assert progress[-1] == (15, 15)


async def test_imported_log_accepts_new_appends_on_its_chain(tmp_path: Path) -> None:
    source, target = str(tmp_path / "source.db"), str(tmp_path / "target.db")
    await populate(source)
    dump = await export_bytes(source)
    async with open_store(target) as log:
        await restore(log, io.BytesIO(dump))
    async with signal_store(target, background=False, cleanup_interval=None) as store:
        new_id = await store.save_signal("sec", "sec", "domain:new.io", "New", 0.7)
        assert new_id == 16
        assert (await store.log.verify()).ok


async def test_an_import_into_postgresql_names_the_line_of_a_nul_in_metadata_and_writes_nothing(
    tmp_path: Path, postgres_store_url: str
) -> None:
    """A SQLite log written before NUL was refused in metadata: the import into PostgreSQL names the line
    and writes nothing (it used to commit, then fail in the projection rebuild for good)."""
    source = str(tmp_path / "source.db")
    async with open_store(source) as src:
        await src.append("company:domain:acme.ai", [detected()])
        out = io.BytesIO()
        await export_log(src, out)

    def nul_in_actor(events: list[dict[str, Any]]) -> None:
        events[0]["metadata"]["actor"] = "ops\x00bot"

    data = b"".join(_forged(_lines(out.getvalue()), nul_in_actor))
    async with open_store(postgres_store_url) as log:
        with anyio.fail_after(30), pytest.raises(IntegrityViolation, match=r"line 2: metadata.actor contains a NUL"):
            await restore(log, io.BytesIO(data))
        assert await log.head_position() == 0


async def test_an_import_into_postgresql_names_the_line_of_a_nul_in_a_stream_name(
    tmp_path: Path, postgres_store_url: str
) -> None:
    """Stream names with NUL were accepted on SQLite before: an older export holding one names its line."""
    source = str(tmp_path / "source.db")
    async with open_store(source) as src:
        await src.append("company:domain:acme.ai", [detected()])
        out = io.BytesIO()
        await export_log(src, out)

    def nul_in_stream(events: list[dict[str, object]]) -> None:
        events[0]["stream"] = "company:a\x00b"

    data = b"".join(_forged(_lines(out.getvalue()), nul_in_stream))
    async with open_store(postgres_store_url) as log:
        with anyio.fail_after(30), pytest.raises(IntegrityViolation, match="line 2"):
            await restore(log, io.BytesIO(data))
