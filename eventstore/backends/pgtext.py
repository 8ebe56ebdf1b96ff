"""Pure helpers for the PostgreSQL backend: URLs, placeholders, parameter types, role SQL.

Kept apart from :mod:`eventstore.backends.postgres` so they can be tested and
reused without the driver (asyncpg is imported only by that module).
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = (
    "DEFAULT_SCHEMA",
    "Target",
    "app_role_sql",
    "coerce",
    "number",
    "numbered",
    "parse_url",
    "quote_ident",
    "quote_literal",
    "rowcount",
)

DEFAULT_SCHEMA = "eventstore"
_INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
_FLOAT_TYPES = frozenset({"float4", "float8", "numeric"})
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Everything a ``?`` may hide in: string literals, quoted identifiers,
# comments and dollar-quoted bodies. Matched first so their ``?`` survive.
_TOKENS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(\w*)\$.*?\$\1\$|\?""",
    re.DOTALL,
)


#: Query parameters libpq reads as secrets: masked wherever a URL or an error is printed.
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


class Target(NamedTuple):
    """Where to connect: the driver's DSN, the schema, a printable name, and the secrets it must not show."""

    dsn: str
    schema: str
    display_name: str
    secrets: tuple[str, ...]

    def masked(self, text: str) -> str:
        """``text`` with every secret of the URL replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


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
    # libpq also takes the password (and an SSL key's passphrase) as query parameters: masked there too.
    in_query = [value for key, value in rest if key in SECRET_PARAMETERS and value]
    shown = [(key, "***" if key in SECRET_PARAMETERS else value) for key, value in rest]
    display = urlunsplit((parts.scheme, netloc, parts.path, urlencode([*shown, ("schema", chosen)], safe="*"), ""))
    secrets = [parts.password, *in_query] if parts.password else in_query
    # Longest first, so that a secret containing another is masked whole.
    return Target(dsn, chosen, display, tuple(sorted(set(secrets), key=len, reverse=True)))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings, the default since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


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


def app_role_sql(schema: str, role: str) -> str:
    """The SQL an operator runs, as the schema owner, to let ``role`` use the store.

    ``role`` may append and read events, but not UPDATE, DELETE or TRUNCATE them,
    nor drop the trigger (only the owner can). It may create and change the
    projections' tables. Run ``eventstore init`` (the log migrations) as the owner
    first; create the role beforehand (``CREATE ROLE app LOGIN PASSWORD ...``).
    """
    s, r = quote_ident(schema), quote_ident(role)
    return "\n".join(
        (
            f"GRANT USAGE, CREATE ON SCHEMA {s} TO {r};",
            f"GRANT SELECT, INSERT ON {s}.events TO {r};",
            f"GRANT EXECUTE ON FUNCTION {s}.eventstore_append TO {r};",
            f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.events FROM {r};",
            f"GRANT SELECT, INSERT ON {s}.schema_migrations TO {r};",
        )
    )


def coerce(value: Any, type_name: str) -> Any:
    """``value`` converted to fit a parameter PostgreSQL inferred as ``type_name`` (if it can be, losslessly)."""
    if value is None:
        return None
    if type_name in _TEXT_TYPES and not isinstance(value, str):
        return str(int(value) if isinstance(value, bool) else value)
    if type_name in _INTEGER_TYPES and (
        isinstance(value, bool | str) or (isinstance(value, float) and value.is_integer())
    ):
        return int(value)
    if type_name in _FLOAT_TYPES and isinstance(value, int | str):
        return float(value)
    if type_name == "bool" and isinstance(value, int):
        return bool(value)
    return value


def rowcount(status: str | None) -> int:
    tail = (status or "").rpartition(" ")[2]
    return int(tail) if tail.isdigit() else -1


def number(text: str) -> int | float:
    """Decode ``numeric`` as SQLite would give it: int when integral, else float."""
    try:
        return int(text)
    except ValueError:
        return float(text)
