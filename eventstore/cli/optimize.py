"""``eventstore optimize <db>``: the database's own maintenance (ANALYZE / PRAGMA optimize; --vacuum)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_log

NAME = "optimize"
HELP = "refresh planner statistics (ANALYZE, PRAGMA optimize); --vacuum also reclaims space"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--vacuum", action="store_true", help="also VACUUM (slow; SQLite rewrites the file)")


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        before = (await log.backend_stats()).get("file_size_bytes")
        await log.maintain(vacuum=args.vacuum)
        after = (await log.backend_stats()).get("file_size_bytes")
    if args.json:
        emit_json({"vacuum": args.vacuum, "size_before": before, "size_after": after})
    else:
        console().print(f"optimized{' and vacuumed' if args.vacuum else ''}: size {before} -> {after} bytes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
