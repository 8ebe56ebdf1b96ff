"""``eventstore verify <db>``: recompute the hash chain and check positions; exit 1 at the first bad one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import msgspec

from eventstore.cli._common import add_json, add_store, command_main, emit_json, open_log, progress_bar

NAME = "verify"
HELP = "check the hash chain and contiguous positions; exit 1 naming the first bad position"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        head = await log.head_position()
        with progress_bar("verifying") as bar:
            report = await log.verify(progress=lambda done: bar(done, head))
    if args.json:
        emit_json(msgspec.to_builtins(report))
    else:
        print(str(report))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
