"""Projection workers as separate processes (issue 5 point 5): exactly one active worker at a time,
and when it is killed with SIGKILL a standby takes over, with no event applied twice or skipped.

Helper processes: ``python -m tests.test_worker_failover hold URL LOG ROUNDS`` takes the worker lock
``ROUNDS`` times, writing ``+pid`` and ``-pid`` lines to LOG while it holds it;
``python -m tests.test_worker_failover keep URL`` takes it, prints ``held`` and holds it forever.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from eventstore import (
    AppendRequest,
    Event,
    EventStore,
    SignalPushed,
    SignalRejected,
    WorkerLockLost,
    company_stream,
    open_store,
)
from eventstore.cli._projections import PROJECTION_NAMES
from tests.conftest import detected
from tests.test_projections import ROOT, rebuilt_rows, table_rows

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)
LOCK = "test-lock"
TAKEOVER_TIMEOUT = 30.0


# -- helper processes --------------------------------------------------------


async def hold(url: str, log_path: str, rounds: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        async with open_store(url) as log:
            for _ in range(rounds):
                async with log.worker_lock(LOCK, poll_interval=0.005):
                    os.write(fd, f"+{os.getpid()}\n".encode())
                    await anyio.sleep(0.02)  # a window in which an overlapping holder would write
                    os.write(fd, f"-{os.getpid()}\n".encode())
                await anyio.sleep(0.001)
    finally:
        os.close(fd)


async def keep(url: str) -> None:
    async with open_store(url) as log, log.worker_lock(LOCK):
        print("held", flush=True)
        await anyio.sleep_forever()


async def spawn(*args: str, stdout: int | None = None) -> Process:
    return await anyio.open_process([sys.executable, *args], cwd=ROOT, stdout=stdout, stderr=None)


async def read_until(stream: TextReceiveStream, text: str, seen: list[str], timeout: float = 30.0) -> None:
    """Read ``stream`` into ``seen`` until a line containing ``text`` arrives."""
    with anyio.fail_after(timeout):
        while not any(text in line for line in seen):
            seen.extend((await stream.receive()).splitlines())


async def stop(proc: Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    await proc.aclose()


# -- the lock itself ---------------------------------------------------------


async def test_two_holders_in_different_processes_never_overlap(store_url: str, tmp_path: Path) -> None:
    async with open_store(store_url):
        pass  # the schema exists before the holders race to open it
    log_path, rounds = str(tmp_path / "holders.log"), 12
    procs = [await spawn("-m", "tests.test_worker_failover", "hold", store_url, log_path, str(rounds)) for _ in "ab"]
    try:
        with anyio.fail_after(60):
            for proc in procs:
                assert await proc.wait() == 0
    finally:
        for proc in procs:
            await stop(proc)
    lines = (await anyio.Path(log_path).read_text()).split()
    assert len(lines) == 2 * 2 * rounds
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter[0] == "+" and leave == "-" + enter[1:], f"overlapping holders: {lines}"
    assert len({line[1:] for line in lines}) == 2


async def test_the_lock_is_freed_when_its_holder_is_killed(store_url: str) -> None:
    keeper = await spawn("-m", "tests.test_worker_failover", "keep", store_url, stdout=subprocess.PIPE)
    try:
        assert keeper.stdout is not None
        await read_until(TextReceiveStream(keeper.stdout), "held", [])
        async with open_store(store_url) as log:
            async with log.worker_lock(LOCK, wait=False) as held:
                assert not held
            keeper.send_signal(signal.SIGKILL)
            with anyio.fail_after(TAKEOVER_TIMEOUT):
                async with log.worker_lock(LOCK, poll_interval=0.05) as held:
                    assert held
    finally:
        await stop(keeper)


# -- project --follow workers --------------------------------------------------


async def write(log: EventStore, start: int, count: int) -> None:
    """``count`` detections over a few companies; every third pushed, every third rejected."""
    for n in range(start, start + count, 10):
        keys = [f"domain:c{m % 7}" for m in range(n, min(n + 10, start + count))]
        requests = [
            AppendRequest(stream=company_stream(key), events=[detected(key, detected_at=T0 + dt.timedelta(minutes=m))])
            for m, key in enumerate(keys, n)
        ]
        results = await log.append_batch(requests)
        decisions = []
        for m, (key, result) in enumerate(zip(keys, results, strict=True), n):
            signal_id = result.positions[0]
            decision: list[Event] = []
            if m % 3 == 0:
                decision = [SignalPushed(signal_id=signal_id, notion_page_id=f"p{m}")]
            elif m % 3 == 1:
                decision = [SignalRejected(signal_id=signal_id, reason="weak")]
            if decision:
                decisions.append(AppendRequest(stream=company_stream(key), events=decision))
        await log.append_batch(decisions)


async def caught_up(log: EventStore, timeout: float = TAKEOVER_TIMEOUT) -> None:
    """Poll until every live projection's checkpoint is the head (the only timing we assert)."""
    head = await log.head_position()
    with anyio.fail_after(timeout):
        while True:
            rows = await log.query("SELECT checkpoint FROM projection_state WHERE state = 'live'")
            if len(rows) == len(PROJECTION_NAMES) and all(row[0] == head for row in rows):
                return
            await anyio.sleep(0.05)


