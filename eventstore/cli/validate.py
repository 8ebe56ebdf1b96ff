"""``eventstore validate <db>``: schema objects as the migrations define them, and projection drift."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventstore.checks import validate
from eventstore.cli._common import add_json, add_store, command_main, emit_json, open_log, progress_bar
from projections.search import default_projections

NAME = "validate"
HELP = "check every table, index, trigger and view, and rebuild each projection in scratch tables to find drift"


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


async def run(args: argparse.Namespace) -> int:
    async with open_log(args.store) as log:
        with progress_bar("validating") as bar:
            report = await validate(log, default_projections(), progress=bar.named)
    if args.json:
        emit_json({"ok": report.ok, "problems": report.problems, "objects_checked": report.objects_checked,
                   "projections_checked": report.projections_checked})  # fmt: skip
    else:
        print(str(report))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
