"""The one error tree of the event store.

::

    EventStoreError
     +-- InvalidEvent            an event (or its metadata) failed validation; names the field
     +-- WrongExpectedVersion    optimistic concurrency check failed; nothing was written
     +-- DuplicateEventError     an event id is already in the log with other content,
     |                           or a batch mixes known and new ids
     +-- InvalidTransition       a facade state-machine transition is not allowed
     +-- NotFound                an unknown signal id, stream or company
     +-- SchemaVersionError      the database was written by a newer schema, or is not
     |                           an event store (the replaced layer's, another app's);
     |                           or an event's schema_version has no upcaster path
     +-- IntegrityViolation      the log does not verify (hash chain, positions, backup file)
     +-- StoreClosed             the store was used after ``aclose()``
     +-- WorkerLockLost          a held worker lock was lost (its connection ended);
     |                           the block holding it was stopped
     +-- ProjectionError         a projection being rebuilt failed on an event (its
     |                           handler or its statements); the live ones went on
     +-- DatabaseError           the database failed in a way not listed above
                                 (driver errors are translated to this at one boundary
                                 per backend, with the original chained as ``__cause__``)

Every message names the values involved and, where there is one, what to do.
"""

from __future__ import annotations

__all__ = (
    "DatabaseError",
    "DuplicateEventError",
    "EventStoreError",
    "IntegrityViolation",
    "InvalidEvent",
    "InvalidTransition",
    "NotFound",
    "ProjectionError",
    "SchemaVersionError",
    "StoreClosed",
    "WorkerLockLost",
    "WrongExpectedVersion",
)


class EventStoreError(Exception):
    """Base class of every error the event store raises on purpose."""


class InvalidEvent(EventStoreError, ValueError):
    """An event failed validation. ``field`` names the offending field, if known."""

    def __init__(self, message: str, *, event_type: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.field = field


class WrongExpectedVersion(EventStoreError):
    """The stream's version did not match ``expected_version``; nothing was written."""

    def __init__(self, stream: str, expected: object, actual: int) -> None:
        shown = actual if actual else "no stream"
        super().__init__(f"Wrong expected version: {expected} (Stream: {stream}, Stream Version: {shown})")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class DuplicateEventError(EventStoreError):
    """An event id is already recorded with different content, or a batch mixes known and new ids."""


class InvalidTransition(EventStoreError):
    """A state-machine transition is not allowed (e.g. pushing a rejected signal)."""


class NotFound(EventStoreError, LookupError):
    """The signal, stream or company asked for does not exist."""


class SchemaVersionError(EventStoreError):
    """A schema or event version this code cannot handle."""


class IntegrityViolation(EventStoreError):
    """The log (or a backup of it) does not verify."""

    def __init__(self, message: str, *, position: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.line = line


class StoreClosed(EventStoreError):
    """The store was used after it was closed."""


class WorkerLockLost(EventStoreError):
    """A worker lock held by ``worker_lock`` was lost; the block was cancelled so another worker may take over."""


class ProjectionError(EventStoreError):
    """A projection being rebuilt failed on an event; the live projections were kept up to date."""


class DatabaseError(EventStoreError):
    """A database failure not covered by a more specific error."""
