"""``eventstore rebuild <db>``: rebuild every projection (or ``--projection NAME``) from position 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_log, progress_bar
from eventstore.cli._projections import PROJECTION_NAMES, runner_for, status_rows, status_table

NAME = "rebuild"
HELP = "rebuild all projections (or --projection NAME) from the log into fresh tables, then switch over"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--projection", action="append", choices=PROJECTION_NAMES, metavar="NAME",
                        help=f"only this projection (repeatable): {', '.join(PROJECTION_NAMES)}")  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        runner = runner_for(log)
        await runner.start(inline=False)
        with progress_bar("rebuilding") as bar:
            await runner.rebuild(args.projection, progress=bar)
        statuses = await runner.status()
    if args.json:
        emit_json({"rebuilt": args.projection or list(PROJECTION_NAMES), "projections": status_rows(statuses)})
    else:
        console().print(status_table(statuses, title="rebuilt"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
