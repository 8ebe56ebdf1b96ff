"""SQLite's append state cache: skipped state reads must never change what an append does.

The writer connection remembers the head and stream versions it committed and
plans the next append from them while ``PRAGMA data_version`` says no other
connection committed. These tests take each way the cache could go stale.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest

from eventstore import (
    NO_STREAM,
    DuplicateEventError,
    EventStore,
    RecordedEvent,
    SignalPushed,
    WrongExpectedVersion,
    open_store,
)
from eventstore.model import GuardedBatch, Statement
from tests.conftest import detected

pytestmark = pytest.mark.anyio

A = "company:domain:a.ai"
B = "company:domain:b.ai"


def pushed(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


class Statements:
    """The SQL the store's writer connection runs, while recording."""

    def __init__(self, log: EventStore) -> None:
        self.conn: sqlite3.Connection = log.backend._writer._conn  # type: ignore[attr-defined]
        self.seen: list[str] = []

    def __enter__(self) -> list[str]:
        self.conn.set_trace_callback(self.seen.append)
        return self.seen

    def __exit__(self, *exc: object) -> None:
        self.conn.set_trace_callback(None)


def state_reads(statements: list[str]) -> list[str]:
    return [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and "events" in sql]


async def positions(log: EventStore) -> list[int]:
    return [event.position async for event in log.read_all()]


async def check(log: EventStore, count: int) -> None:
    """The log holds ``count`` contiguous events and its chain verifies."""
    assert await positions(log) == list(range(1, count + 1))
    report = await log.verify()
    assert report.ok, report


async def test_a_warm_append_reads_no_state_and_a_commit_by_another_connection_makes_it_read_again(
    sqlite_path: str,
) -> None:
    async with open_store(sqlite_path) as log, open_store(sqlite_path) as other:
        await log.append(A, [pushed(1)])
        with Statements(log) as warm:
            await log.append(A, [pushed(2)])
        assert state_reads(warm) == []
        assert any("data_version" in sql for sql in warm)

        await other.append(A, [pushed(3)])
        with Statements(log) as after_other:
            result = await log.append(A, [pushed(4)], expected_version=3)
        assert state_reads(after_other) != []
        assert (result.positions, result.version) == ([4], 4)
        await check(log, 4)


