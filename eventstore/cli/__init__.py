"""The ``eventstore`` command line: ``eventstore <subcommand> <db-path-or-url> [options]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ("main", "run")


def main(argv: Sequence[str] | None = None) -> int:
    from eventstore.cli.app import main as app_main

    return app_main(argv)


def run() -> None:
    sys.exit(main())
