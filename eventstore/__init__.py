"""An event-sourced, append-only store for a deal-sourcing signal pipeline.

The log (``open_store``, events, errors) imports nothing from the projections
layer; the facade names (``signal_store``, ``SignalStore``, ...) are loaded
lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventstore.errors import (
    DatabaseError,
    DuplicateEventError,
    EventStoreError,
    IntegrityViolation,
    InvalidEvent,
    InvalidTransition,
    NotFound,
    ProjectionError,
    SchemaVersionError,
    StoreClosed,
    WorkerLockLost,
    WrongExpectedVersion,
)
from eventstore.events import (
    Event,
    SignalDetected,
    SignalPushed,
    SignalRejected,
    SuppressionSynced,
    company_stream,
)
from eventstore.model import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    AppendResult,
    GuardedBatch,
    RecordedEvent,
    Statement,
    VerifyReport,
)
from eventstore.store import EventStore, open_store

if TYPE_CHECKING:
    from eventstore.facade import Signal, SignalStore, SuppressionEntry, signal_store

__all__ = (
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "DatabaseError",
    "DuplicateEventError",
    "Event",
    "EventStore",
    "EventStoreError",
    "GuardedBatch",
    "IntegrityViolation",
    "InvalidEvent",
    "InvalidTransition",
    "NotFound",
    "ProjectionError",
    "RecordedEvent",
    "SchemaVersionError",
    "Signal",
    "SignalDetected",
    "SignalPushed",
    "SignalRejected",
    "SignalStore",
    "Statement",
    "StoreClosed",
    "SuppressionEntry",
    "SuppressionSynced",
    "VerifyReport",
    "WorkerLockLost",
    "WrongExpectedVersion",
    "company_stream",
    "open_store",
    "signal_store",
)

_FACADE = frozenset({"Signal", "SignalStore", "SuppressionEntry", "signal_store"})


def __getattr__(name: str) -> Any:
    if name in _FACADE:
        from eventstore import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'eventstore' has no attribute {name!r}")
