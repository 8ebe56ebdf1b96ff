"""``eventstore project <db>``: catch the projections up once, or ``--follow`` as a worker process.

A following worker first takes the worker lock (see ``WORKER_LOCK``); a second
worker started meanwhile stands by, polling the lock every ``--poll-interval``
seconds, and takes over when the active one exits or dies. An active worker
that loses the lock (its connection ended) stops and stands by again. A worker never
installs the inline hook: it is its own process, and writers apply inline
themselves or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_log
from eventstore.cli._projections import runner_for, status_rows, status_table
from eventstore.errors import ProjectionError, WorkerLockLost
from projections import ProjectionRunner

NAME = "project"
HELP = "run the projection runner: catch up once, or --follow to keep projecting until interrupted"

# One lock for the whole built-in set rather than one per projection: the runner moves every
# projection's checkpoint in the same transaction per batch, so a worker always works on all of
# them, and per-projection locks would only add a lock order and workers holding a partial set,
# for no parallelism this runner can use. The lock saves duplicated work; exactly-once itself
# rests on the guarded checkpoint advances, so even an overlap (a holder whose lock connection
# dropped, in the few seconds before its watchdog stops it) applies nothing twice.
WORKER_LOCK = "projections"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--follow", action="store_true", help="keep following the log (Ctrl-C or SIGTERM stops)")
    parser.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                        help="how often to look for other processes' appends and, on standby, "
                             "for the worker lock (default 0.5)")  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        if not args.follow:
            await catch_up(runner_for(log), args)
            return 0

        def standby() -> None:
            say(f"standby: another worker holds the {WORKER_LOCK!r} lock on {log.location}; waiting to take over")

        while True:
            try:
                async with log.worker_lock(WORKER_LOCK, poll_interval=args.poll_interval, on_wait=standby):
                    say(f"active: holding the {WORKER_LOCK!r} lock on {log.location} (pid {os.getpid()})")
                    runner = runner_for(log)
                    try:
                        await catch_up(runner, args)
                    except ProjectionError as exc:  # the live projections are caught up: follow them
                        say(f"{exc}; following the live projections (the rebuild is retried as it goes)")
                    say(f"following {log.location}; Ctrl-C stops")
                    await runner.follow(poll_interval=args.poll_interval, wake_on_append=True)
                return 0
            except WorkerLockLost as exc:
                # Stopped mid-work is safe: each batch commits with its checkpoint or not at all.
                say(f"{exc}; standing by")


async def catch_up(runner: ProjectionRunner, args: argparse.Namespace) -> None:
    await runner.start(inline=False)
    applied = await runner.catch_up(include_building=True)
    statuses = await runner.status()
    if args.json:
        emit_json({"applied": applied, "projections": status_rows(statuses)})
    else:
        console().print(status_table(statuses, title=f"caught up ({applied} events read)"))
    sys.stdout.flush()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
