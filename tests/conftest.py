"""Fixtures: every contract test runs against each backend on a real database.

SQLite uses a fresh file per test. PostgreSQL runs when
``EVENTSTORE_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it), each test in its
own schema, dropped afterwards, so parallel and repeated runs never collide.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from eventstore import EventStore, SignalDetected, open_store

POSTGRES_URL = os.environ.get("EVENTSTORE_TEST_POSTGRES_URL")
NO_POSTGRES = "PostgreSQL tests need EVENTSTORE_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _drop_schema(url: str, schema: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty store on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "events.db")
        return
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}schema={schema}"
    _drop_schema(POSTGRES_URL, schema)


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    """A URL for an empty store on PostgreSQL only (skips without a server)."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}schema={schema}"
    _drop_schema(POSTGRES_URL, schema)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "events.db")


@pytest.fixture
async def log(store_url: str) -> AsyncIterator[EventStore]:
    async with open_store(store_url) as store:
        yield store


class FakeClock:
    """A settable clock for tests (aware UTC)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 1, 6, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def detected(key: str = "domain:acme.ai", **changes: object) -> SignalDetected:
    """A valid SignalDetected, with any field overridden."""
    fields: dict[str, object] = {
        "signal_type": "github_spike",
        "source_api": "github",
        "canonical_key": key,
        "company_name": "Acme Inc",
        "confidence": 0.85,
        "raw_data": {"stars": 120},
        "detected_at": dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC),
    }
    fields.update(changes)
    return SignalDetected(**fields)  # type: ignore[arg-type]


make_detected: Callable[..., SignalDetected] = detected
