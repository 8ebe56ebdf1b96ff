"""SQLite's worker locks: an OS file lock beside the database, or an in-process set for ``:memory:``.

Why ``flock``: the kernel drops it when the last descriptor of the open file
goes away, which includes the holder being killed with SIGKILL, so a dead
worker can never leave a stale lock behind. Each handle opens the file itself,
so two handles conflict even inside one process (flock belongs to the open
file description, not the process). The lock file is never deleted: unlinking
it while a waiter has it open would let a third opener lock a new inode.
"""

from __future__ import annotations

import fcntl
import os
import urllib.parse

from eventstore.backends.base import WorkerLock

__all__ = ("FileLock", "MemoryLock", "lock_path")


def lock_path(database: str, name: str) -> str:
    """``<database path>.<name>.lock`` (a ``file:`` URI gives its path; the name is %-quoted)."""
    if database.startswith("file:"):
        database = urllib.parse.unquote(urllib.parse.urlsplit(database).path)
    return f"{database}.{urllib.parse.quote(name, safe='')}.lock"


class FileLock(WorkerLock):
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._held = False

    async def try_acquire(self) -> bool:
        if self._held:
            return True
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._held = True
        # The holder's pid, for an operator looking at the file; the lock itself is the flock.
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return True

    async def still_held(self) -> bool:
        return self._held  # a flock lasts as long as the descriptor, which only release() closes

    async def release(self) -> None:
        fd, self._fd, self._held = self._fd, None, False
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


class MemoryLock(WorkerLock):
    """For ``:memory:``: the database lives in one process, so one set of held names per database."""

    def __init__(self, taken: set[str], name: str) -> None:
        self._taken, self._name = taken, name
        self._held = False

    async def try_acquire(self) -> bool:
        if not self._held and self._name not in self._taken:
            self._taken.add(self._name)
            self._held = True
        return self._held

    async def still_held(self) -> bool:
        return self._held

    async def release(self) -> None:
        if self._held:
            self._taken.discard(self._name)
            self._held = False