def worker_args(url: str) -> list[str]:
    return ["-m", "eventstore", "project", url, "--follow", "--poll-interval", "0.1"]


async def start_worker(url: str) -> tuple[Process, TextReceiveStream, list[str]]:

    proc = await anyio.open_process(
        [sys.executable, *worker_args(url)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    return proc, TextReceiveStream(proc.stderr), []


async def test_a_standby_worker_takes_over_when_the_active_one_is_killed(store_url: str) -> None:
    async with open_store(store_url) as log:  # a plain writer: no inline projections
        await write(log, 0, 30)
        a, a_err, a_lines = await start_worker(store_url)
        b = None
        try:
            await read_until(a_err, "following", a_lines)
            b, b_err, b_lines = await start_worker(store_url)
            await read_until(b_err, "standby", b_lines)
            await caught_up(log)  # A applied the backlog
            await write(log, 30, 30)
            await caught_up(log)  # ... and what came while it was following
            with anyio.move_on_after(0.3):
                b_lines.extend((await b_err.receive()).splitlines())
            assert not any("active" in line for line in b_lines), b_lines

            await write(log, 60, 300)  # kill A while it is likely in the middle of applying these
            a.send_signal(signal.SIGKILL)
            assert await a.wait() == -signal.SIGKILL
            await write(log, 360, 30)
            await read_until(b_err, "following", b_lines, timeout=TAKEOVER_TIMEOUT)
            await caught_up(log)
        finally:
            await stop(a)
            if b is not None:
                await stop(b)

        head = await log.head_position()
        rows = await log.query("SELECT checkpoint FROM projection_state WHERE state = 'live'")
        assert [row[0] for row in rows] == [head] * len(PROJECTION_NAMES)
        detections = await log.query("SELECT count(*) FROM events WHERE type = 'SignalDetected'")
        incremental = await table_rows(log)
        assert len(incremental["signals"]) == detections[0][0] == 390
        assert incremental == await rebuilt_rows(log)


# -- a holder that loses its lock ---------------------------------------------------


async def end_lock_session(url: str, name: str) -> None:
    """Terminate the server session holding worker lock ``name`` (what a server restart or a network cut does)."""
    import asyncpg

    from eventstore.backends.pglock import lock_key
    from eventstore.backends.pgtext import parse_url

    target = parse_url(url)
    key = lock_key(target.schema, name) & 0xFFFF_FFFF_FFFF_FFFF
    conn = await asyncpg.connect(target.dsn)
    try:
        with anyio.fail_after(10):
            while True:
                pids = await conn.fetch(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND classid = $1::bigint::oid AND objid = $2::bigint::oid "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    key >> 32,
                    key & 0xFFFF_FFFF,
                )
                if pids:
                    break
                await anyio.sleep(0.05)
        assert len(pids) == 1
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pids[0][0])
    finally:
        await conn.close()


async def test_work_under_the_lock_is_stopped_when_the_lock_is_lost(postgres_store_url: str) -> None:
    """PostgreSQL only: a flock cannot be taken away from a living holder."""
    store_url = postgres_store_url
    async with open_store(store_url) as log, open_store(store_url) as standby:
        with anyio.fail_after(TAKEOVER_TIMEOUT), pytest.raises(WorkerLockLost, match=LOCK):
            async with log.worker_lock(LOCK, poll_interval=0.05) as held:
                assert held
                await end_lock_session(store_url, LOCK)
                await anyio.sleep_forever()  # cancelled by the lock's watchdog
        async with standby.worker_lock(LOCK, wait=False) as held:
            assert held  # the lost lock really is free


async def test_errors_and_cancellation_pass_through_the_lock_unchanged(store_url: str) -> None:
    async with open_store(store_url) as log:
        with pytest.raises(KeyError):
            async with log.worker_lock(LOCK):
                raise KeyError("inside")
        async with log.worker_lock(LOCK, wait=False) as held:
            assert held  # released on the way out
        with anyio.move_on_after(0.2) as outer:
            async with log.worker_lock(LOCK):
                await anyio.sleep_forever()
        assert outer.cancelled_caught  # an outer cancellation ends the block as usual...
        async with log.worker_lock(LOCK, wait=False) as held:
            assert held  # ... and frees the lock


async def test_a_worker_that_loses_its_lock_stands_by_and_resumes_without_double_applying(
    postgres_store_url: str,
) -> None:
    store_url = postgres_store_url
    async with open_store(store_url) as log:
        await write(log, 0, 30)
        worker, err, lines = await start_worker(store_url)
        try:
            await read_until(err, "following", lines)
            await write(log, 30, 200)
            await end_lock_session(store_url, "projections")
            await read_until(err, "standing by", lines, timeout=TAKEOVER_TIMEOUT)
            await write(log, 230, 30)
            del lines[:]
            await read_until(err, "following", lines, timeout=TAKEOVER_TIMEOUT)  # it took the free lock again
            await caught_up(log)
        finally:
            await stop(worker)
        assert await table_rows(log) == await rebuilt_rows(log)


if __name__ == "__main__":
    command, url, *rest = sys.argv[1:]
    if command == "hold":
        anyio.run(hold, url, rest[0], int(rest[1]))
    else:
        anyio.run(keep, url)
