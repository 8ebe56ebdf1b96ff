"""``eventstore status <db>``: head, projections, pending, sync age, processing rate; ``--check`` for cron."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_log, parse_duration
from eventstore.codec import from_micros
from eventstore.store import EventStore
from projections import ProjectionRunner
from projections.search import default_projections

NAME = "status"
HELP = "head position, projections (version, checkpoint, lag, state), pending count, sync age, processing rate"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--check", action="store_true", help="exit 1 if any given threshold is breached")
    parser.add_argument("--max-pending", type=int, metavar="N", help="with --check: at most N pending signals")
    parser.add_argument(
        "--max-sync-age", type=parse_duration, metavar="DURATION", help="with --check: last sync at most this old"
    )
    parser.add_argument("--max-lag", type=int, metavar="N", help="with --check: every projection at most N behind")


async def collect(log: EventStore) -> dict[str, Any]:
    """The facts ``status`` shows, from the log and the projections' state (nothing is caught up)."""
    head = await log.head_position()
    now = log.now()
    projections: list[dict[str, Any]] = []
    pending = None
    if "projections" in await log.applied_migrations():
        runner = ProjectionRunner(log, default_projections())
        for s in await runner.status():
            projections.append(
                {"name": s.name, "version": s.version, "generation": s.generation, "checkpoint": s.checkpoint,
                 "lag": s.lag, "state": s.state, "progress": round(s.progress, 4)}
            )  # fmt: skip
        if "processing" in runner.live:
            rows = await log.query("SELECT count(*) FROM processing WHERE status = 'pending'")
            pending = int(rows[0][0])
    rows = await log.query(
        "SELECT recorded_at FROM events WHERE type = ? ORDER BY position DESC LIMIT 1", ("SuppressionSynced",)
    )
    last_sync = from_micros(int(rows[0][0])) if rows else None
    hour_ago = await log.position_at(now - dt.timedelta(hours=1))
    rows = await log.query(
        "SELECT count(*) FROM events WHERE position > ? AND type IN ('SignalPushed', 'SignalRejected')", (hour_ago,)
    )
    return {
        "store": log.location,
        "head_position": head,
        "projections": projections,
        "pending": pending,
        "last_suppression_sync": last_sync.isoformat() if last_sync else None,
        "suppression_sync_age_seconds": (now - last_sync).total_seconds() if last_sync else None,
        "processed_last_hour": int(rows[0][0]),
    }


def breaches(facts: dict[str, Any], args: argparse.Namespace) -> list[str]:
    found = []
    pending = facts["pending"]
    if args.max_pending is not None and (pending is None or pending > args.max_pending):
        shown = "unknown (no processing projection)" if pending is None else str(pending)
        found.append(f"pending signals: {shown} > max {args.max_pending}")
    if args.max_sync_age is not None:
        age = facts["suppression_sync_age_seconds"]
        limit = args.max_sync_age.total_seconds()
        if age is None:
            found.append(f"suppression sync age: never synced > max {_age(limit)}")
        elif age > limit:
            found.append(f"suppression sync age: {_age(age)} > max {_age(limit)}")
    if args.max_lag is not None:
        for p in facts["projections"]:
            if p["lag"] > args.max_lag:
                found.append(f"projection lag: {p['name']} ({p['state']}) is {p['lag']} behind > max {args.max_lag}")
    return found


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _show(facts: dict[str, Any]) -> None:
    out = console()
    age = facts["suppression_sync_age_seconds"]
    out.print(f"store: {facts['store']}")
    out.print(f"head position: {facts['head_position']}")
    out.print(f"pending signals: {facts['pending'] if facts['pending'] is not None else 'unknown'}")
    out.print(f"last suppression sync: {facts['last_suppression_sync'] or 'never'}"
              + (f" ({_age(age)} ago)" if age is not None else ""))  # fmt: skip
    out.print(f"processed in the last hour: {facts['processed_last_hour']}")
    table = Table(title="projections")
    for column in ("name", "version", "generation", "checkpoint", "lag", "state"):
        table.add_column(column)
    for p in facts["projections"]:
        state = p["state"] if p["state"] == "live" else f"{p['state']} {p['progress']:.0%}"
        table.add_row(p["name"], str(p["version"]), str(p["generation"]), str(p["checkpoint"]), str(p["lag"]), state)
    out.print(table)


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        facts = await collect(log)
    found = breaches(facts, args) if args.check else []
    if args.json:
        emit_json({**facts, "breaches": found} if args.check else facts)
    elif args.check:
        for line in found:
            print(f"CHECK FAILED: {line}")
        if not found:
            print("OK")
    else:
        _show(facts)
    return 1 if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
