"""README's "Command line" section documents every subcommand the parser has."""

from __future__ import annotations

import argparse
from pathlib import Path

from eventstore.cli.app import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_every_subcommand_is_documented_with_an_example() -> None:
    text = README.read_text()
    assert "## Command line" in text
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    names = subcommands()
    assert len(names) >= 16
    for name in names:
        assert f"| `{name}` |" in section, f"README does not document `eventstore {name}`"
        assert f"`eventstore {name} " in section, f"README has no example of `eventstore {name}`"
