"""PostgreSQL benchmark sections (issue 5): our backend against raw asyncpg, in one run.

Run only with ``--postgres URL`` (or ``$EVENTSTORE_BENCH_POSTGRES_URL``); each
run works in fresh schemas ``bench_<pid>_<n>`` and drops them at the end. The
raw side is the bare table of bench.py's SQLite sections
(``events(position, stream, version, type, data, metadata, recorded_at)``,
``UNIQUE(stream, version)``) written with plain asyncpg. Registered into
bench.py's section table the same way as :mod:`bench_facade`.

Writer processes (``pg_writers4``) are children of this script: each connects,
says "ready", waits for "go" on stdin, appends, and reports its start and end
times; the rate is all events over (last end - first start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import Bench, Result, make_events, raw_metadata, section

from eventstore import AppendRequest, EventStore, open_store
from eventstore.events import SignalDetected, SignalEvent

RAW_TABLE = """CREATE TABLE events (
    position BIGINT PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL, type TEXT NOT NULL,
    data BYTEA NOT NULL, metadata BYTEA NOT NULL, recorded_at BIGINT NOT NULL, UNIQUE (stream, version))"""
# Several writer processes without an ordering lock take positions from a sequence.
RAW_TABLE_SEQ = RAW_TABLE.replace("position BIGINT PRIMARY KEY", "position BIGSERIAL PRIMARY KEY")
RAW_COLUMNS = ("position", "stream", "version", "type", "data", "metadata", "recorded_at")
RAW_INSERT = "INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7)"
RAW_SELECT = "SELECT position, stream, version, type, data, metadata, recorded_at FROM events ORDER BY position"

_encode = msgspec.json.encode
_decode_any = msgspec.json.Decoder(SignalEvent).decode
_decode_meta = msgspec.json.Decoder(dict[str, Any]).decode


def pg_url(ctx: Bench) -> str:
    return str(getattr(ctx.args, "postgres", "") or os.environ.get("EVENTSTORE_BENCH_POSTGRES_URL", ""))


class Schemas:
    """Fresh schema names for this run; every one is dropped by :meth:`drop_all`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def new(self, tag: str) -> str:
        name = f"bench_{os.getpid()}_{len(self.made)}_{tag}"
        self.made.append(name)
        return name

    async def raw(self, tag: str, table: str = RAW_TABLE) -> str:
        schema = self.new(tag)
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}; {table}")
        finally:
            await conn.close()
        return schema

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            for schema in self.made:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


def schemas_of(ctx: Bench) -> Schemas:
    """The schemas of one section; the section drops them all before it returns."""
    return Schemas(pg_url(ctx))


def raw_rows(start: int, events: Sequence[SignalDetected], stream: str, version: int) -> list[tuple[Any, ...]]:
    meta, when = raw_metadata(), time.time_ns() // 1000
    return [
        (start + i, stream, version + i + 1, "SignalDetected", _encode(e), meta, when) for i, e in enumerate(events)
    ]


