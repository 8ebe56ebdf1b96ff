"""``eventstore export <db> <file>``: the log as JSON Lines (``-`` = stdout), in constant memory."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from eventstore.backup import export_log
from eventstore.cli._common import add_store, command_main, open_log, progress_bar

NAME = "export"
HELP = "export the log as JSON Lines (positions, ids and hashes preserved); FILE '-' is stdout"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    parser.add_argument("file", metavar="FILE", help="where to write; '-' for stdout")


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        if args.file == "-":
            with progress_bar("exporting") as bar:
                header = await export_log(log, sys.stdout.buffer, progress=bar)
            sys.stdout.buffer.flush()
            print(f"exported {header.event_count} events (head {header.head_position})", file=sys.stderr)
            return 0
        partial = f"{args.file}.partial"
        try:
            # A buffered file object: small writes, like the rest of the CLI's output.
            with open(partial, "wb") as out, progress_bar("exporting") as bar:  # noqa: ASYNC230
                header = await export_log(log, out, progress=bar)
            os.replace(partial, args.file)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
    print(f"exported {header.event_count} events (head position {header.head_position}) to {args.file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
