"""Crash safety of projections (issue 3 point 3): SIGKILL a process while it catches up a large
backlog, and while it rebuilds a bumped version; on restart the tables equal a clean rebuild, and
the views never expose a half-applied batch or a half-built generation.

Worker processes: ``python -m tests.test_projection_crash catchup|rebuild URL`` print one line per
committed batch.
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from eventstore import (
    AppendRequest,
    DatabaseError,
    EventStore,
    GuardedBatch,
    SignalPushed,
    SignalRejected,
    SignalStore,
    SuppressionSynced,
    company_stream,
    open_store,
    signal_store,
)
from projections import ProjectionRunner
from tests.conftest import detected
from tests.test_projections import ROOT, rebuilt_rows, table_rows, v2_projections

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)
BATCH = 150


def announce_applies(log: EventStore) -> None:
    """Print a line after every committed apply (the parent kills us at a chosen one)."""
    apply = log.apply

    async def announcing(batches: Sequence[GuardedBatch]) -> list[bool]:
        held = await apply(batches)
        print("applied", flush=True)
        return held

    log.apply = announcing  # type: ignore[method-assign]


async def worker_catchup(url: str) -> None:
    store = SignalStore(open_store(url), background=False)
    store.runner.batch_size = BATCH
    announce_applies(store.log)
    async with store:
        print("done", flush=True)


async def worker_rebuild(url: str) -> None:
    async with open_store(url) as log:
        runner = ProjectionRunner(log, v2_projections(), batch_size=BATCH)
        announce_applies(log)
        await runner.start(inline=False)
        await runner.catch_up()
        print("done", flush=True)


async def make_backlog(url: str, companies: int = 40, rounds: int = 60) -> int:
    """~4,800 events written by a plain log writer: detections, decisions and syncs."""
    async with open_store(url) as log:
        position = await log.head_position()
        for r in range(rounds):
            requests, decisions = [], []
            for c in range(companies):
                key = f"domain:c{c}"
                events: list[Any] = [detected(key, detected_at=T0 + dt.timedelta(minutes=r), raw_data={"r": r})]
                if c % 4 == 0:
                    events.append(
                        SuppressionSynced(
                            canonical_key=key,
                            notion_page_id=f"n{r}",
                            status="Active",
                            expires_at=T0 + dt.timedelta(days=r % 3),
                        )
                    )
                requests.append(AppendRequest(stream=company_stream(key), events=events))
            results = await log.append_batch(requests)
            for c, result in enumerate(results):
                signal_id = result.positions[0]
                if c % 3 == 0:
                    decisions.append(
                        AppendRequest(
                            stream=company_stream(f"domain:c{c}"),
                            events=[SignalPushed(signal_id=signal_id, notion_page_id="p")],
                        )
                    )
                elif c % 3 == 1:
                    decisions.append(
                        AppendRequest(
                            stream=company_stream(f"domain:c{c}"),
                            events=[SignalRejected(signal_id=signal_id, reason="weak")],
                        )
                    )
            await log.append_batch(decisions)
            position = await log.head_position()
        return position


async def start_worker(command: str, url: str) -> Process:
    return await anyio.open_process(
        [sys.executable, "-m", "tests.test_projection_crash", command, url], cwd=ROOT, stderr=None
    )


async def kill_after(proc: Process, applies: int, check: Any = None) -> bool:
    """SIGKILL ``proc`` once it has committed ``applies`` batches; run ``check()`` between lines.
    Returns False if it finished first."""
    assert proc.stdout is not None
    seen, buffer = 0, ""
    try:
        with anyio.fail_after(120):
            async for text in TextReceiveStream(proc.stdout):
                buffer += text
                while "\n" in buffer:
                    line, buffer = buffer.split("\n", 1)
                    if line == "done":
                        return False
                    seen += line == "applied"
                    if check is not None:
                        check()
                    if seen >= applies:
                        proc.send_signal(signal.SIGKILL)
                        return True
        return False
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await proc.aclose()


def state(path: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(name, state) -> (generation, version, checkpoint), read the way another process would."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, state, generation, version, checkpoint FROM projection_state").fetchall()
    conn.close()
    return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


def applied_exactly_up_to_checkpoints(path: str) -> None:
    """The views hold exactly the events up to each live checkpoint: no half-applied batch."""
    live = {name: checkpoint for (name, st), (_, _, checkpoint) in state(path).items() if st == "live"}
    with sqlite3.connect(path) as conn:
        detections = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'SignalDetected' AND position <= ?", (live["signals"],)
        ).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM signals").fetchone()[0] == detections
        assert conn.execute("SELECT coalesce(max(id), 0) FROM signals").fetchone()[0] <= live["signals"]
        decided = conn.execute(
            "SELECT count(*) FROM events WHERE type IN ('SignalPushed', 'SignalRejected') AND position <= ?",
            (live["processing"],),
        ).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM processing WHERE status != 'pending'").fetchone()[0] == decided
    conn.close()


async def test_sigkill_during_catch_up_then_restart_equals_a_clean_rebuild(sqlite_path: str) -> None:
    async with signal_store(sqlite_path, background=False):
        pass  # projections exist, at checkpoint 0
    head = await make_backlog(sqlite_path)
    for applies in (3, 9):
        assert await kill_after(await start_worker("catchup", sqlite_path), applies)
        checkpoints = {name: c for (name, st), (_, _, c) in state(sqlite_path).items() if st == "live"}
        assert 0 < min(checkpoints.values()) < head, "killed half-way through the backlog"
        applied_exactly_up_to_checkpoints(sqlite_path)
    async with signal_store(sqlite_path, background=False) as store:
        assert {(s.checkpoint, s.lag) for s in await store.projection_status()} == {(head, 0)}
        store.runner.stop_inline()
        rows = await table_rows(store.log)
        assert len(rows["signals"]) == 2400
        assert rows == await rebuilt_rows(store.log)


async def test_sigkill_during_a_version_rebuild_never_exposes_the_half_built_generation(sqlite_path: str) -> None:
    async with signal_store(sqlite_path, background=False):
        pass
    await make_backlog(sqlite_path)
    async with signal_store(sqlite_path, background=False) as store:
        old = await table_rows(store.log)
    count = len(old["signals"])

    def views_answer_the_old_generation() -> None:
        with sqlite3.connect(sqlite_path) as conn:
            assert conn.execute("SELECT count(*) FROM signals").fetchone()[0] == count
            columns = [row[1] for row in conn.execute("PRAGMA table_info(signals)")]
        conn.close()
        assert "v2" not in columns

    previous = 0
    for applies in (2, 8):
        assert await kill_after(await start_worker("rebuild", sqlite_path), applies, views_answer_the_old_generation)
        views_answer_the_old_generation()
        generation, version, checkpoint = state(sqlite_path)[("signals", "building")]
        assert version == 2 and previous < checkpoint < await _head(sqlite_path), "resumed, then killed half-way"
        previous = checkpoint
        assert state(sqlite_path)[("signals", "live")][1] == 1

    def views_answer_a_complete_generation() -> None:  # the old one, or the new one once switched
        with sqlite3.connect(sqlite_path) as conn:
            assert conn.execute("SELECT count(*) FROM signals").fetchone()[0] == count
        conn.close()

    assert not await kill_after(await start_worker("rebuild", sqlite_path), 10**9, views_answer_a_complete_generation)
    assert ("signals", "building") not in state(sqlite_path)
    assert state(sqlite_path)[("signals", "live")][:2] == (generation, 2), "the resumed generation went live"
    async with open_store(sqlite_path) as log:
        assert await table_rows(log) == old
        assert [row[0] for row in await log.query("SELECT DISTINCT v2 FROM signals")] == [2]
        with pytest.raises(DatabaseError):
            await log.query("SELECT count(*) FROM signals_g1")


async def _head(path: str) -> int:
    async with open_store(path) as log:
        return await log.head_position()


if __name__ == "__main__":
    command, url = sys.argv[1:]
    anyio.run({"catchup": worker_catchup, "rebuild": worker_rebuild}[command], url)
