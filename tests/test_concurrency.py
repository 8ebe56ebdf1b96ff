"""Several OS processes on one log: every event exactly once, positions contiguous, readers never skip."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from eventstore import RecordedEvent, SignalPushed, open_store

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
WORKERS, PER_WORKER = 4, 500
TOTAL = WORKERS * PER_WORKER


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procs", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def finish(proc: subprocess.Popen[bytes]) -> None:
    _, stderr = await anyio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 0, stderr.decode()


@pytest.mark.slow
async def test_four_processes_append_while_a_reader_follows(sqlite_path: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    seen: list[RecordedEvent] = []
    async with open_store(sqlite_path) as log:  # creates the schema before the workers race
        procs = [spawn("append", sqlite_path, str(w), str(PER_WORKER), str(go)) for w in range(WORKERS)]
        try:
            with anyio.fail_after(240):  # a hang guard, not a timing assertion
                async with anyio.create_task_group() as tg:

                    async def follow() -> None:
                        async for event in log.subscribe(poll_interval=0.01):
                            seen.append(event)
                            if len(seen) == TOTAL:
                                return

                    tg.start_soon(follow)
                    go.touch()
                    for proc in procs:
                        await finish(proc)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stderr:
                    proc.stderr.close()
        stored = [event async for event in log.read_all()]
        report = await log.verify()

    assert [e.position for e in seen] == list(range(1, TOTAL + 1))  # each position once, in order
    assert seen == stored
    assert [e.position for e in stored] == list(range(1, TOTAL + 1))
    assert len({e.event_id for e in stored}) == TOTAL
    per_event = Counter((e.metadata["worker"], e.metadata["seq"]) for e in stored)
    assert set(per_event.values()) == {1}
    assert len(per_event) == TOTAL
    for worker in range(WORKERS):
        mine = [e for e in stored if e.stream == f"worker:{worker}"]
        assert [e.version for e in mine] == list(range(1, PER_WORKER + 1))
        assert [e.metadata["seq"] for e in mine] == list(range(PER_WORKER))
    assert len({e.actor for e in stored}) == WORKERS
    assert report.ok, str(report)


@pytest.mark.slow
async def test_subscribe_delivers_events_appended_by_another_process(store_url: str) -> None:
    count = 50
    seen: list[int] = []
    async with open_store(store_url) as log:
        await log.append("before", [SignalPushed(signal_id=1, notion_page_id="p")])
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:

                async def follow() -> None:
                    async for event in log.subscribe(from_position=1):
                        seen.append(event.position)
                        if len(seen) == count + 1:
                            return

                tg.start_soon(follow)
                await finish(spawn("late", store_url, str(count)))
        assert [e.stream async for e in log.read_all(from_position=2)] == ["late"] * count
    assert seen == sorted(set(seen))
    if log.dialect == "sqlite":
        assert seen == list(range(1, count + 2))
