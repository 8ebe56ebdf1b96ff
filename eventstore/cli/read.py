"""``eventstore read <db>``: events in position order, optionally filtered."""

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
)

NAME = "read"
HELP = "print events in position order (--from, --limit, --type, --stream)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("--from", dest="from_position", type=int, default=1, metavar="POSITION",
                        help="first position (inclusive; default 1)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N events (default 100)")
    parser.add_argument("--type", dest="types", action="append", metavar="TYPE", help="only this type (repeatable)")
    parser.add_argument("--stream", metavar="STREAM", help="only this stream (in version order)")


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        if args.stream:
            found = []
            async for event in log.read_stream(args.stream):  # filter first, then stop at the limit
                if event.position >= args.from_position and (not args.types or event.type in args.types):
                    found.append(event)
                    if len(found) >= args.limit:
                        break
        else:
            found = [
                e async for e in log.read_all(from_position=args.from_position, limit=args.limit, types=args.types)
            ]
    if args.json:
        for event in found:
            emit_json(event_dict(event))
    else:
        console().print(events_table(found, title=f"{len(found)} events"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
