"""Storage backends. The URL scheme picks one in :func:`backend_for` (the only place)."""

from __future__ import annotations

from typing import Any

from eventstore.backends.base import Backend

__all__ = ("Backend", "backend_for")


def backend_for(url: str, **options: Any) -> Backend:
    """Return the backend for ``url``: a ``postgresql://`` URL or a SQLite path / ``:memory:``."""
    if url.startswith(("postgresql://", "postgres://")):
        from eventstore.backends.postgres import PostgresBackend  # driver imported only here

        backend: Backend = PostgresBackend(url, **options)
        return backend
    from eventstore.backends.sqlite import SqliteBackend

    options.pop("schema", None)
    options.pop("create", None)  # a SQLite file is checked for by path (see the CLI)
    return SqliteBackend(url.removeprefix("sqlite://"), **options)
