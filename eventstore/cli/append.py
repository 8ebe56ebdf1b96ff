"""``eventstore append <db>``: append events given as JSON Lines on stdin, validated, in one atomic batch.

Each line: ``{"stream": "...", "type": "SignalDetected", "data": {...}, "metadata": {...}}``;
optional ``"expected_version"`` (int). Every line is validated before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from eventstore.cli._common import CliError, add_json, add_store, command_main, console, emit_json, open_facade
from eventstore.events import SIGNAL_EVENT_TYPES, Event, SignalEvent
from eventstore.model import ANY, AppendRequest

NAME = "append"
HELP = "append events read as JSON Lines from stdin (validated; all or nothing)"
_TYPES = {str(t.__struct_config__.tag) for t in SIGNAL_EVENT_TYPES}


class _Input(msgspec.Struct, forbid_unknown_fields=True):
    stream: str
    type: str
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    expected_version: int | None = None


def configure(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_json(parser)


def parse(lines: Sequence[bytes]) -> list[AppendRequest]:
    requests = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = msgspec.json.decode(raw, type=_Input)
        except msgspec.DecodeError as exc:
            raise CliError(f"stdin line {number}: {exc}") from None
        if item.type not in _TYPES:
            raise CliError(
                f"stdin line {number}: unknown event type {item.type!r} (known: {', '.join(sorted(_TYPES))})"
            )
        try:
            event: Event = msgspec.convert({**item.data, "type": item.type}, SignalEvent)
        except msgspec.ValidationError as exc:
            raise CliError(f"stdin line {number}: invalid {item.type}: {exc}") from None
        expected = item.expected_version if item.expected_version is not None else ANY
        requests.append(
            AppendRequest(stream=item.stream, events=[event], expected_version=expected, metadata=item.metadata or None)
        )
    return requests


async def run(args: argparse.Namespace) -> int:
    requests = parse(sys.stdin.buffer.read().splitlines())
    if not requests:
        raise CliError("no events on stdin (one JSON object per line)")
    async with open_facade(args.store) as store:
        results = await store.log.append_batch(requests)
        await store.runner.ensure_current()
    positions = [p for result in results for p in result.positions]
    if args.json:
        emit_json({"appended": sum(r.written for r in results), "positions": positions})
    else:
        console().print(f"appended {len(positions)} events at positions {', '.join(map(str, positions))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(sys.modules[__name__], argv)
