"""The codec: round trips, deterministic and time-ordered ids, the hash chain, upcasting."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import InvalidEvent, SchemaVersionError, SignalDetected, SignalPushed, SignalRejected, SuppressionSynced
from eventstore.codec import (
    GENESIS_HASH,
    EventRegistry,
    chain_hash,
    from_micros,
    new_event_id,
    signal_event_id,
    to_micros,
)
from eventstore.events import Event
from eventstore.model import Row
from tests.conftest import detected

# -- strategies -----------------------------------------------------------

# Any UTF-8 text but NUL, which every event refuses (see test_a_nul_anywhere_is_refused).
characters = st.characters(codec="utf-8", exclude_characters="\x00")
names = st.text(characters, min_size=1, max_size=30)
texts = st.text(characters, max_size=30)
offsets = st.builds(
    dt.timezone, st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: dt.timedelta(minutes=m))
)
aware = st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(9998, 12, 31), timezones=offsets)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
confidences = st.floats(min_value=0.0, max_value=1.0)
signal_ids = st.integers(min_value=1, max_value=2**62)

signal_detected = st.builds(
    SignalDetected,
    signal_type=names,
    source_api=names,
    canonical_key=names,
    company_name=texts,
    confidence=confidences,
    raw_data=json_objects,
    detected_at=aware,
)
signal_pushed = st.builds(SignalPushed, signal_id=signal_ids, notion_page_id=names, metadata=json_objects)
signal_rejected = st.builds(SignalRejected, signal_id=signal_ids, reason=names, metadata=json_objects)
suppression_synced = st.builds(
    SuppressionSynced, canonical_key=names, notion_page_id=texts, status=texts, expires_at=aware
)
every_event = signal_detected | signal_pushed | signal_rejected | suppression_synced

REGISTRY = EventRegistry()


# -- round trips ----------------------------------------------------------


@given(every_event)
def test_every_event_type_round_trips_through_the_codec(event: Event) -> None:
    name, schema_version, data, normalised = REGISTRY.encode(event)
    assert name == type(event).__name__
    assert schema_version == 1
    decoded = REGISTRY.decode(name, schema_version, data)
    assert type(decoded) is type(event)
    assert decoded == normalised
    assert decoded == event  # datetimes compare as instants, so normalising to UTC changes nothing
    for field in event.__struct_fields__:
        value = getattr(decoded, field)
        if isinstance(value, dt.datetime):
            assert value.utcoffset() == dt.timedelta(0)


@given(signal_detected, texts, texts, st.sampled_from(["company_name", "raw_data"]))
def test_a_nul_anywhere_is_refused(event: SignalDetected, before: str, after: str, where: str) -> None:
    poison = f"{before}\x00{after}"
    if where == "raw_data":
        changed = msgspec.structs.replace(event, raw_data={**event.raw_data, "deep": [{"in": poison}]})
    else:
        changed = msgspec.structs.replace(event, company_name=poison)
    with pytest.raises(InvalidEvent, match="NUL character") as caught:
        REGISTRY.encode(changed)
    assert caught.value.field == where


@given(every_event)
def test_encoding_is_canonical(event: Event) -> None:
    _, _, data, normalised = REGISTRY.encode(event)
    _, _, again, _ = REGISTRY.encode(normalised)
    assert data == again


@given(every_event, st.integers(min_value=1, max_value=2**40), names, st.integers(min_value=0, max_value=2**52))
def test_recorded_rows_round_trip(event: Event, position: int, stream: str, recorded_at: int) -> None:
    name, schema_version, data, normalised = REGISTRY.encode(event)
    event_id = new_event_id()
    meta = msgspec.json.encode({"actor": "t", "n": 1})
    row: Row = (position, event_id.bytes, stream, 3, name, schema_version, recorded_at, meta, data, b"h" * 32)
    recorded = REGISTRY.record(row)
    assert recorded.position == position
    assert recorded.event_id == event_id
    assert recorded.stream == stream
    assert recorded.data == normalised
    assert to_micros(recorded.recorded_at) == recorded_at
    assert recorded.metadata == {"actor": "t", "n": 1}


@given(st.integers(min_value=-(2**50), max_value=2**52))
def test_micros_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


# -- ids --------------------------------------------------------------------


def _millis(when: dt.datetime) -> int:
    return to_micros(when) // 1000


@given(signal_detected)
def test_signal_detected_id_is_deterministic_and_time_ordered(event: SignalDetected) -> None:
    event_id = signal_event_id(event)
    assert event_id == signal_event_id(msgspec.structs.replace(event))
    assert event_id.int >> 80 == _millis(event.detected_at)
    assert event_id.variant == uuid.RFC_4122
    assert event_id.version == 8


def test_signal_detected_ids_never_change_across_versions() -> None:
    """Recorded ids are what makes re-detection idempotent: the formula may be optimised, never changed."""
    assert str(signal_event_id(detected())) == "019b92a4-4dc0-8003-ad75-f9bbf58360d0"
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert str(signal_event_id(detected(key="domain:bücher.de", detected_at=before_epoch))) == (
        "00000000-0000-8001-bc59-64ae5a0dec6f"
    )


@given(signal_detected)
def test_signal_detected_id_follows_its_documented_layout(event: SignalDetected) -> None:
    micros = to_micros(event.detected_at)
    key = f"{event.canonical_key}\x1f{event.signal_type}\x1f{event.source_api}\x1f{micros}"
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:9], "big")
    millis, sub = divmod(max(0, micros), 1000)
    value = (millis & (2**48 - 1)) << 80 | 0x8 << 76 | (sub << 2 | digest >> 62 & 0x3) << 64 | 0b10 << 62
    assert signal_event_id(event).int == value | digest & (2**62 - 1)


def test_signal_detected_id_depends_only_on_the_dedup_key() -> None:
    base = detected()
    same_key = detected(company_name="Other name", confidence=0.1, raw_data={"x": 1})
    assert signal_event_id(base) == signal_event_id(same_key)
    paris = dt.timezone(dt.timedelta(hours=1))
    same_instant = detected(detected_at=base.detected_at.astimezone(paris))
    assert signal_event_id(base) == signal_event_id(same_instant)
    for change in (
        {"key": "domain:other.ai"},
        {"signal_type": "sec_filing"},
        {"source_api": "sec"},
        {"detected_at": base.detected_at + dt.timedelta(microseconds=1)},
    ):
        assert signal_event_id(detected(**change)) != signal_event_id(base), change


def test_later_detections_sort_after_earlier_ones() -> None:
    first = detected(detected_at=dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC))
    second = detected(key="domain:aaa", detected_at=dt.datetime(2026, 1, 6, 9, 30, 0, 1000, tzinfo=dt.UTC))
    assert signal_event_id(first).bytes < signal_event_id(second).bytes


def test_generated_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    now_ms = to_micros(dt.datetime.now(dt.UTC)) // 1000
    assert abs(millis[-1] - now_ms) < 60_000


# -- the hash chain ---------------------------------------------------------


def _row(position: int = 1, **changes: Any) -> Row:
    fields: dict[str, Any] = {
        "position": position,
        "event_id": bytes(16),
        "stream": "company:a",
        "version": 1,
        "type": "SignalPushed",
        "schema_version": 1,
        "recorded_at": 1_700_000_000_000_000,
        "metadata": b"{}",
        "data": b'{"type":"SignalPushed","signal_id":1,"notion_page_id":"p"}',
        "hash": b"",
    }
    fields.update(changes)
    return tuple(fields.values())


@pytest.mark.parametrize(
    "change",
    [
        {"position": 2},
        {"event_id": b"\x01" * 16},
        {"stream": "company:b"},
        {"version": 2},
        {"type": "SignalRejected"},
        {"schema_version": 2},
        {"recorded_at": 1_700_000_000_000_001},
        {"metadata": b'{"a":1}'},
        {"data": b'{"type":"SignalPushed","signal_id":2,"notion_page_id":"p"}'},
    ],
)
def test_chain_hash_covers_every_envelope_field_and_the_data(change: dict[str, Any]) -> None:
    assert chain_hash(GENESIS_HASH, _row()) != chain_hash(GENESIS_HASH, _row(**change))


def test_chain_hash_covers_the_previous_hash_and_ignores_the_stored_hash() -> None:
    assert chain_hash(GENESIS_HASH, _row()) != chain_hash(b"\x01" * 32, _row())
    assert chain_hash(GENESIS_HASH, _row()) == chain_hash(GENESIS_HASH, _row(hash=b"anything"))
    # Field boundaries are unambiguous: moving bytes from stream to type changes the hash.
    assert chain_hash(GENESIS_HASH, _row(stream="ab", type="c")) != chain_hash(
        GENESIS_HASH, _row(stream="a", type="bc")
    )


# -- upcasting ----------------------------------------------------------------


class NoteV1(Event, frozen=True, kw_only=True, tag="Note"):
    text: str


class Note(Event, frozen=True, kw_only=True, tag="Note"):
    schema_version: ClassVar[int] = 3
    body: str
    author: str


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"body": data["text"]}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "author": "unknown"}


def test_upcasters_apply_one_version_at_a_time() -> None:
    registry = EventRegistry([Note], {("Note", 1): _v1_to_v2, ("Note", 2): _v2_to_v3})
    _, version, data, _ = EventRegistry([NoteV1]).encode(NoteV1(text="hello"))
    assert version == 1
    assert registry.decode("Note", 1, data) == Note(body="hello", author="unknown")
    assert registry.decode("Note", 2, b'{"type":"Note","body":"b"}') == Note(body="b", author="unknown")


def test_missing_upcaster_or_newer_version_is_a_schema_version_error() -> None:
    registry = EventRegistry([Note], {("Note", 2): _v2_to_v3})
    with pytest.raises(SchemaVersionError, match="no upcaster"):
        registry.decode("Note", 1, b'{"type":"Note","text":"x"}')
    with pytest.raises(SchemaVersionError, match="newer"):
        registry.decode("Note", 4, b'{"type":"Note","body":"x","author":"a"}')
    with pytest.raises(SchemaVersionError, match="not registered"):
        EventRegistry().decode("Note", 3, b"{}")


def test_registering_a_non_event_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        EventRegistry([dict])  # type: ignore[list-item]
