"""``eventstore import-legacy <db> <file>``: the replaced storage layer's data, as events, into a new store."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO

import anyio
import msgspec

from eventstore.cli._common import (
    CliError,
    add_json,
    add_store,
    command_main,
    console,
    emit_json,
    open_log,
    progress_bar,
    store_to_fill,
)
from eventstore.legacy import import_legacy, read_legacy

NAME = "import-legacy"
HELP = (
    "import the old storage layer's signals.db (or its JSON export) into a new or empty store, "
    "one event per row (all or nothing; the old file is only read)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)
    parser.add_argument("file", metavar="FILE", help="the old layer's SQLite file or JSON export")
    parser.add_argument("--actor", default="legacy-import", help="actor recorded on the imported events")
    parser.add_argument("--id-map", metavar="CSV", help="also write old_id,new_id for every signal to this file")


async def run(args: argparse.Namespace) -> int:
    data = await anyio.to_thread.run_sync(read_legacy, args.file)  # a bad file fails before a store is made
    with contextlib.ExitStack() as stack:
        # Opened first: a path that cannot be written fails before the import, not after its commit.
        id_map = stack.enter_context(_written_or_removed(args.id_map)) if args.id_map else None
        with store_to_fill(args.store) as store:
            async with open_log(store, create=True) as log:
                with progress_bar("importing") as bar:
                    report = await import_legacy(log, data, actor=args.actor, progress=bar)
        if id_map is not None:
            writer = csv.writer(id_map)
            writer.writerow(("old_id", "new_id"))
            writer.writerows(report.id_map.items())
    if args.json:
        emit_json({k: v for k, v in msgspec.structs.asdict(report).items() if k != "id_map"})
        return 0
    console().print(
        f"imported {report.signals} signals ({report.pushed} pushed, {report.rejected} rejected, "
        f"{report.pending} pending) and {report.suppression} suppression entries as {report.events} events "
        f"(head position {report.head_position}); projections rebuilt"
    )
    if report.merged:
        console().print(f"note: {report.merged} signal rows repeated an earlier row's detection; both ids map to it")
    if report.naive_times:
        console().print(f"note: {report.naive_times} times without a time zone were read as UTC")
    if report.id_map and any(old != new for old, new in report.id_map.items()):
        console().print("note: signal ids changed (an id is now its detection's position); see --id-map")
    return 0


@contextlib.contextmanager
def _written_or_removed(path: str) -> Iterator[IO[str]]:
    """A file to write ``path`` through: put in place if the block succeeds, removed if it fails."""
    partial = f"{path}.partial"
    try:
        out = open(partial, "w", newline="")  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise CliError(f"cannot write the id map {path}: {exc.strerror or exc}") from None
    try:
        with out:
            yield out
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
