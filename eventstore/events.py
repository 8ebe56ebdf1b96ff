"""The signal events: frozen, tagged msgspec Structs validated on append.

Schema evolution follows msgspec's rules: a new field gets a default, a field
never changes type. An incompatible change bumps the class's ``schema_version``
and registers an upcaster (see :mod:`eventstore.codec`) from the old shape, so
stored bytes never change.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar

import msgspec

__all__ = (
    "AwareDatetime",
    "Event",
    "JsonObject",
    "NonEmptyStr",
    "SignalDetected",
    "SignalEvent",
    "SignalPushed",
    "SignalRejected",
    "SuppressionSynced",
    "company_stream",
)

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
JsonObject = dict[str, Any]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Position = Annotated[int, msgspec.Meta(ge=1)]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event type; the class name is the tag stored in ``type``."""

    schema_version: ClassVar[int] = 1


class SignalDetected(Event, frozen=True, kw_only=True):
    """A collector saw a signal about a company."""

    signal_type: NonEmptyStr
    source_api: NonEmptyStr
    canonical_key: NonEmptyStr
    company_name: str
    confidence: Confidence
    raw_data: JsonObject = {}
    detected_at: AwareDatetime


class SignalPushed(Event, frozen=True, kw_only=True):
    """The gate pushed a signal to Notion."""

    signal_id: Position
    notion_page_id: NonEmptyStr
    metadata: JsonObject = {}


class SignalRejected(Event, frozen=True, kw_only=True):
    """The gate rejected a signal."""

    signal_id: Position
    reason: NonEmptyStr
    metadata: JsonObject = {}


class SuppressionSynced(Event, frozen=True, kw_only=True):
    """The Notion sync saw a company; collectors skip it until ``expires_at``."""

    canonical_key: NonEmptyStr
    notion_page_id: str
    status: str
    expires_at: AwareDatetime


SignalEvent = SignalDetected | SignalPushed | SignalRejected | SuppressionSynced
SIGNAL_EVENT_TYPES: tuple[type[Event], ...] = (
    SignalDetected,
    SignalPushed,
    SignalRejected,
    SuppressionSynced,
)


def company_stream(canonical_key: str) -> str:
    """The stream every event about one company goes to."""
    return f"company:{canonical_key}"