def batches_of(total: int, per: int, streams: int, offset: int = 0) -> list[tuple[str, list[SignalDetected]]]:
    return [
        (
            f"company:acme-{offset + i % streams:06d}.ai",
            make_events(offset * 10_000_000 + i * per, per, f"acme-{offset + i % streams}"),
        )
        for i in range(total // per)
    ]


# -- sequential appends -------------------------------------------------------------


async def ours_appends(url: str, schema: str, batches: list[tuple[str, list[SignalDetected]]]) -> float:
    async with open_store(url, schema=schema, actor="bench") as log:
        started = time.perf_counter()
        for stream, events in batches:
            await log.append(stream, events)
        elapsed = time.perf_counter() - started
    return sum(len(e) for _, e in batches) / elapsed


async def raw_appends(url: str, schema: str, batches: list[tuple[str, list[SignalDetected]]]) -> float:
    """Python keeps head and versions; one event: one INSERT (its own transaction); more: COPY in a transaction."""
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    versions: dict[str, int] = {}
    position = 0
    try:
        insert = await conn.prepare(RAW_INSERT)
        started = time.perf_counter()
        for stream, events in batches:
            rows = raw_rows(position + 1, events, stream, versions.get(stream, 0))
            if len(rows) == 1:
                await insert.fetch(*rows[0])  # autocommit: one transaction per insert
            else:
                async with conn.transaction():
                    await conn.copy_records_to_table("events", records=rows, columns=RAW_COLUMNS)
            position += len(rows)
            versions[stream] = versions.get(stream, 0) + len(rows)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return position / elapsed


def append_results(ctx: Bench, name: str, per: int, total: int, target: float) -> list[Result]:
    url, schemas = pg_url(ctx), schemas_of(ctx)
    batches = batches_of(total, per, max(1, min(500, total // per)))
    try:
        ours, raw = ctx.alternate(
            lambda: ctx.run(ours_appends, url, schemas.new("o"), batches),
            lambda: ctx.run(lambda: raw_appends_fresh(schemas, batches)),
        )
    finally:
        ctx.run(schemas.drop_all)
    what = "1 event per append" if per == 1 else f"{per} events per append"
    raw_how = "one INSERT per transaction (autocommit)" if per == 1 else f"COPY {per} rows per transaction"
    return [Result(name, f"{what}, each committed", "events/s", ours, raw, target, note=f"raw asyncpg: {raw_how}")]


async def raw_appends_fresh(schemas: Schemas, batches: list[tuple[str, list[SignalDetected]]]) -> float:
    return await raw_appends(schemas.url, await schemas.raw("r"), batches)


def skipped(ctx: Bench, name: str) -> bool:
    if pg_url(ctx):
        return False
    ctx.log(f"{name}: skipped (no --postgres URL or $EVENTSTORE_BENCH_POSTGRES_URL)")
    return True


@section("pg_single", "PostgreSQL: single-event appends vs raw asyncpg (needs --postgres; >= 0.5x)")
def pg_single(ctx: Bench) -> list[Result]:
    if skipped(ctx, "pg_single"):
        return []
    return append_results(ctx, "pg_single", 1, ctx.size(2_000, 300), 0.5)


@section("pg_batch1000", "PostgreSQL: appends of 1000 events vs raw COPY 1000/txn (needs --postgres; >= 0.5x)")
def pg_batch1000(ctx: Bench) -> list[Result]:
    if skipped(ctx, "pg_batch1000"):
        return []
    return append_results(ctx, "pg_batch1000", 1000, ctx.size(50_000, 5_000), 0.5)


# -- 4 writer processes -------------------------------------------------------------------


def writer_child(side: str, url: str, schema: str, index: int, total: int, per: int) -> dict[str, float]:
    """A child process: append ``total`` events in batches of ``per`` to its own 10 streams after "go"."""
    batches = batches_of(total, per, 10, offset=index * 1000)

    async def go() -> tuple[float, float]:
        log: EventStore | None = None
        conn: Any = None
        if side == "ours":
            log = await open_store(url, schema=schema, actor=f"writer-{index}").open()
            await log.head_position()  # connected and warm
        else:
            conn = await asyncpg.connect(url, server_settings={"search_path": schema})
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        started = time.time()
        versions: dict[str, int] = {}
        try:
            for stream, events in batches:
                if log is not None:
                    await log.append(stream, events)
                    continue
                version = versions.get(stream, 0)
                rows = [r[1:] for r in raw_rows(0, events, stream, version)]
                async with conn.transaction():
                    if side == "raw-lock":
                        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                    await conn.copy_records_to_table("events", records=rows, columns=RAW_COLUMNS[1:])
                versions[stream] = version + len(rows)
            return started, time.time()
        finally:
            if log is not None:
                await log.aclose()
            if conn is not None:
                await conn.close()

    started, ended = anyio.run(go, backend="asyncio")
    return {"started": started, "ended": ended, "events": float(total)}


def run_writers(url: str, side: str, schema: str, writers: int, per_writer: int, per: int) -> float:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child-writer", side, url, schema, str(i), str(per_writer), str(per)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"writer child ({side}) did not start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode:
                raise RuntimeError(f"writer child ({side}) failed with exit code {proc.returncode}")
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    span = max(float(r["ended"]) for r in reports) - min(float(r["started"]) for r in reports)
    return sum(float(r["events"]) for r in reports) / span


@section(
    "pg_writers4", "PostgreSQL: 4 writer processes x batches of 100 vs raw (needs --postgres; >= 0.6x no-lock raw)"
)
def pg_writers4(ctx: Bench) -> list[Result]:
    if skipped(ctx, "pg_writers4"):
        return []
    url, schemas = pg_url(ctx), schemas_of(ctx)
    writers, per_writer, per = 4, ctx.size(10_000, 1_000), 100

    def ours() -> float:
        schema = schemas.new("o")

        async def create() -> None:
            async with open_store(url, schema=schema):  # migrations done before the writers start
                pass

        ctx.run(create)
        return run_writers(url, "ours", schema, writers, per_writer, per)

    def raw(lock: bool) -> Callable[[], float]:
        def measure() -> float:
            schema = ctx.run(schemas.raw, "r", RAW_TABLE_SEQ)
            return run_writers(url, "raw-lock" if lock else "raw", schema, writers, per_writer, per)

        return measure

    try:
        ours_rate, raw_rate, raw_lock_rate = ctx.alternate(ours, raw(False), raw(True))
    finally:
        ctx.run(schemas.drop_all)
    what = f"{writers} processes x {per_writer:,} events, {per} per append"
    return [
        Result(
            "pg_writers4",
            f"{what} vs raw, no ordering lock",
            "events/s",
            ours_rate,
            raw_rate,
            0.6,
            note="raw: COPY 100 rows per transaction, positions from a sequence (not gap-safe for readers)",
        ),
        Result(
            "pg_writers4",
            "  same, vs raw with LOCK TABLE ... EXCLUSIVE",
            "events/s",
            ours_rate,
            raw_lock_rate,
            note="raw: the same with LOCK TABLE events IN EXCLUSIVE MODE first in each transaction (gap-safe)",
        ),
    ]


# -- replay ------------------------------------------------------------------------------


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(size, count - start)


async def fill_replay(url: str, schema: str, count: int) -> None:
    async with open_store(url, schema=schema, actor="bench") as log:
        for start, n in chunks(count, 10_000):
            requests = [
                AppendRequest(
                    stream=f"company:acme-{(start + s) // 100:06d}.ai",
                    events=make_events(start + s, min(100, n - s), f"acme-{(start + s) // 100}"),
                )
                for s in range(0, n, 100)
            ]
            await log.append_batch(requests)


async def ours_replay(url: str, schema: str) -> tuple[int, float]:
    async with open_store(url, schema=schema) as log:
        count = 0
        started = time.perf_counter()
        async for _event in log.read_all():
            count += 1
        return count, count / (time.perf_counter() - started)


async def raw_replay(url: str, schema: str) -> tuple[int, float]:
    """Fetch every event through a server-side cursor (2000 rows a round trip) and decode data and metadata."""
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        count = 0
        started = time.perf_counter()
        async with conn.transaction():
            async for row in conn.cursor(RAW_SELECT, prefetch=2000):
                _decode_any(row[4])
                _decode_meta(row[5])
                count += 1
        return count, count / (time.perf_counter() - started)
    finally:
        await conn.close()


@section(
    "pg_replay", "PostgreSQL: read_all of --events events with decoding vs raw fetch+decode (needs --postgres; >= 0.6x)"
)
def pg_replay(ctx: Bench) -> list[Result]:
    if skipped(ctx, "pg_replay"):
        return []
    url, schemas = pg_url(ctx), schemas_of(ctx)
    count = ctx.size(ctx.args.events, 20_000)
    schema = schemas.new("replay")
    try:
        started = time.perf_counter()
        ctx.run(fill_replay, url, schema, count)
        ctx.log(f"pg_replay: {count:,} events appended in {time.perf_counter() - started:.1f}s")
        seen: list[int] = []

        def measure(fn: Callable[[str, str], Any]) -> Callable[[], float]:
            def once() -> float:
                n, rate = ctx.run(fn, url, schema)
                seen.append(n)
                return float(rate)

            return once

        ours, raw = ctx.alternate(measure(ours_replay), measure(raw_replay))
        if any(n != count for n in seen):
            raise RuntimeError(f"pg_replay read {seen} events, expected {count}")
    finally:
        ctx.run(schemas.drop_all)
    return [
        Result(
            "pg_replay",
            f"read_all of {count:,} events, decoded",
            "events/s",
            ours,
            raw,
            0.6,
            note="both read our events table; raw: server-side cursor, prefetch 2000, msgspec decode of data "
            "and metadata; ours: read_all pages of 2000 into RecordedEvents",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child-writer":
        side, url, schema, index, total, per = sys.argv[2:8]
        print(json.dumps(writer_child(side, url, schema, int(index), int(total), int(per))))
    else:
        sys.exit("usage: run scripts/bench.py; this module holds some of its sections")
