"""PostgreSQL's worker locks: a session-level advisory lock on a connection of its own.

Why a session lock on a dedicated connection: a session advisory lock lives
exactly as long as the connection that took it, and the server ends the
session as soon as the client's socket closes, which the kernel does when the
holder is killed, even with SIGKILL. So a dead worker's lock is freed within
moments, with no lease to renew and no timeout to tune. A pooled connection
would not do: the pool hands it to other work and keeps it open after the
holder is done. TCP keepalives on the connection bound how long a holder whose
machine vanished (no FIN ever sent) keeps the lock: about idle + interval x count.

The key is one ``bigint``, a hash of (schema, name): stores in different
schemas never share a lock, and the single-bigint key space is separate from
the two-``int4`` keys the append and migration locks use.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from eventstore.backends.base import WorkerLock

__all__ = ("KEEPALIVES", "AdvisoryLock", "lock_key")

#: Seconds a health check of a held lock may take before the lock counts as lost.
HEALTH_TIMEOUT = 5.0
#: Server settings for the lock's connection: a vanished peer is noticed after ~10 + 5 x 3 s.
KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}


def lock_key(schema: str, name: str) -> int:
    """A signed 64-bit advisory lock key for worker lock ``name`` in ``schema``."""
    digest = hashlib.blake2b(f"eventstore worker lock\0{schema}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock(WorkerLock):
    def __init__(
        self,
        key: int,
        connect: Callable[[], Awaitable[Any]],
        translated: Callable[[str], contextlib.AbstractContextManager[None]],
    ) -> None:
        self._key = key
        self._connect = connect
        self._translated = translated
        self._conn: Any = None
        self._held = False
        self._ended = anyio.Event()  # the current connection's session ended

    async def try_acquire(self) -> bool:
        if self._held and self._conn is not None and not self._conn.is_closed():
            return True
        self._held = False
        with self._translated("cannot take a worker lock on"):
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
                # The server frees the lock the moment the session ends; the holder hears of it when
                # the socket closes (a server restart, a terminated backend), not at its next poll.
                self._ended = ended = anyio.Event()
                self._conn.add_termination_listener(lambda _conn: ended.set())
            self._held = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        return self._held

    async def wait_until_lost(self) -> None:
        await self._ended.wait()

    async def still_held(self) -> bool:
        """The session lock lives as long as its connection: ask the server whether the session is still there."""
        if not self._held or self._conn is None or self._conn.is_closed():
            self._held = False
            return False
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                await self._conn.fetchval("SELECT 1")
        except Exception:  # any failure means we can no longer vouch for the lock: treat it as lost
            # Not released here: the holder's work must stop first (worker_lock releases after it).
            self._held = False
            return False
        return True

    async def release(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await conn.close(timeout=5)  # ending the session releases the lock
