"""Benchmark: our event log against the raw ``sqlite3`` module, in one run.

    .venv/bin/python scripts/bench.py                 # everything (read_all over 1M events)
    .venv/bin/python scripts/bench.py --quick         # a small smoke run
    .venv/bin/python scripts/bench.py --only single,batch100 --json

Every section measures both sides in the same run (alternating repetitions,
median taken) and reports the ratio ours/raw beside its target (issue 2,
point 8). The raw side is the physical limit, not a copy of our schema: the
bare table ``events(position INTEGER PRIMARY KEY, stream, version, type, data,
metadata, recorded_at, UNIQUE(stream, version))`` written with plain
``sqlite3`` and the same pragmas, holding the same ``SignalDetected`` payloads
(encoded with msgspec inside the timed loop) and similar metadata bytes.

Adding a section: write ``def my_section(ctx: Bench) -> list[Result]`` and
decorate it with ``@section("name", "what it measures")``. Sections are sync;
run our async API with ``ctx.run(async_fn, ...)`` (a fresh event loop each
time), keep databases under ``ctx.tmp`` and sizes under ``ctx.size(full, quick)``
so that ``--quick`` stays quick. Other modules can register sections by
importing ``section`` from here before calling :func:`main`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore import AppendRequest, EventStore, SignalDetected, open_store
from eventstore.codec import new_event_id

P = ParamSpec("P")
T = TypeVar("T")

RAW_SCHEMA = """CREATE TABLE events (
    position INTEGER PRIMARY KEY, stream TEXT, version INTEGER, type TEXT,
    data BLOB, metadata BLOB, recorded_at TEXT, UNIQUE(stream, version))"""
# The same bare table plus what our schema adds: a UNIQUE 16-byte event_id and a 32-byte hash.
RAW_SCHEMA_LIKE_OURS = """CREATE TABLE events (
    position INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, stream TEXT, version INTEGER, type TEXT,
    data BLOB, metadata BLOB, recorded_at TEXT, hash BLOB, UNIQUE(stream, version))"""
RAW_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)"
RAW_INSERT_LIKE_OURS = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
RAW_SELECT = "SELECT position, stream, version, type, data, metadata, recorded_at FROM events ORDER BY position"
CACHE_KIB = 16_384  # the backend's default cache_size
BASE_TIME = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
RAW_DATA = {
    "repo": "acme-ai/inference-server",
    "stars": 1834,
    "stars_delta_7d": 412,
    "forks": 97,
    "language": "Python",
    "topics": ["llm", "inference", "gpu", "serving"],
    "description": "Batched LLM inference server",
}

_encode = msgspec.json.encode
_decode_event = msgspec.json.Decoder(SignalDetected).decode
_decode_meta = msgspec.json.Decoder(dict[str, Any]).decode


# -- results and the section registry ---------------------------------------


@dataclass
class Result:
    """One line of the table: ``ours`` against ``raw`` (same unit), and the target for ours/raw."""

    section: str
    measure: str
    unit: str
    ours: float
    raw: float
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.raw if self.raw else float("nan")

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}


@dataclass
class Section:
    name: str
    help: str
    fn: Callable[[Bench], list[Result]]


SECTIONS: dict[str, Section] = {}


def section(name: str, help: str) -> Callable[[Callable[[Bench], list[Result]]], Callable[[Bench], list[Result]]]:
    """Register a benchmark section (run in registration order)."""

    def register(fn: Callable[[Bench], list[Result]]) -> Callable[[Bench], list[Result]]:
        SECTIONS[name] = Section(name, help, fn)
        return fn

    return register


@dataclass
class Bench:
    """What a section gets: options, a temp dir, helpers, and a cache shared between sections."""

    args: argparse.Namespace
    tmp: Path
    shared: dict[str, Any] = field(default_factory=dict)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def synchronous(self) -> str:
        return str(self.args.synchronous)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def reps(self) -> int:
        return int(self.args.reps or self.size(5, 2))

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def path(self, stem: str) -> Path:
        """A fresh database path under the temp dir."""
        return self.tmp / f"{stem}-{next(self._counter)}.db"

    def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        async def call() -> T:
            return await fn(*args, **kwargs)

        return anyio.run(call, backend="asyncio")

    def store(self, path: Path) -> EventStore:
        return open_store(str(path), synchronous=self.synchronous, actor="bench")

    def raw_connect(self, path: Path, schema: str = RAW_SCHEMA) -> sqlite3.Connection:
        """Plain sqlite3 with the pragmas our backend sets; creates the schema if the file is new."""
        new = not path.exists()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if new:
            conn.execute(schema)
        return conn

    def alternate(self, ours: Callable[[], float], *raws: Callable[[], float]) -> list[float]:
        """Median of ``reps`` runs of each measurement, interleaved so noise hits all sides alike."""
        samples: list[list[float]] = [[] for _ in range(1 + len(raws))]
        for _ in range(self.reps):
            for index, fn in enumerate((ours, *raws)):
                samples[index].append(fn())
        return [statistics.median(s) for s in samples]


# -- payloads -----------------------------------------------------------------


def make_events(start: int, count: int, key: str) -> list[SignalDetected]:
    """Distinct detections (distinct deterministic ids): ~400 bytes of data, ~560-byte rows."""
    return [
        SignalDetected(
            signal_type="github_stars_spike",
            source_api="github",
            canonical_key=key,
            company_name="Acme AI Inference Ltd",
            confidence=0.87,
            raw_data=RAW_DATA,
            detected_at=BASE_TIME + dt.timedelta(microseconds=start + i),
        )
        for i in range(count)
    ]


def raw_metadata() -> bytes:
    """What our metadata looks like: actor, a fresh correlation id, no causation id."""
    return _encode({"actor": "bench", "causation_id": None, "correlation_id": str(uuid.uuid4())})


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class RawWriter:
    """Raw sqlite3 appends: Python keeps head position and stream versions, as an app would."""

    def __init__(self, conn: sqlite3.Connection, like_ours: bool = False, count: int = 0) -> None:
        self.conn = conn
        self.like_ours = like_ours
        # Our schema's extra columns, made before the clock starts: this variant
        # measures what the extra index and bytes cost SQLite, not Python.
        self.extras = iter([(new_event_id().bytes, hashlib.sha256(os.urandom(8)).digest()) for _ in range(count)])
        self.position = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        self.versions: dict[str, int] = {}

    def rows(self, stream: str, events: Sequence[SignalDetected]) -> list[tuple[Any, ...]]:
        meta, when = raw_metadata(), now_text()
        version = self.versions.get(stream, 0)
        rows: list[tuple[Any, ...]] = []
        for event in events:
            self.position += 1
            version += 1
            data = _encode(event)
            if self.like_ours:
                event_id, digest = next(self.extras)
                rows.append((self.position, event_id, stream, version, "SignalDetected", data, meta, when, digest))
            else:
                rows.append((self.position, stream, version, "SignalDetected", data, meta, when))
        self.versions[stream] = version
        return rows

    def append(self, stream: str, events: Sequence[SignalDetected]) -> None:
        """One committed transaction."""
        rows = self.rows(stream, events)
        insert = RAW_INSERT_LIKE_OURS if self.like_ours else RAW_INSERT
        self.conn.execute("BEGIN")
        if len(rows) == 1:
            self.conn.execute(insert, rows[0])
        else:
            self.conn.executemany(insert, rows)
        self.conn.execute("COMMIT")


def stream_of(index: int) -> str:
    return f"company:acme-{index:06d}.ai"


# -- write sections ---------------------------------------------------------------


def time_ours_appends(ctx: Bench, batches: list[tuple[str, list[SignalDetected]]]) -> float:
    """Events/s appending ``batches`` (one append each, sequentially) to a fresh store."""

    async def go() -> float:
        async with ctx.store(ctx.path("ours")) as log:
            started = time.perf_counter()
            for stream, events in batches:
                await log.append(stream, events)
            elapsed = time.perf_counter() - started
        return sum(len(e) for _, e in batches) / elapsed

    return ctx.run(go)


def time_raw_appends(ctx: Bench, batches: list[tuple[str, list[SignalDetected]]], like_ours: bool = False) -> float:
    conn = ctx.raw_connect(ctx.path("raw"), RAW_SCHEMA_LIKE_OURS if like_ours else RAW_SCHEMA)
    writer = RawWriter(conn, like_ours, sum(len(e) for _, e in batches) if like_ours else 0)
    try:
        started = time.perf_counter()
        for stream, events in batches:
            writer.append(stream, events)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return sum(len(e) for _, e in batches) / elapsed


def append_section(ctx: Bench, name: str, per_append: int, total: int, target: float) -> list[Result]:
    streams = max(1, min(500, total // per_append))
    batches = [
        (stream_of(i % streams), make_events(i * per_append, per_append, f"acme-{i % streams:06d}.ai"))
        for i in range(total // per_append)
    ]
    ours, raw, raw_like = ctx.alternate(
        lambda: time_ours_appends(ctx, batches),
        lambda: time_raw_appends(ctx, batches),
        lambda: time_raw_appends(ctx, batches, like_ours=True),
    )
    what = "1 event per append" if per_append == 1 else f"{per_append} events per append"
    return [
        Result(name, f"{what}, each committed", "events/s", ours, raw, target),
        Result(
            name,
            "  raw sqlite3 on our schema shape",
            "events/s",
            raw_like,
            raw,
            note="'ours' column = raw sqlite3 plus a UNIQUE time-ordered 16-byte event_id and a 32-byte hash "
            "(made before timing): the storage cost of our schema",
        ),
    ]


@section("single", "single-event appends, each committed (target >= 0.5x raw)")
def single(ctx: Bench) -> list[Result]:
    return append_section(ctx, "single", 1, ctx.size(3_000, 500), 0.5)


@section("batch100", "appends of 100 events per transaction (target >= 0.7x raw)")
def batch100(ctx: Bench) -> list[Result]:
    return append_section(ctx, "batch100", 100, ctx.size(30_000, 5_000), 0.7)


@section("batch1000", "appends of 1000 events per transaction (target >= 0.7x raw)")
def batch1000(ctx: Bench) -> list[Result]:
    return append_section(ctx, "batch1000", 1000, ctx.size(60_000, 10_000), 0.7)


@section("concurrent16", "16 asyncio tasks appending single events vs raw single (target >= 1x)")
def concurrent16(ctx: Bench) -> list[Result]:
    tasks, per_task = 16, ctx.size(300, 40)
    work = [make_events(t * per_task, per_task, f"acme-{t:06d}.ai") for t in range(tasks)]
    singles = [(stream_of(t), [e]) for t in range(tasks) for e in work[t]]

    def ours() -> float:
        async def writer(log: EventStore, t: int) -> None:
            for event in work[t]:
                await log.append(stream_of(t), [event])

        async def go() -> float:
            async with ctx.store(ctx.path("ours")) as log:
                started = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for t in range(tasks):
                        group.start_soon(writer, log, t)
                elapsed = time.perf_counter() - started
            return tasks * per_task / elapsed

        return ctx.run(go)

    ours_rate, raw_rate = ctx.alternate(ours, lambda: time_raw_appends(ctx, singles))
    return [Result("concurrent16", "16 tasks x single appends vs raw single", "events/s", ours_rate, raw_rate, 1.0)]


# -- read_all and disk -----------------------------------------------------------


def populate(ctx: Bench, count: int) -> tuple[Path, Path]:
    """Ours and raw databases holding ``count`` events (streams of 100), built once per run."""
    cached = ctx.shared.get("populated")
    if cached is not None and cached[0] >= count:
        return cached[1], cached[2]
    ours_path, raw_path = ctx.path("ours-populated"), ctx.path("raw-populated")
    per_stream, chunk = 100, 10_000

    async def fill_ours() -> None:
        async with ctx.store(ours_path) as log:
            for start in range(0, count, chunk):
                n = min(chunk, count - start)
                requests = [
                    AppendRequest(
                        stream=stream_of((start + s) // per_stream),
                        events=make_events(start + s, min(per_stream, n - s), f"acme-{(start + s) // per_stream}.ai"),
                    )
                    for s in range(0, n, per_stream)
                ]
                await log.append_batch(requests)

    started = time.perf_counter()
    ctx.run(fill_ours)
    conn = ctx.raw_connect(raw_path)
    writer = RawWriter(conn)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        conn.execute("BEGIN")
        for s in range(0, n, per_stream):
            events = make_events(start + s, min(per_stream, n - s), f"acme-{(start + s) // per_stream}.ai")
            conn.executemany(RAW_INSERT, writer.rows(stream_of((start + s) // per_stream), events))
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    ctx.log(f"populated {count:,} events per side in {time.perf_counter() - started:.1f}s")
    ctx.shared["populated"] = (count, ours_path, raw_path)
    return ours_path, raw_path


def read_child(side: str, path: str) -> dict[str, float]:
    """Runs in a subprocess: read every event with decoding; report time, count and peak RSS."""
    count, base = 0, [0.0]
    if side == "ours":

        async def go() -> tuple[int, float]:
            n = 0
            async with open_store(path) as log:
                base[0] = _maxrss_mib()
                started = time.perf_counter()
                async for _event in log.read_all():
                    n += 1
                return n, time.perf_counter() - started

        count, elapsed = anyio.run(go, backend="asyncio")
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        base[0] = _maxrss_mib()
        started = time.perf_counter()
        for _position, _stream, _version, _type, data, metadata, _recorded_at in conn.execute(RAW_SELECT):
            _decode_event(data)
            _decode_meta(metadata)
            count += 1
        elapsed = time.perf_counter() - started
        conn.close()
    peak = _maxrss_mib()
    rate = count / elapsed
    return {"count": count, "seconds": elapsed, "rate": rate, "maxrss_mib": peak, "growth_mib": peak - base[0]}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(side: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-read", side, str(path)], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@section("read_all", "read_all of --events events with decoding, each side in a subprocess (>= 0.6x raw)")
def read_all(ctx: Bench) -> list[Result]:
    count = ctx.size(ctx.args.events, 20_000)
    ours_path, raw_path = populate(ctx, count)
    reps = int(ctx.args.reps or ctx.size(3, 1))
    ours_runs, raw_runs = [], []
    for _ in range(reps):
        ours_runs.append(run_child("ours", ours_path))
        raw_runs.append(run_child("raw", raw_path))
    for runs in (ours_runs, raw_runs):
        if any(r["count"] != count for r in runs):
            raise RuntimeError(f"read_all returned {[r['count'] for r in runs]} events, expected {count}")
    ours_rate = statistics.median(r["rate"] for r in ours_runs)
    raw_rate = statistics.median(r["rate"] for r in raw_runs)
    ours_rss = max(r["maxrss_mib"] for r in ours_runs)
    raw_rss = max(r["maxrss_mib"] for r in raw_runs)
    ours_growth = max(r["growth_mib"] for r in ours_runs)
    raw_growth = max(r["growth_mib"] for r in raw_runs)
    return [
        Result("read_all", f"read_all of {count:,} events, decoded", "events/s", ours_rate, raw_rate, 0.6),
        Result(
            "read_all",
            "  peak RSS of the reading process",
            "MiB",
            ours_rss,
            raw_rss,
            higher_is_better=False,
            note="both children import the same modules (this script); "
            f"peak growth during the read: ours {ours_growth:.1f} MiB, raw {raw_growth:.1f} MiB",
        ),
    ]


def bytes_per_event(path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    return float(pages * page_size / count)


@section("disk", "database bytes per event after VACUUM (target <= 1.2x raw)")
def disk(ctx: Bench) -> list[Result]:
    cached = ctx.shared.get("populated")
    count = cached[0] if cached else ctx.size(100_000, 10_000)
    ours_path, raw_path = populate(ctx, count)
    ours, raw = bytes_per_event(ours_path), bytes_per_event(raw_path)
    conn = sqlite3.connect(raw_path)
    row = conn.execute("SELECT avg(length(stream) + length(type) + length(data) + length(metadata)) FROM events")
    payload = row.fetchone()[0]
    conn.close()
    return [
        Result(
            "disk",
            f"bytes per event ({count:,} events)",
            "bytes",
            ours,
            raw,
            1.2,
            higher_is_better=False,
            note=f"raw payload (stream+type+data+metadata) {payload:.0f} bytes",
        )
    ]


# -- output and the command line ------------------------------------------------------


def print_table(results: list[Result], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header, title_justify="left")
    for name, justify in (
        ("section", "left"),
        ("measure", "left"),
        ("unit", "left"),
        ("ours", "right"),
        ("raw", "right"),
        ("ours/raw", "right"),
        ("target", "right"),
        ("", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        target = "" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + f"{r.target:g}×"
        mark = {True: "[green]pass[/]", False: "[red]MISS[/]", None: ""}[r.passed]
        table.add_row(r.section, r.measure, r.unit, f"{r.ours:,.0f}", f"{r.raw:,.0f}", f"{r.ratio:.2f}×", target, mark)
    console = Console(width=max(140, Console().width))
    console.print(table)
    for r in results:
        if r.note:
            console.print(f"  [dim]{r.section} / {r.measure.strip()}: {r.note}[/]")


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "synchronous": args.synchronous,
        "quick": bool(args.quick),
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the read_all test (default 1M)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 repetitions: a smoke run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections to run (of: {', '.join(SECTIONS)}); default all"
    )
    parser.add_argument("--reps", type=int, default=0, help="repetitions per measurement (median taken)")
    parser.add_argument("--synchronous", default="NORMAL", choices=("NORMAL", "FULL"), type=str.upper)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the databases")
    parser.add_argument("--child-read", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("EVENTSTORE_BENCH_POSTGRES_URL", ""),
        help="PostgreSQL URL for the pg_* sections (default $EVENTSTORE_BENCH_POSTGRES_URL; none: skipped)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.child_read:
        print(json.dumps(read_child(*args.child_read)))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="eventstore-bench-"))
    ctx = Bench(args, tmp)
    results: list[Result] = []
    try:
        for name in names:
            started = time.perf_counter()
            results += SECTIONS[name].fn(ctx)
            ctx.log(f"{name}: {time.perf_counter() - started:.1f}s")
    finally:
        if args.keep:
            ctx.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    env = environment(args)
    if args.json:
        print(json.dumps({"environment": env, "results": [r.as_dict() for r in results]}, indent=2))
    else:
        header = ", ".join(f"{k} {v}" for k, v in env.items())
        print_table(results, f"eventstore vs raw sqlite3 ({header})")
    return 0


# More sections live in sibling modules (facade/projections/audit, PostgreSQL) that do
# `from bench import section, ...`. Run as a script this module is __main__; the alias
# makes that import return this very module (one SECTIONS), not a fresh second copy.
sys.modules.setdefault("bench", sys.modules[__name__])
import bench_facade  # noqa: E402, F401  (registers its sections)
import bench_postgres  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
