"""Crash safety: a process appending batches is SIGKILLed at random moments, again and again.

Every batch carries its id and size in the metadata, so after each kill the log
must hold each batch entirely or not at all, positions must stay contiguous,
and the hash chain must verify.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from eventstore import SignalPushed, open_store

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
RUNS = 24


def start(path: str, run: int, ready: Path, synchronous: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procs", "crash", path, str(run), str(ready), synchronous],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def run_and_kill(path: str, run: int, ready: Path, synchronous: str, delay: float) -> None:
    proc = start(path, run, ready, synchronous)
    try:
        with anyio.fail_after(60):  # a hang guard, not a timing assertion
            while not await anyio.Path(ready).exists():  # another process creates it
                assert proc.poll() is None, proc.communicate()[1].decode()
                await anyio.sleep(0.005)
        await anyio.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = await anyio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()


@pytest.mark.slow
async def test_killed_appenders_leave_whole_batches_and_a_valid_chain(sqlite_path: str, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    batches: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    sizes: dict[str, int] = {}
    checked = 0
    async with open_store(sqlite_path) as log:
        await log.append("start", [SignalPushed(signal_id=1, notion_page_id="p")])
        checked = 1
    for run in range(RUNS):
        synchronous = "FULL" if run % 3 == 2 else "NORMAL"
        await run_and_kill(sqlite_path, run, tmp_path / f"ready-{run}", synchronous, rng.uniform(0.0, 0.25))
        async with open_store(sqlite_path) as log:
            report = await log.verify()
            assert report.ok, f"run {run} (seed {seed}): {report}"
            async for event in log.read_all(from_position=checked + 1):
                assert event.position == checked + 1, f"seed {seed}"
                checked = event.position
                batch = event.metadata["batch"]
                batches[batch].append((event.position, event.stream, event.version))
                sizes[batch] = event.metadata["size"]
            assert checked == report.head_position
            # A later process can still append after the crash.
            await log.append("after-crash", [SignalPushed(signal_id=run + 1, notion_page_id="p")])
            checked += 1
    assert len({key.split("-")[0] for key in batches}) == RUNS  # every run committed something
    for batch, rows in batches.items():
        assert len(rows) == sizes[batch], f"batch {batch} is partial: {rows} (seed {seed})"
        positions = [p for p, _, _ in rows]
        assert positions == list(range(positions[0], positions[0] + len(rows))), f"batch {batch} (seed {seed})"
        by_stream: dict[str, list[int]] = defaultdict(list)
        for _, stream, version in rows:
            by_stream[stream].append(version)
        for versions in by_stream.values():
            assert versions == list(range(versions[0], versions[0] + len(versions)))
