"""``eventstore cleanup <db>``: delete expired rows from the suppression read table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.cli._common import add_json, add_store, command_main, console, emit_json, open_facade

NAME = "cleanup"
HELP = "remove expired suppression rows from the read table (the events stay)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    async with open_facade(args.store) as store:
        removed = await store.clean_expired_cache()
    if args.json:
        emit_json({"removed": removed})
    else:
        console().print(f"removed {removed} expired suppression rows")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
