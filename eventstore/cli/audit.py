"""``eventstore audit <db> company KEY | signal ID | events [filters]``, optionally ``--as-of TIME``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
from rich.table import Table

from eventstore import audit
from eventstore.cli._common import (
    add_json,
    add_store,
    command_main,
    console,
    emit_json,
    event_dict,
    events_table,
    open_log,
    parse_time,
)
from eventstore.errors import NotFound
from eventstore.facade import Signal
from eventstore.store import EventStore

NAME = "audit"
HELP = "audit queries: a company's history, a signal's story, filtered events; --as-of TIME for past state"


def _common(parser: argparse.ArgumentParser) -> None:
    add_json(parser)
    parser.add_argument("--as-of", type=parse_time, metavar="TIME", help="answer as of TIME (ISO 8601)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    what = parser.add_subparsers(dest="what", required=True, metavar="{company,signal,events}")
    company = what.add_parser("company", help="every event about a company (or its signals as of TIME)")
    company.add_argument("key", metavar="KEY", help="canonical key, e.g. domain:acme.ai")
    _common(company)
    signal = what.add_parser("signal", help="a signal's story: detection, decision, suppression")
    signal.add_argument("signal_id", type=int, metavar="ID")
    _common(signal)
    events = what.add_parser("events", help="events filtered by type, stream, actor and time")
    events.add_argument("--type", dest="types", action="append", metavar="TYPE", help="event type (repeatable)")
    events.add_argument("--stream", metavar="PREFIX", help="streams starting with PREFIX")
    events.add_argument("--actor", metavar="ACTOR")
    events.add_argument("--correlation-id", metavar="ID")
    events.add_argument("--since", type=parse_time, metavar="TIME", help="recorded at or after TIME")
    events.add_argument("--until", type=parse_time, metavar="TIME", help="recorded at or before TIME")
    events.add_argument("--limit", type=int, default=100, metavar="N", help="at most N events (default 100)")
    _common(events)


def _signals_table(signals: Sequence[Signal], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "type", "source", "company", "confidence", "status", "notion page / reason", "detected_at"):
        table.add_column(column)
    for s in signals:
        outcome = s.notion_page_id or s.rejection_reason or ""
        table.add_row(str(s.id), s.signal_type, s.source_api, s.company_name, f"{s.confidence:g}", s.status, outcome,
                      s.detected_at.isoformat(timespec="seconds"))  # fmt: skip
    return table


def _as_of_label(when: dt.datetime) -> str:
    return when.isoformat()


async def _company(log: EventStore, args: argparse.Namespace) -> None:
    if args.as_of is None:
        found = await audit.history(log, args.key)
        if args.json:
            emit_json([event_dict(e) for e in found])
        else:
            console().print(events_table(found, title=f"history of {args.key}"))
        return
    view = await audit.as_of(log, args.as_of)
    signals = await view.get_signals_for_company(args.key)
    suppression = await view.check_suppression(args.key)
    if not signals and suppression is None and not [e async for e in log.read_stream(f"company:{args.key}", limit=1)]:
        raise NotFound(f"no events for company {args.key!r} in {log.location}")
    if args.json:
        emit_json({"as_of": args.as_of.isoformat(), "position": view.position, "signals": signals,
                   "suppression": suppression})  # fmt: skip
        return
    out = console()
    out.print(_signals_table(signals, f"{args.key} as of {_as_of_label(args.as_of)} (position {view.position})"))
    out.print(f"suppression: {_suppression(suppression)}")


def _suppression(entry: Any) -> str:
    if entry is None:
        return "none live"
    return f"Notion page {entry.notion_page_id} ({entry.status or '-'}), expires {entry.expires_at.isoformat()}"


async def _signal(log: EventStore, args: argparse.Namespace) -> None:
    if args.as_of is not None:
        view = await audit.as_of(log, args.as_of)
        signal = await view.get_signal(args.signal_id)
        if signal is None:
            raise NotFound(f"signal {args.signal_id} did not exist as of {args.as_of.isoformat()}")
        if args.json:
            emit_json({"as_of": args.as_of.isoformat(), "position": view.position, "signal": signal})
        else:
            console().print(_signals_table([signal], f"signal {args.signal_id} as of {_as_of_label(args.as_of)}"))
        return
    story = await audit.why(log, args.signal_id)
    if args.json:
        emit_json({
            "signal": msgspec.to_builtins(story.signal),
            "events": [event_dict(e) for e in story.events],
            "suppression": [event_dict(e) for e in story.suppression],
            "story": story.lines(),
        })  # fmt: skip
    else:
        for line in story.lines():
            print(line)


async def _events(log: EventStore, args: argparse.Namespace) -> None:
    until = args.until
    if args.as_of is not None:
        until = min(until, args.as_of) if until is not None else args.as_of
    found = await audit.events(
        log, types=args.types, stream_prefix=args.stream, actor=args.actor, correlation_id=args.correlation_id,
        since=args.since, until=until, limit=args.limit,
    )  # fmt: skip
    if args.json:
        for event in found:
            emit_json(event_dict(event))
    else:
        console().print(events_table(found, title=f"{len(found)} events"))


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        handler = {"company": _company, "signal": _signal, "events": _events}[args.what]
        await handler(log, args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
