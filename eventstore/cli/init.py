"""``eventstore init <db>``: create a store (log and read tables), or check that one opens."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_facade

NAME = "init"
HELP = "create a store (the log and its projections); harmless on an existing one"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    async with open_facade(args.store, create=True) as store:
        head = await store.log.head_position()
        names = sorted({status.name for status in await store.projection_status()})
        location = store.log.location
    if args.json:
        emit_json({"store": location, "head_position": head, "projections": names})
    else:
        console().print(f"initialised {location}: head position {head}; projections: {', '.join(names)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
