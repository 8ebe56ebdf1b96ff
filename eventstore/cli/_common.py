"""What every subcommand shares: the store argument, output, progress, errors.

A subcommand module defines ``NAME``, ``HELP``, ``configure(parser)``, an
``async run(args) -> int`` and ``main(argv) -> int``. Errors the user can act
on (EventStoreError, OSError, ValueError) become one line on stderr and exit
code 1; argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from eventstore.errors import EventStoreError
from eventstore.facade import SignalStore, signal_store
from eventstore.model import RecordedEvent
from eventstore.store import EventStore, open_store

__all__ = (
    "CliError",
    "ProgressBar",
    "add_json",
    "add_store",
    "command_main",
    "console",
    "emit_json",
    "error",
    "event_dict",
    "events_table",
    "execute",
    "open_facade",
    "open_log",
    "parse_duration",
    "parse_time",
    "progress_bar",
    "store_to_fill",
    "summary",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def console() -> Console:
    """stdout, created per call so redirected/captured stdout is honoured; wide when not a terminal."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200, highlight=False)


def error(message: str) -> None:
    print(f"eventstore: error: {' '.join(str(message).split())}", file=sys.stderr)


def add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="DB", help="SQLite file path, :memory: or postgresql://... URL")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _is_file_path(url: str) -> bool:
    return not url.startswith(("postgresql://", "postgres://", "file:")) and url != ":memory:"


def require_existing(url: str) -> None:
    if _is_file_path(url) and not os.path.exists(url):
        raise CliError(f"no store at {url} (create one with 'eventstore init {url}')")


def _existing(url: str, create: bool) -> dict[str, Any]:
    """Options that make opening a store that is not there fail, unless ``create``."""
    if create:
        return {}
    require_existing(url)
    return {"create": False} if url.startswith(("postgresql://", "postgres://")) else {}


@contextlib.contextmanager
def store_to_fill(url: str) -> Iterator[str]:
    """Where an import builds the store ``url``.

    A new SQLite file is built under a temporary name beside it and put in
    place (hard-linked, which never replaces a file made meanwhile) only once
    the import has succeeded: a failed import leaves nothing behind, and an
    application pointed at ``url`` never sees it half built. Any other store
    is filled where it is (an import is all or nothing: a failed one leaves
    it as empty as it was).
    """
    if not _is_file_path(url) or os.path.exists(url):
        yield url
        return
    _refuse_leftovers(url)
    directory, name = os.path.split(os.path.abspath(url))
    building = os.path.join(directory, f".{name}.importing-{os.getpid()}")
    try:
        yield building
        _fold_wal(building)
    except BaseException:
        _remove_database(building)
        raise
    kept = f"{url} appeared while the import ran; the imported store is kept as {building}"
    try:
        _refuse_leftovers(url, kept)
        os.link(building, url)
    except FileExistsError:
        raise CliError(kept) from None
    except OSError:  # a filesystem without hard links: check, then rename (a narrow race, reported)
        if os.path.exists(url):
            raise CliError(kept) from None
        os.rename(building, url)
        return
    os.remove(building)


def _refuse_leftovers(url: str, kept: str | None = None) -> None:
    """A ``-wal`` (or ``-shm``, ``-journal``) with no database beside it belongs to a deleted store:
    SQLite would replay it into the file put in place, and the import would hold that store instead."""
    left = [url + suffix for suffix in ("-wal", "-shm", "-journal") if os.path.exists(url + suffix)]
    if left:
        what = kept or "nothing was imported"
        raise CliError(f"{', '.join(left)} left by a deleted store: remove them first ({what})")


def _fold_wal(path: str) -> None:
    """Checkpoint ``path``'s WAL into the file itself, so that the file alone is the whole store."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection: SQLite removes the emptied -wal and -shm
    if os.path.exists(f"{path}-wal") and os.path.getsize(f"{path}-wal"):
        raise CliError(f"{path}: its WAL could not be folded into the file (another process has it open?)")


def _remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def open_log(url: str, *, create: bool = False) -> EventStore:
    return open_store(url, **_existing(url, create))


def open_facade(url: str, *, create: bool = False) -> SignalStore:
    """The facade without background tasks: a command runs, then exits."""
    return signal_store(url, background=False, cleanup_interval=None, **_existing(url, create))


def parse_time(text: str) -> dt.datetime:
    """ISO 8601; a time without a zone is taken as UTC."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-01-06T12:00:00Z") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def parse_duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w``."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 15m, 2h, 1d")
    try:
        return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:
        raise argparse.ArgumentTypeError(f"duration {text!r} is too long") from None


def _default(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value, enc_hook=_default).decode() + "\n")


def event_dict(event: RecordedEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "event_id": str(event.event_id),
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "schema_version": event.schema_version,
        "recorded_at": event.recorded_at.isoformat(),
        "metadata": event.metadata,
        "data": msgspec.to_builtins(event.data),
        "hash": event.hash.hex(),
    }


def summary(event: RecordedEvent) -> str:
    data = msgspec.to_builtins(event.data)
    data.pop("type", None)
    text = msgspec.json.encode(data).decode()
    return text if len(text) <= 90 else text[:87] + "..."


def events_table(events: Sequence[RecordedEvent], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("position", "recorded_at", "stream", "version", "type", "actor", "data"):
        table.add_column(column, justify="right" if column in ("position", "version") else "left")
    for e in events:
        table.add_row(
            str(e.position),
            e.recorded_at.isoformat(timespec="milliseconds"),
            e.stream,
            str(e.version),
            e.type,
            e.actor or "",
            summary(e),
        )
    return table


class ProgressBar:
    """A rich progress bar on stderr, silent when stderr is not a terminal."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None)

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=max(total, done))

    def named(self, name: str, done: int, total: int) -> None:
        self._progress.update(self._task, description=name, completed=done, total=max(total, done))


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressBar]:
    err = Console(file=sys.stderr)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not err.is_terminal, transient=True) as progress:
        yield ProgressBar(progress, description)


def execute(run: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become one line on stderr and exit code 1."""

    async def call() -> int:
        return await run(args)

    try:
        return anyio.run(call)
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else 130
    except (CliError, EventStoreError, OSError, ValueError, OverflowError) as exc:
        error(str(exc) or type(exc).__name__)
        return EXIT_FAILED


def build_parser(module: ModuleType, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or f"eventstore {module.NAME}", description=module.HELP)
    module.configure(parser)
    return parser


def command_main(module: ModuleType, argv: Sequence[str] | None) -> int:
    """``main(argv)`` of one subcommand module: parse its own arguments and run it."""
    parser = build_parser(module)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    result: int = execute(module.run, args)
    return result
