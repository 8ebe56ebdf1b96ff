"""The ``eventstore`` dispatcher: ``eventstore <subcommand> <db-path-or-url> [options]``.

One module per subcommand; this one only builds the parser from them and
dispatches. Exit codes: 0 ok, 1 a check or the operation failed, 2 usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from eventstore.cli import (
    append,
    audit,
    cleanup,
    export,
    import_,
    import_legacy,
    init,
    optimize,
    project,
    read,
    rebuild,
    search,
    stats,
    status,
    tail,
    validate,
    verify,
)
from eventstore.cli._common import EXIT_USAGE, execute

__all__ = ("COMMANDS", "build_parser", "main")

COMMANDS: tuple[ModuleType, ...] = (
    init, status, stats, append, read, tail, audit, rebuild, project,
    export, import_, import_legacy, verify, validate, cleanup, optimize, search,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventstore",
        description="Operate an event store: eventstore <subcommand> <db-path-or-url> [options]",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for module in COMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    result: int = execute(args._run, args)
    return result
