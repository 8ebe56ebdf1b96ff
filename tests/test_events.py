"""Events are validated on append: one clear InvalidEvent naming the field, and nothing written."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import anyio
import msgspec
import pytest

from eventstore import (
    EventStore,
    InvalidEvent,
    SignalDetected,
    SignalPushed,
    SignalRejected,
    SuppressionSynced,
    company_stream,
)
from eventstore.events import Event
from projections import ProjectionRunner
from projections.search import default_projections
from tests.conftest import detected

pytestmark = pytest.mark.anyio

STREAM = company_stream("domain:acme.ai")
LATER = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


class NotRegistered(Event, frozen=True, kw_only=True):
    schema_version: ClassVar[int] = 1
    note: str


async def assert_nothing_written(log: EventStore) -> None:
    assert await log.head_position() == 0
    assert [e async for e in log.read_all()] == []
    assert await log.stream_version(STREAM) == 0


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("confidence", 1.0001, "<= 1.0"),
        ("confidence", -0.01, ">= 0.0"),
        ("confidence", float("nan"), "float"),
        ("confidence", True, "float"),
        ("canonical_key", "", "length >= 1"),
        ("signal_type", "", "length >= 1"),
        ("source_api", "", "length >= 1"),
        ("detected_at", dt.datetime(2026, 1, 6, 9, 30), "timezone"),
        ("raw_data", [1, 2], "object"),
        ("raw_data", "stars=120", "object"),
    ],
)
async def test_invalid_signal_detected_names_the_field_and_writes_nothing(
    log: EventStore, field: str, value: Any, reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason) as caught:
        await log.append(STREAM, [detected(**{field: value})])
    assert caught.value.field == field
    assert caught.value.event_type == "SignalDetected"
    assert field in str(caught.value)
    await assert_nothing_written(log)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (SignalPushed(signal_id=0, notion_page_id="page"), "signal_id"),
        (SignalPushed(signal_id=1, notion_page_id=""), "notion_page_id"),
        (SignalPushed(signal_id=1, notion_page_id="page", metadata=[1]), "metadata"),  # type: ignore[arg-type]
        (SignalRejected(signal_id=1, reason=""), "reason"),
        (SuppressionSynced(canonical_key="", notion_page_id="p", status="s", expires_at=LATER), "canonical_key"),
        (
            SuppressionSynced(canonical_key="k", notion_page_id="p", status="s", expires_at=dt.datetime(2026, 2, 1)),
            "expires_at",
        ),
    ],
)
async def test_invalid_events_of_every_type_name_the_field(log: EventStore, event: Event, field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        await log.append(STREAM, [event])
    assert caught.value.field == field
    assert field in str(caught.value)
    await assert_nothing_written(log)


async def test_one_invalid_event_rejects_the_whole_batch(log: EventStore) -> None:
    batch = [detected(), detected(key="domain:b.io"), detected(confidence=2.0)]
    with pytest.raises(InvalidEvent, match="confidence"):
        await log.append(STREAM, batch)
    await assert_nothing_written(log)


async def test_unregistered_event_type_is_invalid_and_names_the_type(log: EventStore) -> None:
    with pytest.raises(InvalidEvent, match="NotRegistered") as caught:
        await log.append(STREAM, [NotRegistered(note="x")])
    assert "event_types" in str(caught.value)
    await assert_nothing_written(log)


@pytest.mark.parametrize(
    ("changes", "where", "field"),
    [
        ({"company_name": "Ac\x00me"}, "company_name", "company_name"),
        ({"canonical_key": "domain:a\x00.ai"}, "canonical_key", "canonical_key"),
        ({"raw_data": {"bio": ["fine", "a\x00b"]}}, "raw_data.bio[1]", "raw_data"),
        ({"raw_data": {"k\x00": 1}}, "raw_data['k\\x00']", "raw_data"),
    ],
)
async def test_a_nul_character_is_refused_on_every_backend(
    log: EventStore, changes: dict[str, Any], where: str, field: str
) -> None:
    """PostgreSQL text cannot hold NUL: refused at the door, a log stays portable and every projection
    can store every event (before, PostgreSQL committed the event and its projection then failed on it)."""
    with pytest.raises(InvalidEvent, match="NUL character") as caught:
        await log.append(STREAM, [detected(**changes)])
    assert f"SignalDetected.{where}:" in str(caught.value)
    assert caught.value.field == field
    await assert_nothing_written(log)


async def test_an_escaped_backslash_before_u0000_is_not_a_nul(log: EventStore) -> None:
    result = await log.append(STREAM, [detected(company_name="C:\\u0000", raw_data={"path": "\\u0000"})])
    assert result.positions == [1]


async def test_a_non_event_is_invalid(log: EventStore) -> None:
    with pytest.raises(InvalidEvent):
        await log.append(STREAM, [{"type": "SignalDetected"}])  # type: ignore[list-item]
    await assert_nothing_written(log)


@pytest.mark.parametrize("stream", ["", "\ud800", "company:a\x00b"])
async def test_stream_must_be_non_empty_text(log: EventStore, stream: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        await log.append(stream, [SignalPushed(signal_id=1, notion_page_id="p")])
    assert caught.value.field == "stream"
    assert await log.head_position() == 0


@pytest.mark.parametrize("expected", [-1, 1.0, "1", None, True])
async def test_expected_version_must_be_an_int_or_a_marker(log: EventStore, expected: Any) -> None:
    with pytest.raises(InvalidEvent, match="expected_version"):
        await log.append(STREAM, [detected()], expected_version=expected)
    await assert_nothing_written(log)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [({"actor": 5}, "actor"), ({"correlation_id": 1.5}, "correlation_id"), ({"extra": object()}, "metadata")],
)
async def test_invalid_metadata_names_the_key_and_writes_nothing(
    log: EventStore, metadata: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        await log.append(STREAM, [detected()], metadata=metadata)
    assert caught.value.field == field
    await assert_nothing_written(log)


async def test_event_ids_must_match_the_events(log: EventStore) -> None:
    with pytest.raises(InvalidEvent, match="event_ids"):
        await log.append(STREAM, [detected()], event_ids=[])
    with pytest.raises(InvalidEvent, match="not a UUID"):
        await log.append(STREAM, [detected()], event_ids=["nope"])  # type: ignore[list-item]
    await assert_nothing_written(log)


async def test_out_of_range_datetime_is_invalid_not_a_crash(log: EventStore) -> None:
    earliest = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    with pytest.raises(InvalidEvent) as caught:
        await log.append(STREAM, [detected(detected_at=earliest)])
    assert caught.value.field == "detected_at"
    await assert_nothing_written(log)


async def test_datetimes_are_stored_in_utc(log: EventStore) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    when = dt.datetime(2026, 1, 6, 10, 30, tzinfo=paris)
    await log.append(STREAM, [detected(detected_at=when)])
    [event] = [e async for e in log.read_stream(STREAM)]
    assert isinstance(event.data, SignalDetected)
    assert event.data.detected_at == when
    assert event.data.detected_at.utcoffset() == dt.timedelta(0)


def test_events_are_frozen_and_tagged() -> None:
    event = detected()
    with pytest.raises(AttributeError):
        event.confidence = 0.1  # type: ignore[misc]
    encoded = msgspec.json.decode(msgspec.json.encode(event))
    assert encoded["type"] == "SignalDetected"
    for cls in (SignalDetected, SignalPushed, SignalRejected, SuppressionSynced):
        assert cls.__struct_config__.frozen
        assert cls.__struct_config__.tag == cls.__name__
        assert cls.schema_version == 1


def test_company_stream_is_company_prefixed() -> None:
    assert company_stream("domain:acme.ai") == "company:domain:acme.ai"


async def test_a_nul_in_metadata_is_refused_like_one_in_the_event(log: EventStore) -> None:
    """The actor lands in a TEXT column of the signals read model: on PostgreSQL an accepted NUL there would
    commit and then fail the projection for ever."""
    with anyio.fail_after(20):
        try:
            await log.append("company:domain:acme.ai", [detected()], metadata={"actor": "ops\x00bot"})
        except InvalidEvent:
            return
        runner = ProjectionRunner(log, default_projections())
        await runner.start(inline=False)
        await runner.rebuild()  # PostgreSQL: DatabaseError invalid byte sequence for encoding "UTF8": 0x00
    pytest.fail("a NUL in metadata.actor was accepted (not portable to PostgreSQL)")
