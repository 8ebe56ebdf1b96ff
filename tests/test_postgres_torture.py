"""Readers never skip: 4 writer processes with rollbacks and conflicts, 2 tailing reader processes.

Every writer commits exactly 1,000 events in random batch sizes, to its own
stream (exact expected versions), to a stream all writers race on (conflicts
retried), and across both in one unit of work; it also appends events it then
rolls back (an exception inside ``transaction()``, sometimes after holding the
lock a while, so commits land late) and appends with a stale expected version.
Each reader subscribes from position 1 and must see every committed event
exactly once, in position order, and none of the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing as mp
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import NO_STREAM, STREAM_EXISTS, RecordedEvent, SignalDetected, WrongExpectedVersion, open_store
from tests.conftest import NO_POSTGRES, POSTGRES_URL, _drop_schema

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS, READERS, EVENTS_PER_WRITER, MAX_BATCH = 4, 2, 1000, 40
SHARED = "company:shared"
WHEN = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)


class Rollback(Exception):
    """Raised on purpose inside a unit of work."""


def batch(writer: int, kind: str, attempt: int, size: int) -> list[SignalDetected]:
    return [
        SignalDetected(
            signal_type="torture",
            source_api="test",
            canonical_key=f"w{writer}-{kind}-{attempt}-{index}",
            company_name=f"writer {writer}",
            confidence=0.5,
            raw_data={"kind": kind},
            detected_at=WHEN,
        )
        for index in range(size)
    ]


def key_of(event: RecordedEvent) -> str:
    assert isinstance(event.data, SignalDetected)
    return event.data.canonical_key


class Writer:
    def __init__(self, url: str, writer: int) -> None:
        self.url, self.writer = url, writer
        self.rng = random.Random(writer * 7919)
        self.own = f"company:writer-{writer}"
        self.version = 0
        self.attempt = 0
        self.committed: list[str] = []
        self.discarded: list[str] = []
        self.counts = {"conflicts": 0, "races": 0, "rollbacks": 0}

    def events(self, kind: str, size: int) -> list[SignalDetected]:
        self.attempt += 1
        return batch(self.writer, kind, self.attempt, size)

    async def run(self) -> dict[str, Any]:
        async with open_store(self.url, actor=f"writer-{self.writer}") as log:
            while (left := EVENTS_PER_WRITER - len(self.committed)) > 0:
                size = min(self.rng.randint(1, MAX_BATCH), left)
                roll = self.rng.random()
                if roll < 0.15:
                    await self.roll_back(log, size)
                elif roll < 0.25:
                    await self.stale(log, size)
                elif roll < 0.45:
                    await self.race(log, size)
                elif roll < 0.55 and size > 1:
                    await self.span(log, size)
                else:
                    await self.plain(log, size)
        return {"committed": self.committed, "discarded": self.discarded, **self.counts}

    async def plain(self, log: Any, size: int) -> None:
        events = self.events("ok", size)
        result = await log.append(self.own, events, expected_version=self.version or NO_STREAM)
        self.version = result.version
        self.committed += [e.canonical_key for e in events]

    async def roll_back(self, log: Any, size: int) -> None:
        events = self.events("rolled-back", size)
        try:
            async with log.transaction():
                await log.append(self.own, events[: size // 2 + 1], expected_version=self.version or NO_STREAM)
                await log.append(SHARED, events[size // 2 + 1 :])
                await anyio.sleep(self.rng.random() * 0.02)  # hold the append lock a while
                raise Rollback
        except Rollback:
            self.discarded += [e.canonical_key for e in events]
            self.counts["rollbacks"] += 1

    async def stale(self, log: Any, size: int) -> None:
        events = self.events("conflict", size)
        try:
            await log.append(self.own, events, expected_version=self.version + 3 if self.version else STREAM_EXISTS)
        except WrongExpectedVersion:
            self.discarded += [e.canonical_key for e in events]
            self.counts["conflicts"] += 1
            return
        raise AssertionError("a stale expected_version was accepted")

    async def race(self, log: Any, size: int) -> None:
        events = self.events("ok", size)
        while True:  # every writer appends here with the version it last read: real conflicts
            seen = await log.stream_version(SHARED)
            await anyio.sleep(self.rng.random() * 0.002)
            try:
                await log.append(SHARED, events, expected_version=seen or NO_STREAM)
            except WrongExpectedVersion:
                self.counts["races"] += 1
                continue
            self.committed += [e.canonical_key for e in events]
            return

    async def span(self, log: Any, size: int) -> None:
        events = self.events("ok", size)
        async with log.transaction():
            result = await log.append(self.own, events[: size // 2], expected_version=self.version or NO_STREAM)
            await log.append(SHARED, events[size // 2 :])
            await anyio.sleep(self.rng.random() * 0.01)  # a late commit
        self.version = result.version
        self.committed += [e.canonical_key for e in events]


def write(url: str, writer: int, out: str) -> None:
    """A writer process."""
    report = asyncio.run(Writer(url, writer).run())
    Path(out).write_text(json.dumps(report))


def read(url: str, out: str, ready: Any, target: Any) -> None:
    """A tailing reader process: subscribe from 1 until the head the test announces."""

    async def main() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        async with open_store(url) as log:

            async def follow() -> None:
                async for event in log.subscribe(poll_interval=0.5):
                    seen.append((event.position, key_of(event)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await log.wait_for_append(0.1)  # listening now
                ready.set()
                while True:  # the target comes from another process: poll it
                    if target.value and seen and seen[-1][0] >= target.value:
                        break
                    await anyio.sleep(0.05)
                await anyio.sleep(0.5)  # anything beyond the head would show up now
                tg.cancel_scope.cancel()
        return seen

    Path(out).write_text(json.dumps(asyncio.run(main())))


@pytest.fixture
def torture_url() -> Any:
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    schema = f"torture_{random.randrange(16**10):010x}"
    yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
    _drop_schema(POSTGRES_URL, schema)


async def _open_and_head(url: str) -> int:
    async with open_store(url) as log:
        return await log.head_position()


async def _check_log(url: str) -> tuple[list[tuple[int, str]], bool]:
    async with open_store(url) as log:
        rows = [(e.position, key_of(e)) async for e in log.read_all()]
        return rows, (await log.verify()).ok


def test_tailing_readers_see_every_committed_event_once_in_order_despite_rollbacks_and_conflicts(
    torture_url: str, tmp_path: Path
) -> None:
    asyncio.run(_open_and_head(torture_url))  # schema ready before the crowd arrives
    ctx = mp.get_context("spawn")
    target = ctx.Value("q", 0)
    readies = [ctx.Event() for _ in range(READERS)]
    readers = [
        ctx.Process(target=read, args=(torture_url, str(tmp_path / f"reader{r}.json"), readies[r], target))
        for r in range(READERS)
    ]
    writers = [
        ctx.Process(target=write, args=(torture_url, w, str(tmp_path / f"writer{w}.json"))) for w in range(WRITERS)
    ]
    try:
        for process in readers:
            process.start()
        assert all(ready.wait(60) for ready in readies), "readers did not start"
        for process in writers:
            process.start()
        for process in writers:
            process.join(240)
            assert process.exitcode == 0, f"writer failed with exit code {process.exitcode}"
        target.value = asyncio.run(_open_and_head(torture_url))
        for process in readers:
            process.join(60)
            assert process.exitcode == 0, f"reader failed with exit code {process.exitcode}"
    finally:
        for process in (*readers, *writers):
            if process.is_alive():
                process.kill()

    reports = [json.loads((tmp_path / f"writer{w}.json").read_text()) for w in range(WRITERS)]
    committed = [key for report in reports for key in report["committed"]]
    discarded = {key for report in reports for key in report["discarded"]}
    assert len(committed) == len(set(committed)) == WRITERS * EVENTS_PER_WRITER
    assert all(report["rollbacks"] and report["conflicts"] for report in reports)
    assert sum(report["races"] for report in reports) > 0, "the shared stream never saw a real conflict"

    log_rows, verified = asyncio.run(_check_log(torture_url))
    assert verified
    # Gap-free on PostgreSQL too: rolled-back positions are reused by the next writer.
    assert [position for position, _ in log_rows] == list(range(1, len(committed) + 1))
    assert {key for _, key in log_rows} == set(committed)
    for r in range(READERS):
        seen = [tuple(pair) for pair in json.loads((tmp_path / f"reader{r}.json").read_text())]
        assert seen == log_rows, f"reader {r} diverged from the log"
        assert not discarded & {key for _, key in seen}
