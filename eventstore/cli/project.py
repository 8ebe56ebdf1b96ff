"""``eventstore project <db>``: catch the projections up once, or ``--follow`` as a worker process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_log
from eventstore.cli._projections import runner_for, status_rows, status_table

NAME = "project"
HELP = "run the projection runner: catch up once, or --follow to keep projecting until interrupted"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--follow", action="store_true", help="keep following the log (Ctrl-C or SIGTERM stops)")
    parser.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                        help="how often to look for other processes' appends (default 0.5)")  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        runner = runner_for(log)
        await runner.start(inline=False)
        applied = await runner.catch_up(include_building=True)
        statuses = await runner.status()
        if args.json:
            emit_json({"applied": applied, "projections": status_rows(statuses)})
        else:
            console().print(status_table(statuses, title=f"caught up ({applied} events read)"))
        if args.follow:
            print(f"following {log.location}; Ctrl-C stops", file=sys.stderr, flush=True)
            sys.stdout.flush()
            await runner.follow(poll_interval=args.poll_interval, wake_on_append=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
