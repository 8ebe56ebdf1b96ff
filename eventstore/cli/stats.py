"""``eventstore stats <db>``: the facade's database statistics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.table import Table

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_facade

NAME = "stats"
HELP = "database statistics: events by type, signals, suppression entries, size, projections"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    async with open_facade(args.store) as store:
        stats = await store.get_database_stats()
        processing = await store.get_processing_stats()
    stats["processing"] = processing
    if args.json:
        emit_json(stats)
        return 0
    table = Table(title="store statistics", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("head_position", "events", "signals", "suppression_entries", "file_size_bytes"):
        table.add_row(key, str(stats[key]))
    for name, count in sorted(stats["events_by_type"].items()):
        table.add_row(f"events: {name}", str(count))
    for name, count in processing.items():
        table.add_row(f"signals {name}", str(count))
    for name, p in sorted(stats["projections"].items()):
        table.add_row(f"projection {name}", f"v{p['version']} checkpoint {p['checkpoint']} lag {p['lag']}")
    console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
