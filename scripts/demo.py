"""The main job: the whole signal pipeline on an embedded SQLite file.

Concurrent collectors append signals (with duplicates among them), a Notion
sync fills the suppression cache, a gate pushes or rejects what is pending,
then the store shows its statistics and one company's story. Deterministic
for a given seed: a simulated clock stamps every event.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from eventstore import SignalStore, SuppressionEntry, signal_store

console = Console()
SOURCES = {"github": ["github_spike", "new_repo", "contributor_surge"], "sec_edgar": ["form_d", "incorporation"]}
WORDS = [
    "acme",
    "nova",
    "quill",
    "lumen",
    "orbit",
    "vireo",
    "kestrel",
    "tandem",
    "ferro",
    "halcyon",
    "brisk",
    "umbra",
    "cobalt",
    "delta",
    "ember",
    "fathom",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kinetic",
    "lattice",
    "meridian",
    "nimbus",
]


class SimulatedClock:
    """Advances a little on every reading, so events get distinct, reproducible times."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(milliseconds=250)
        return self.now


def companies(rng: random.Random, count: int) -> list[tuple[str, str]]:
    if count > len(WORDS) ** 2:
        raise SystemExit(f"--companies can be at most {len(WORDS) ** 2}")
    names: set[str] = set()
    while len(names) < count:
        names.add(f"{rng.choice(WORDS)}{rng.choice(WORDS)}")
    return [(f"domain:{name}.ai", name.title() + " Inc") for name in sorted(names)]


async def collector(
    store: SignalStore,
    source: str,
    targets: Sequence[tuple[str, str]],
    rng: random.Random,
    start: dt.datetime,
    progress: Progress,
    task: object,
    stats: dict[str, int],
) -> None:
    """One collector: skips suppressed companies, saves what it detects (re-detections included)."""
    for index, (key, name) in enumerate(targets):
        if await store.check_suppression(key):
            stats["suppressed"] += 1
        else:
            detected_at = start - dt.timedelta(hours=1 + index % 24)
            signal = {
                "signal_type": rng.choice(SOURCES[source]),
                "source_api": source,
                "canonical_key": key,
                "company_name": name,
                "confidence": round(rng.uniform(0.2, 0.99), 2),
                "raw_data": {"score": rng.randint(1, 500), "note": f"{source} saw {name}"},
                "detected_at": detected_at,
            }
            run = f"{source}-{index}"  # correlation ids from the plan keep the output reproducible
            first = await store.save_signal(**signal, actor=f"{source}-collector", correlation_id=run)  # type: ignore[arg-type]
            if rng.random() < 0.25:  # the same detection again, as a retrying collector would send it
                again = await store.save_signal(**signal, actor=f"{source}-collector", correlation_id=run)  # type: ignore[arg-type]
                stats["duplicates"] += int(again == first)
            stats["saved"] += 1
        progress.advance(task)  # type: ignore[arg-type]
        await anyio.lowlevel.checkpoint()


async def run(db: Path, seed: int, company_count: int) -> None:
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 6, 8, 0, tzinfo=dt.UTC)
    known = companies(rng, company_count)
    console.rule(f"[bold]Signal pipeline demo[/] — {db} (seed {seed})")
    async with signal_store(str(db), clock=SimulatedClock(start), actor="demo") as store:
        # 1. Notion sync: a quarter of the companies are already in the CRM.
        in_notion = rng.sample(known, k=company_count // 4)
        entries = [
            SuppressionEntry(canonical_key=key, notion_page_id=f"notion-{i:04d}", status="In pipeline")
            for i, (key, _) in enumerate(in_notion)
        ]
        await store.update_suppression_cache(entries, ttl_days=7, actor="notion-sync", correlation_id="sync-1")
        console.print(f"Notion sync: {len(entries)} companies cached for 7 days")

        # 2. Collectors run concurrently, each over its own shuffled view of the market.
        stats = {"saved": 0, "duplicates": 0, "suppressed": 0}
        plans = {source: rng.sample(known, k=len(known)) for source in SOURCES}
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console) as progress:
            async with anyio.create_task_group() as tasks:
                for source, targets in plans.items():
                    task = progress.add_task(f"{source} collector", total=len(targets))
                    collector_rng = random.Random(f"{seed}-{source}")
                    tasks.start_soon(collector, store, source, targets, collector_rng, start, progress, task, stats)
        console.print(
            f"Collectors: {stats['saved']} signals saved, {stats['duplicates']} duplicate detections "
            f"returned the existing id, {stats['suppressed']} skipped as already in Notion"
        )

        # 3. The gate: push strong signals, reject weak ones, batch by batch.
        pushed = rejected = 0
        while batch := await store.get_pending_signals(limit=50):
            for signal in batch:
                if signal.confidence >= 0.6:
                    await store.mark_pushed(
                        signal.id,
                        f"page-{signal.id}",
                        {"score": signal.confidence},
                        actor="gate",
                        correlation_id=f"gate-{signal.id}",
                    )
                    pushed += 1
                else:
                    await store.mark_rejected(
                        signal.id,
                        "low confidence",
                        {"threshold": 0.6},
                        actor="gate",
                        correlation_id=f"gate-{signal.id}",
                    )
                    rejected += 1
        console.print(f"Gate: {pushed} pushed to Notion, {rejected} rejected")
        await report(store, rng)


async def report(store: SignalStore, rng: random.Random) -> None:
    stats = await store.get_processing_stats()
    table = Table(title="Processing")
    for column in ("pending", "pushed", "rejected", "total"):
        table.add_column(column, justify="right")
    table.add_row(*(str(stats[c]) for c in ("pending", "pushed", "rejected", "total")))
    console.print(table)

    db = await store.get_database_stats()
    overview = Table(title="Store")
    overview.add_column("what")
    overview.add_column("value", justify="right")
    for name, count in sorted(db["events_by_type"].items()):
        overview.add_row(f"events: {name}", str(count))
    overview.add_row("head position", str(db["head_position"]))
    overview.add_row("suppression entries", str(db["suppression_entries"]))
    for name, info in sorted(db["projections"].items()):
        overview.add_row(f"projection {name}", f"v{info['version']} at {info['checkpoint']}, lag {info['lag']}")
    console.print(overview)

    # A company seen by both collectors makes the most interesting story.
    rows = await store.log.query("SELECT canonical_key FROM signals GROUP BY canonical_key HAVING count(*) > 1")
    key = rng.choice(sorted(str(row[0]) for row in rows))
    history = Table(title=f"History of {key}")
    for column in ("position", "recorded_at", "type", "actor", "details"):
        history.add_column(column)
    for event in await store.history(key):
        details = msgspec.structs.asdict(event.data)
        history.add_row(
            str(event.position),
            event.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            event.type,
            event.actor or "",
            ", ".join(f"{k}={v}" for k, v in details.items() if k not in ("canonical_key", "raw_data")),
        )
    console.print(history)
    first_signal = min(s.id for s in await store.get_signals_for_company(key))
    console.print(f"[bold]Why is signal {first_signal} where it is?[/]")
    console.print(str(await store.why(first_signal)), highlight=False)
    console.print(f"Hash chain: {await store.log.verify()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, default=Path("demo-data/signals.db"), help="SQLite file (recreated)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--companies", type=int, default=400)
    args = parser.parse_args(argv)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.db, args.seed, args.companies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
