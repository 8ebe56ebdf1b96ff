"""``eventstore search <db> TEXT``: full-text search over signals (company name and raw_data text)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.table import Table

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_facade

NAME = "search"
HELP = "full-text search over signals: company name and raw_data text (every word must match)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    parser.add_argument("text", nargs="+", metavar="TEXT", help="words to look for")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="at most N signals (default 20)")
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    text = " ".join(args.text)
    async with open_facade(args.store) as store:
        found = await store.search(text, limit=args.limit)
    if args.json:
        emit_json(found)
        return 0
    table = Table(title=f"{len(found)} signals matching {text!r}")
    for column in ("id", "company", "key", "type", "source", "confidence", "status"):
        table.add_column(column)
    for s in found:
        table.add_row(str(s.id), s.company_name, s.canonical_key, s.signal_type, s.source_api, f"{s.confidence:g}",
                      s.status)  # fmt: skip
    console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
