"""``eventstore tail <db>``: the last events; ``--follow`` keeps printing new ones as they commit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import (
    add_json,
    add_store,
    command_main,
    console,
    emit_json,
    event_dict,
    events_table,
    open_log,
    summary,
)
from eventstore.model import RecordedEvent

NAME = "tail"
HELP = "print the last 20 events (-n N); --follow prints new events live until interrupted"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many (default 20)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C stops)")


def _line(e: RecordedEvent) -> str:
    when = e.recorded_at.isoformat(timespec="milliseconds")
    return f"{e.position}  {when}  {e.stream}  v{e.version}  {e.type}  {e.actor or '-'}  {summary(e)}"


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        head = await log.head_position()
        start = max(1, head - max(args.lines, 0) + 1)
        last = [e async for e in log.read_all(from_position=start)] if args.lines > 0 else []
        last = [e for e in last if e.position <= head]
        if args.json:
            for event in last:
                emit_json(event_dict(event))
        elif last or not args.follow:
            console().print(events_table(last, title=f"last {len(last)} events"))
        sys.stdout.flush()
        if args.follow:
            async for event in log.subscribe(from_position=head + 1):
                if args.json:
                    emit_json(event_dict(event))
                else:
                    print(_line(event))
                sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
