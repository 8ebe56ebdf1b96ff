"""``eventstore import <db> <file>``: load an export into a new or empty store, all or nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.backup import restore
from eventstore.cli._common import (
    add_json,
    add_store,
    command_main,
    console,
    emit_json,
    open_log,
    progress_bar,
    store_to_fill,
)

NAME = "import"
HELP = "import a JSON Lines export into a new or empty store (checked line by line; all or nothing)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("file", metavar="FILE", help="the export to read; '-' for stdin")


async def run(args: argparse.Namespace) -> int:
    with store_to_fill(args.store) as store:
        async with open_log(store, create=True) as log:
            with progress_bar("importing") as bar:
                if args.file == "-":
                    report = await restore(log, sys.stdin.buffer, progress=bar)
                else:
                    with open(args.file, "rb") as source:  # noqa: ASYNC230 -- buffered line reads
                        report = await restore(log, source, progress=bar)
    if args.json:
        emit_json({"events": report.events, "head_position": report.head_position})
    else:
        console().print(f"imported {report.events} events (head position {report.head_position}); projections rebuilt")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
