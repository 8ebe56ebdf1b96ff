"""Pure text helpers for the PostgreSQL backend: connection URLs and placeholders.

Kept apart from :mod:`eventstore.backends.postgres` so they can be tested and
reused without the driver (asyncpg is imported only by that module).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = ("DEFAULT_SCHEMA", "Target", "numbered", "parse_url", "quote_ident")

DEFAULT_SCHEMA = "eventstore"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Everything a ``?`` may hide in: string literals, quoted identifiers,
# comments and dollar-quoted bodies. Matched first so their ``?`` survive.
_TOKENS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(\w*)\$.*?\$\1\$|\?""",
    re.DOTALL,
)


class Target(NamedTuple):
    """Where to connect: the driver's DSN, the schema, and a printable name."""

    dsn: str
    schema: str
    display_name: str
    password: str | None


def parse_url(url: str, schema: str | None = None) -> Target:
    """Split ``postgresql://...?schema=NAME`` into a driver DSN and a schema.

    ``schema`` (the keyword option) and the URL's ``schema`` parameter must agree
    if both are given. The display name masks any password.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_url = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    if schema is not None and in_url and in_url[-1] != schema:
        raise ValueError(f"schema given twice: {schema!r} as an option and {in_url[-1]!r} in the URL")
    chosen = schema if schema is not None else (in_url[-1] if in_url else DEFAULT_SCHEMA)
    if not _IDENT.fullmatch(chosen):
        raise ValueError(f"schema must be a plain identifier (letters, digits, underscore; at most 63), not {chosen!r}")
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    netloc = parts.netloc
    if parts.password is not None:
        user = quote(parts.username or "", safe="")
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    shown_query = urlencode([*rest, ("schema", chosen)])
    display = urlunsplit((parts.scheme, netloc, parts.path, shown_query, ""))
    return Target(dsn, chosen, display, parts.password or None)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """Translate the portable ``?`` placeholders to PostgreSQL's ``$1..$n``.

    ``?`` inside string literals, quoted identifiers, comments and
    dollar-quoted strings is left alone. Results are cached: the projections
    layer sends the same few statements over and over.
    """
    if "?" not in sql:
        return sql
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)
        count += 1
        return f"${count}"

    return _TOKENS.sub(replace, sql)
