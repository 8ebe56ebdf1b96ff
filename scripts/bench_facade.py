"""Benchmark sections for the facade, the projections and the audit queries (issues 3 and 4).

Registered into ``scripts/bench.py``'s section table: bench.py imports this
module at the end of its own body, after aliasing itself as ``bench`` in
``sys.modules``, so ``from bench import ...`` below gets the running module
(``__main__`` when run as a script), never a second copy with its own registry.

The store under test is built by :func:`signal_log`: ``--events`` events (1M by
default, 20k with ``--quick``) in runs of 10 per company (8 ``SignalDetected``,
a push or a reject of the run's first detection, a ``SuppressionSynced``), 100
events per company spread over the log, appended through our API in batches of
10,000, then every projection built. ``rebuild`` measures both sides in child
processes (peak RSS); ``queries`` and ``audit`` time single calls (p50/p99).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    BASE_TIME,
    CACHE_KIB,
    RAW_DATA,
    RAW_INSERT_LIKE_OURS,
    RAW_SCHEMA_LIKE_OURS,
    Bench,
    Result,
    raw_metadata,
    section,
)

from eventstore import AppendRequest, open_store, signal_store
from eventstore.codec import from_micros, new_event_id_bytes
from eventstore.events import (
    SignalDetected,
    SignalEvent,
    SignalPushed,
    SignalRejected,
    SuppressionSynced,
    company_stream,
)
from projections import BUILTIN_PROJECTIONS, ProjectionRunner, iso, json_text
from projections.base import Projection
from projections.search import SearchProjection, default_projections, raw_text

RUN = 10  # events per company run: 8 detections, a push or reject, a suppression sync
PER_COMPANY = 100  # events per company (10 runs spread over the log)
APPEND_CHUNK = 10_000
PAGE = 2_000  # events per transaction on the raw rebuild side: the runner's batch_size
FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)

_decode_any = msgspec.json.Decoder(SignalEvent).decode
_decode_meta = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode


@dataclass
class Limit(Result):
    """A line with an absolute limit on ``ours`` (``raw`` is shown beside it, for scale)."""

    limit: float | None = None

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        return self.ours <= self.limit


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def key_of(company: int) -> str:
    return f"domain:acme-{company:06d}.ai"


# -- the 1M-event store ----------------------------------------------------------


def run_events(run: int, companies: int, first_position: int, index: int) -> tuple[str, list[SignalEvent]]:
    """The 10 events of company run ``run`` (global event index ``index``), the first at ``first_position``."""
    company = run % companies
    key = key_of(company)
    events: list[SignalEvent] = [
        SignalDetected(
            signal_type=("github_stars_spike", "sec_form_d", "hiring_spike")[(run + i) % 3],
            source_api=("github", "sec", "linkedin")[(run + i) % 3],
            canonical_key=key,
            company_name=f"Acme AI {company} Ltd",
            confidence=((run * 7 + i * 13) % 100) / 100,
            raw_data=RAW_DATA,
            detected_at=BASE_TIME + dt.timedelta(microseconds=index + i),
        )
        for i in range(RUN - 2)
    ]
    if run % 2:
        events.append(SignalPushed(signal_id=first_position, notion_page_id=f"page-{run}", metadata={"score": 0.9}))
    else:
        events.append(SignalRejected(signal_id=first_position, reason="below threshold", metadata={"score": 0.2}))
    expires = FAR_FUTURE if company % 2 else LONG_AGO  # half the companies live, half expired
    events.append(
        SuppressionSynced(canonical_key=key, notion_page_id=f"page-{company}", status="Tracked", expires_at=expires)
    )
    return company_stream(key), events


def signal_log(ctx: Bench) -> tuple[Path, int]:
    """A SQLite store of ``--events`` events with every projection live; built once per run."""
    count = ctx.size(ctx.args.events, 20_000) // PER_COMPANY * PER_COMPANY
    cached = ctx.shared.get("signal_log")
    if cached is not None and cached[1] == count:
        return Path(cached[0]), count
    path = ctx.path("signals-1m")
    companies = count // PER_COMPANY

    async def fill() -> None:
        async with open_store(str(path), synchronous=ctx.synchronous, actor="bench-collector") as log:
            runner = ProjectionRunner(log, default_projections())
            await runner.start(inline=True)  # projections applied in the append transactions
            for start in range(0, count, APPEND_CHUNK):
                requests = []
                for index in range(start, min(count, start + APPEND_CHUNK), RUN):
                    stream, events = run_events(index // RUN, companies, index + 1, index)
                    requests.append(AppendRequest(stream=stream, events=events))
                results = await log.append_batch(requests)
                if results[0].positions[0] != start + 1:
                    raise RuntimeError(f"expected position {start + 1}, got {results[0].positions[0]}")
            runner.stop_inline()

    started = time.perf_counter()
    ctx.run(fill)
    ctx.log(f"built a {count:,}-event signal store with projections in {time.perf_counter() - started:.1f}s")
    ctx.shared["signal_log"] = (str(path), count)
    return path, count


def detection_ids(count: int, rng: random.Random, n: int) -> list[int]:
    """Positions of ``n`` random SignalDetected events in a store made by :func:`signal_log`."""
    return [rng.randrange(count // RUN) * RUN + rng.randrange(RUN - 2) + 1 for _ in range(n)]


# -- (a) save_signal with the projections applied ---------------------------------------------


RAW_TABLES = {"signals": "signals", "processing": "processing", "suppression": "suppression", "search": "search"}


def raw_projection_schema(conn: sqlite3.Connection, tables: dict[str, str]) -> None:
    """The read tables (same columns and indexes as ours) and a checkpoint table, under ``tables`` names."""
    projections: list[Projection] = [*BUILTIN_PROJECTIONS(), SearchProjection()]
    for projection in projections:
        for ddl in projection.schema({t: tables[t] for t in projection.tables}, "sqlite"):
            conn.execute(ddl)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS raw_state (name TEXT NOT NULL, generation INTEGER NOT NULL, "
        "checkpoint INTEGER NOT NULL, PRIMARY KEY (name, generation))"
    )
    conn.executemany("INSERT OR REPLACE INTO raw_state VALUES (?, 1, 0)", [(p.name,) for p in projections])


RAW_CHECKPOINT = "UPDATE raw_state SET checkpoint = ? WHERE name = ? AND generation = 1 AND checkpoint = ?"


def signal_args(i: int) -> dict[str, Any]:
    return {
        "signal_type": "github_stars_spike",
        "source_api": "github",
        "canonical_key": key_of(i % 500),
        "company_name": f"Acme AI {i % 500} Ltd",
        "confidence": 0.87,
        "raw_data": RAW_DATA,
        "detected_at": BASE_TIME + dt.timedelta(microseconds=i),
    }


def time_ours_save(ctx: Bench, calls: list[dict[str, Any]]) -> float:
    async def go() -> float:
        async with signal_store(str(ctx.path("facade")), actor="bench", synchronous=ctx.synchronous) as store:
            started = time.perf_counter()
            for call in calls:
                await store.save_signal(**call)
            elapsed = time.perf_counter() - started
            if (await store.get_processing_stats())["pending"] != len(calls):
                raise RuntimeError("save_signal: not every signal reached the processing table")
        return len(calls) / elapsed

    return ctx.run(go)


def time_raw_save(ctx: Bench, calls: list[dict[str, Any]]) -> float:
    """Per call, one transaction: the event row (our schema's shape), signals, processing and
    search rows, and the four checkpoints (suppression's advances past the event it ignores)."""
    conn = ctx.raw_connect(ctx.path("raw-facade"), RAW_SCHEMA_LIKE_OURS)
    raw_projection_schema(conn, RAW_TABLES)
    # Our schema's id and hash, made before the clock starts (as the log sections do).
    extras = [(new_event_id_bytes(), uuid.uuid4().bytes * 2) for _ in calls]
    names = ("signals", "processing", "suppression", "search")
    versions: dict[str, int] = {}
    try:
        started = time.perf_counter()
        for position, (call, (event_id, digest)) in enumerate(zip(calls, extras, strict=True), start=1):
            event = SignalDetected(**call)
            stream = company_stream(event.canonical_key)
            version = versions[stream] = versions.get(stream, 0) + 1
            meta = raw_metadata()
            now = dt.datetime.now(dt.UTC)
            recorded = iso(now)
            conn.execute("BEGIN")
            conn.execute(
                RAW_INSERT_LIKE_OURS,
                (position, event_id, stream, version, "SignalDetected", _encode(event), meta, recorded, digest),
            )
            conn.execute(
                "INSERT INTO signals (id, signal_type, source_api, canonical_key, company_name, confidence, "
                "raw_data, detected_at, recorded_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    position,
                    event.signal_type,
                    event.source_api,
                    event.canonical_key,
                    event.company_name,
                    event.confidence,
                    json_text(event.raw_data),
                    iso(event.detected_at),
                    recorded,
                    "bench",
                ),
            )
            conn.execute(
                "INSERT INTO processing (signal_id, status, metadata, confidence, signal_type, source_api) "
                "VALUES (?, 'pending', '{}', ?, ?, ?)",
                (position, event.confidence, event.signal_type, event.source_api),
            )
            conn.execute(
                "INSERT INTO search (signal_id, company_name, body) VALUES (?, ?, ?)",
                (position, event.company_name, raw_text(event.raw_data)),
            )
            conn.executemany(RAW_CHECKPOINT, [(position, name, position - 1) for name in names])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(calls) / elapsed


@section("save_signal", "facade save_signal, projections applied inline, vs raw sqlite3 (>= 0.5x)")
def save_signal(ctx: Bench) -> list[Result]:
    calls = [signal_args(i) for i in range(ctx.size(3_000, 400))]
    ours, raw = ctx.alternate(lambda: time_ours_save(ctx, calls), lambda: time_raw_save(ctx, calls))
    return [
        Result(
            "save_signal",
            "save_signal, one commit per call",
            "calls/s",
            ours,
            raw,
            0.5,
            note="both sides per call: event row (our schema's shape) + signals + processing + search (FTS5) rows "
            "+ 4 checkpoints, one transaction; the facade keeps search current inline too",
        )
    ]


# -- (b) rebuild, each side in a child process ---------------------------------------------------


def ours_rebuild(path: str, which: str, synchronous: str) -> int:
    names = ["search"] if which == "search" else ["signals", "processing", "suppression"]

    async def go() -> int:
        async with open_store(path, synchronous=synchronous) as log:
            runner = ProjectionRunner(log, default_projections())
            await runner.start(inline=False)  # already current: creates nothing, applies nothing
            await runner.rebuild(names)
            return await log.head_position()

    return anyio.run(go, backend="asyncio")


def raw_rebuild(path: str, which: str, synchronous: str) -> int:
    """One pass: page through the log, decode with msgspec, insert the read rows, commit every page."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    tables = {name: f"raw_{name}" for name in RAW_TABLES}
    conn.execute("BEGIN")
    for table in tables.values():
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    raw_projection_schema(conn, tables)
    conn.execute("COMMIT")
    search = which == "search"
    names = ("search",) if search else ("signals", "processing", "suppression")
    ins_signal = (
        f"INSERT INTO {tables['signals']} (id, signal_type, source_api, canonical_key, company_name, confidence, "
        "raw_data, detected_at, recorded_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    ins_pending = (
        f"INSERT INTO {tables['processing']} (signal_id, status, metadata, confidence, signal_type, source_api) "
        "VALUES (?, 'pending', '{}', ?, ?, ?)"
    )
    upd_processed = (
        f"UPDATE {tables['processing']} SET status = ?, notion_page_id = ?, rejection_reason = ?, metadata = ?, "
        "processed_at = ?, processed_by = ? WHERE signal_id = ?"
    )
    upsert_suppression = (
        f"INSERT INTO {tables['suppression']} (canonical_key, notion_page_id, status, expires_at, cached_at, position) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (canonical_key) DO UPDATE SET notion_page_id = excluded.notion_page_id, "
        "status = excluded.status, expires_at = excluded.expires_at, cached_at = excluded.cached_at, "
        "position = excluded.position"
    )
    ins_search = f"INSERT INTO {tables['search']} (signal_id, company_name, body) VALUES (?, ?, ?)"
    position, read = 0, 0
    while True:
        rows = conn.execute(
            "SELECT position, data, metadata, recorded_at FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (position, PAGE),
        ).fetchall()
        if not rows:
            break
        conn.execute("BEGIN")
        for position, data, metadata, recorded_at in rows:
            event = _decode_any(data)
            if search:
                if type(event) is SignalDetected:
                    conn.execute(ins_search, (position, event.company_name, raw_text(event.raw_data)))
                continue
            actor = _decode_meta(metadata).get("actor")
            recorded = iso(from_micros(recorded_at))
            if type(event) is SignalDetected:
                conn.execute(
                    ins_signal,
                    (
                        position,
                        event.signal_type,
                        event.source_api,
                        event.canonical_key,
                        event.company_name,
                        event.confidence,
                        json_text(event.raw_data),
                        iso(event.detected_at),
                        recorded,
                        actor,
                    ),
                )
                conn.execute(ins_pending, (position, event.confidence, event.signal_type, event.source_api))
            elif type(event) is SignalPushed:
                conn.execute(
                    upd_processed,
                    ("pushed", event.notion_page_id, None, json_text(event.metadata), recorded, actor, event.signal_id),
                )
            elif type(event) is SignalRejected:
                conn.execute(
                    upd_processed,
                    ("rejected", None, event.reason, json_text(event.metadata), recorded, actor, event.signal_id),
                )
            elif type(event) is SuppressionSynced:
                conn.execute(
                    upsert_suppression,
                    (
                        event.canonical_key,
                        event.notion_page_id,
                        event.status,
                        iso(event.expires_at),
                        recorded,
                        position,
                    ),
                )
        conn.executemany(RAW_CHECKPOINT, [(position, name, position - len(rows)) for name in names])
        conn.execute("COMMIT")
        read += len(rows)
    conn.close()
    return read


def rebuild_child(side: str, which: str, path: str, synchronous: str) -> dict[str, float]:
    base = _maxrss_mib()
    started = time.perf_counter()
    count = (ours_rebuild if side == "ours" else raw_rebuild)(path, which, synchronous)
    elapsed = time.perf_counter() - started
    peak = _maxrss_mib()
    return {"count": count, "seconds": elapsed, "rate": count / elapsed, "maxrss_mib": peak, "growth_mib": peak - base}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_rebuild_child(side: str, which: str, path: Path, synchronous: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-rebuild", side, which, str(path), synchronous],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@section("rebuild", "rebuild of the projections from --events events vs raw sqlite3, in child processes (>= 0.5x)")
def rebuild(ctx: Bench) -> list[Result]:
    path, count = signal_log(ctx)
    reps = int(ctx.args.reps or ctx.size(3, 1))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(reps):
        for which in ("builtin", "search"):
            for side in ("ours", "raw"):
                runs.setdefault((side, which), []).append(run_rebuild_child(side, which, path, ctx.synchronous))
    for key, measured in runs.items():
        if any(r["count"] != count for r in measured):
            raise RuntimeError(f"rebuild {key} read {[r['count'] for r in measured]} events, expected {count}")

    def rate(side: str, which: str) -> float:
        return statistics.median(r["rate"] for r in runs[side, which])

    def rss(side: str, which: str) -> float:
        return max(r["maxrss_mib"] for r in runs[side, which])

    def combined(side: str) -> float:
        return 1 / (1 / rate(side, "builtin") + 1 / rate(side, "search"))

    results: list[Result] = [
        Result(
            "rebuild",
            f"signals+processing+suppression, {count:,} events",
            "events/s",
            rate("ours", "builtin"),
            rate("raw", "builtin"),
            0.5,
        ),
        Result("rebuild", "search (FTS5), same events", "events/s", rate("ours", "search"), rate("raw", "search"), 0.5),
        Result("rebuild", "  all four (sum of the two times)", "events/s", combined("ours"), combined("raw"), 0.5),
    ]
    for which, label in (("builtin", "built-in three"), ("search", "search")):
        results.append(
            Limit(
                "rebuild",
                f"  peak RSS, {label} (limit 250 MiB)",
                "MiB",
                rss("ours", which),
                rss("raw", which),
                higher_is_better=False,
                limit=250.0,
                note=f"peak growth during the rebuild: ours {max(r['growth_mib'] for r in runs['ours', which]):.1f}"
                f" MiB, raw {max(r['growth_mib'] for r in runs['raw', which]):.1f} MiB; both children import the "
                "same modules",
            )
        )
    return results


# -- (c) query latency, and issue 4's audit latency ------------------------------------------------


def latencies(
    ctx: Bench,
    path: Path,
    ours_call: Callable[[Any, int], Any],
    raw_call: Callable[[sqlite3.Connection, int], Any],
    n: int,
) -> tuple[list[float], list[float]]:
    """Per round: ``n`` timed calls of ours (one open store), then ``n`` of raw sqlite3; µs samples per round."""

    def ours() -> list[float]:
        async def go() -> list[float]:
            samples = []
            async with signal_store(str(path), actor="bench", synchronous=ctx.synchronous) as store:
                for i in range(n // 10):  # warm up
                    await ours_call(store, i)
                for i in range(n):
                    started = time.perf_counter()
                    await ours_call(store, i)
                    samples.append((time.perf_counter() - started) * 1e6)
            return samples

        return ctx.run(go)

    def raw() -> list[float]:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        samples = []
        try:
            for i in range(n // 10):
                raw_call(conn, i)
            for i in range(n):
                started = time.perf_counter()
                raw_call(conn, i)
                samples.append((time.perf_counter() - started) * 1e6)
        finally:
            conn.close()
        return samples

    rounds = [(ours(), raw()) for _ in range(ctx.reps)]
    return [s for o, _ in rounds for s in o], [s for _, r in rounds for s in r]


def latency_results(
    name: str, what: str, ours: list[float], raw: list[float], n: int, limit_us: float, note: str = ""
) -> list[Result]:
    return [
        Limit(name, f"{what} p50", "µs", percentile(ours, 0.5), percentile(raw, 0.5), higher_is_better=False),
        Limit(
            name,
            f"{what} p99 (limit {limit_us:,.0f} µs)",
            "µs",
            percentile(ours, 0.99),
            percentile(raw, 0.99),
            higher_is_better=False,
            limit=limit_us,
            note=note,
        ),
    ]


@section("queries", "check_suppression and get_pending_signals(limit=50) latency on --events events (p99 <= 1/5 ms)")
def queries(ctx: Bench) -> list[Result]:
    path, count = signal_log(ctx)
    companies = count // PER_COMPANY
    n = ctx.size(3_000, 300)
    rng = random.Random(7)
    keys = [key_of(rng.randrange(companies)) for _ in range(n)]
    now = iso(dt.datetime.now(dt.UTC))
    suppression_sql = (
        "SELECT canonical_key, notion_page_id, status, expires_at, cached_at FROM suppression "
        "WHERE canonical_key = ? AND expires_at > ?"
    )
    pending_sql = (
        "SELECT s.id, s.signal_type, s.source_api, s.canonical_key, s.company_name, s.confidence, s.raw_data, "
        "s.detected_at, s.recorded_at, p.status, p.notion_page_id, p.rejection_reason, p.processed_at, p.metadata "
        "FROM signals s JOIN processing p ON p.signal_id = s.id WHERE p.status = 'pending' "
        "ORDER BY p.signal_id LIMIT ?"
    )
    sup_ours, sup_raw = latencies(
        ctx,
        path,
        lambda store, i: store.check_suppression(keys[i % n]),
        lambda conn, i: conn.execute(suppression_sql, (keys[i % n], now)).fetchall(),
        n,
    )
    pend_ours, pend_raw = latencies(
        ctx,
        path,
        lambda store, i: store.get_pending_signals(limit=50),
        lambda conn, i: conn.execute(pending_sql, (50,)).fetchall(),
        n,
    )
    return [
        *latency_results(
            "queries",
            "check_suppression",
            sup_ours,
            sup_raw,
            n,
            1_000,
            note="random keys over all companies (half live, half expired); raw = the same SELECT "
            "through sqlite3, rows fetched, no objects built",
        ),
        *latency_results(
            "queries",
            "get_pending_signals(limit=50)",
            pend_ours,
            pend_raw,
            n,
            5_000,
            note="raw = the same SELECT (signals JOIN processing) through sqlite3, no Signal objects",
        ),
    ]


@section("audit", "history(key) and why(signal_id) latency on --events events (p99 <= 50 ms)")
def audit_latency(ctx: Bench) -> list[Result]:
    path, count = signal_log(ctx)
    companies = count // PER_COMPANY
    n = ctx.size(500, 100)
    rng = random.Random(11)
    keys = [key_of(rng.randrange(companies)) for _ in range(n)]
    ids = detection_ids(count, rng, n)
    stream_sql = (
        "SELECT position, stream, version, type, data, metadata, recorded_at FROM events WHERE stream = ? "
        "ORDER BY version"
    )

    def raw_stream(conn: sqlite3.Connection, stream: str) -> int:
        rows = conn.execute(stream_sql, (stream,)).fetchall()
        for row in rows:
            _decode_any(row[4])
            _decode_meta(row[5])
        return len(rows)

    def raw_why(conn: sqlite3.Connection, i: int) -> int:
        (stream,) = conn.execute("SELECT stream FROM events WHERE position = ?", (ids[i % n],)).fetchone()
        return raw_stream(conn, stream)

    hist_ours, hist_raw = latencies(
        ctx,
        path,
        lambda store, i: store.history(keys[i % n]),
        lambda conn, i: raw_stream(conn, company_stream(keys[i % n])),
        n,
    )
    why_ours, why_raw = latencies(ctx, path, lambda store, i: store.why(ids[i % n]), raw_why, n)
    return [
        *latency_results(
            "audit",
            "history(canonical_key)",
            hist_ours,
            hist_raw,
            n,
            50_000,
            note=f"{PER_COMPANY} events per company in 10 runs spread over the log; raw = the stream's "
            "rows through sqlite3, data and metadata decoded with msgspec",
        ),
        *latency_results(
            "audit",
            "why(signal_id)",
            why_ours,
            why_raw,
            n,
            50_000,
            note="raw = look up the signal's stream, read and decode it",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child-rebuild":
        print(json.dumps(rebuild_child(*sys.argv[2:6])))
    else:
        sys.exit("usage: run scripts/bench.py; this module holds some of its sections")