async def test_interleaved_appends_from_two_stores_keep_versions_positions_and_the_chain(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as one, open_store(sqlite_path) as two:
        for n in range(1, 21):
            log = one if n % 3 else two
            result = await log.append(A if n % 2 else B, [pushed(n)])
            assert result.positions == [n]
        with pytest.raises(WrongExpectedVersion) as caught:
            await one.append(A, [pushed(99)], expected_version=3)
        assert caught.value.actual == 10
        assert (await two.append(A, [pushed(21)], expected_version=10)).version == 11
        assert (await one.append(A, [pushed(22)], expected_version=11)).positions == [22]
        # Batches too: a stale head would collide halfway through an executemany.
        assert (await two.append(B, [pushed(23), pushed(24)])).positions == [23, 24]
        assert (await one.append(B, [pushed(25), pushed(26)], expected_version=12)).positions == [25, 26]
        await check(one, 26)


async def test_a_warm_cache_still_answers_an_idempotent_reappend(sqlite_path: str) -> None:
    """The cache knows no ids: a recorded id is found by the unique index and decided from the database."""
    async with open_store(sqlite_path) as log:
        await idempotent_reappends(log)


async def idempotent_reappends(log: EventStore) -> None:
    first = await log.append(A, [detected("domain:a.ai")], expected_version=NO_STREAM)
    await log.append(A, [pushed(2)])
    # The stream exists now, so NO_STREAM fails a fresh append; a re-append of the recorded id succeeds.
    again = await log.append(A, [detected("domain:a.ai")], expected_version=NO_STREAM)
    assert (again.positions, again.written) == (first.positions, False)
    with pytest.raises(DuplicateEventError):
        await log.append(A, [detected("domain:new.ai"), detected("domain:a.ai")])
    batch = await log.append(A, [pushed(n) for n in range(3, 8)])
    assert batch.positions == [3, 4, 5, 6, 7]
    await check(log, 7)


async def test_a_rolled_back_unit_of_work_leaves_no_gap(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        await log.append(A, [pushed(2)])
        with pytest.raises(RuntimeError):
            async with log.transaction():
                await log.append(A, [pushed(3)])
                await log.append(B, [pushed(4)])
                raise RuntimeError("changed my mind")
        result = await log.append(A, [pushed(5)], expected_version=2)
        assert (result.positions, result.version) == ([3], 3)
        async with log.transaction():
            await log.append(B, [pushed(6)])
        assert (await log.append(B, [pushed(7)], expected_version=1)).positions == [5]
        await check(log, 5)


async def test_a_group_that_fails_as_a_whole_leaves_no_gap(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        failing = True

        def hook(recorded: Sequence[RecordedEvent]) -> Sequence[GuardedBatch]:
            if failing:
                raise RuntimeError("read model unavailable")
            return []

        log.backend.set_inline_hook(hook)
        with pytest.raises(RuntimeError):
            await log.append(A, [pushed(2)])
        failing = False
        result = await log.append(A, [pushed(3)], expected_version=1)
        assert result.positions == [2]
        await check(log, 2)


async def test_a_group_with_a_recorded_id_is_decided_caller_by_caller(sqlite_path: str) -> None:
    """16 appenders in one group, one re-appending a recorded id: each gets what it would alone."""
    async with open_store(sqlite_path) as log:
        known = await log.append(A, [detected("domain:known.ai")])
        await log.append(B, [pushed(1)])
        results: dict[int, Any] = {}

        async def append(i: int) -> None:
            if i == 7:
                results[i] = await log.append(A, [detected("domain:known.ai")])
            elif i == 9:
                with pytest.raises(WrongExpectedVersion):
                    await log.append(B, [pushed(900)], expected_version=5)
                results[i] = "refused"
            else:
                results[i] = await log.append(f"s:{i}", [pushed(100 + i)])

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(append, i)
        assert (results[7].positions, results[7].written) == (known.positions, False)
        assert results[9] == "refused"
        written = sorted(p for i, r in results.items() if i not in (7, 9) for p in r.positions)
        assert written == list(range(3, 17))
        await check(log, 16)


@pytest.fixture
def many_streams() -> Iterator[None]:
    from eventstore.backends.sqliteops import StateCache

    limit = StateCache.MAX_STREAMS
    StateCache.MAX_STREAMS = 4
    try:
        yield
    finally:
        StateCache.MAX_STREAMS = limit


@pytest.mark.usefixtures("many_streams")
async def test_more_streams_than_the_cache_keeps_make_it_start_over(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        for round_ in range(3):
            for s in range(10):
                result = await log.append(f"s:{s}", [pushed(round_ * 10 + s + 1)], expected_version=round_)
                assert result.version == round_ + 1
        await check(log, 30)


# -- the cache belongs to one connection ----------------------------------------


async def test_a_memory_store_reopened_starts_again_at_position_one() -> None:
    log = open_store(":memory:")
    async with log:
        for n in (1, 2, 3):
            await log.append(A, [pushed(n)])
    async with log:  # a new, empty database
        assert (await log.append(A, [pushed(4)])).positions == [1]
        await check(log, 1)


async def test_a_file_restored_from_an_older_copy_while_closed_is_appended_after_its_own_head(
    sqlite_path: str,
) -> None:
    log = open_store(sqlite_path)
    async with log:
        await log.append(A, [pushed(1)])
    shutil.copy(sqlite_path, sqlite_path + ".bak")
    async with log:
        await log.append(A, [pushed(2)])
        await log.append(A, [pushed(3)])
    shutil.copy(sqlite_path + ".bak", sqlite_path)
    async with log:
        assert (await log.append(A, [pushed(4)], expected_version=1)).positions == [2]
        await check(log, 2)


async def test_batches_and_groups_after_another_store_wrote_while_this_one_was_closed(sqlite_path: str) -> None:
    log = open_store(sqlite_path)
    async with log:
        await log.append(A, [pushed(1)])
    async with open_store(sqlite_path) as other:
        await other.append(A, [pushed(2)])
    async with log:
        assert (await log.append(A, [pushed(3), pushed(4)])).positions == [3, 4]
    async with open_store(sqlite_path) as other:
        await other.append(A, [pushed(5)])
    async with log:
        results: list[Any] = []

        async def append(i: int) -> None:
            results.append(await log.append(f"s:{i}", [pushed(10 + i)]))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(append, i)
        assert sorted(p for r in results for p in r.positions) == [6, 7, 8, 9]
        await check(log, 9)


async def test_other_writes_on_the_same_connection_make_the_next_append_read_the_state(sqlite_path: str) -> None:
    async with open_store(sqlite_path) as log:
        await log.query("SELECT 1")
        await log.append(A, [pushed(1)])
        await log.apply([GuardedBatch(None, [Statement("CREATE TABLE scratch (x INTEGER)")])])
        await log.apply([GuardedBatch(None, [Statement("INSERT INTO scratch VALUES (1)")])])
        with Statements(log) as after_apply:
            await log.append(A, [pushed(2)])
        assert state_reads(after_apply) != []
        with Statements(log) as warm:
            await log.append(A, [pushed(3)])
        assert state_reads(warm) == []


async def test_rows_refused_after_planning_from_a_stale_cache_are_planned_again_from_the_database(
    sqlite_path: str,
) -> None:
    """The safety net: should the cache ever be stale undetected, a batch is rolled back and redone."""
    async with open_store(sqlite_path) as log:
        await log.append(A, [pushed(1)])
        await log.append(A, [pushed(2)])
        await log.append(A, [pushed(3)])
        state: Any = log.backend._writes.state  # type: ignore[attr-defined]
        position, _, recorded_at = state._head
        (head_before,) = [e async for e in log.read_all(from_position=1, limit=1)]
        state._head = (1, head_before.hash, recorded_at)  # as if positions 2 and 3 were unknown to it
        state._versions[A] = 1
        result = await log.append(A, [pushed(4), pushed(5)])
        assert (result.positions, result.version) == ([4, 5], 5)
        assert position == 3
        await check(log, 5)
