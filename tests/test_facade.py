"""The compatible facade (DESIGN.md "Compatible facade", "Conventions"; issue 3 point 4), on every backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import (
    AppendRequest,
    InvalidEvent,
    InvalidTransition,
    NotFound,
    RecordedEvent,
    Signal,
    SignalStore,
    SuppressionEntry,
    SuppressionSynced,
    company_stream,
    open_store,
    signal_store,
)
from eventstore.store import default_actor
from tests.conftest import FakeClock, detected

pytestmark = pytest.mark.anyio

ACME = "domain:acme.ai"
BETA = "domain:beta.io"
T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[SignalStore]:
    async with signal_store(store_url, clock=clock, actor="tester", background=False) as opened:
        yield opened


def signal_args(key: str = ACME, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "signal_type": "github_spike",
        "source_api": "github",
        "canonical_key": key,
        "company_name": "Acme Inc",
        "confidence": 0.85,
        "raw_data": {"stars": 120},
        "detected_at": T0,
    }
    args.update(changes)
    return args


async def events(store: SignalStore, from_position: int = 1) -> list[RecordedEvent]:
    return [e async for e in store.log.read_all(from_position=from_position)]


async def head(store: SignalStore) -> int:
    return await store.log.head_position()


def entry(key: str, page: str = "page", status: str = "Active") -> SuppressionEntry:
    return SuppressionEntry(canonical_key=key, notion_page_id=page, status=status)


# -- saving and reading signals -------------------------------------------------


async def test_save_signal_returns_the_position_of_its_signal_detected_event(store: SignalStore) -> None:
    await store.update_suppression_cache([entry(BETA)])  # position 1: ids are positions, not a counter
    signal_id = await store.save_signal(**signal_args())
    recorded = await events(store)
    assert signal_id == 2
    assert recorded[-1].position == signal_id and recorded[-1].type == "SignalDetected"
    assert recorded[-1].stream == company_stream(ACME)


async def test_get_signal_returns_every_field(store: SignalStore, clock: FakeClock) -> None:
    signal_id = await store.save_signal(**signal_args())
    signal = await store.get_signal(signal_id)
    assert signal == Signal(
        id=signal_id,
        signal_type="github_spike",
        source_api="github",
        canonical_key=ACME,
        company_name="Acme Inc",
        confidence=0.85,
        raw_data={"stars": 120},
        detected_at=T0,
        recorded_at=clock.now,
        status="pending",
        notion_page_id=None,
        rejection_reason=None,
        processed_at=None,
        metadata={},
    )


async def test_detected_at_defaults_to_the_store_clock(store: SignalStore, clock: FakeClock) -> None:
    args = signal_args()
    del args["detected_at"], args["raw_data"]
    signal = await store.get_signal(await store.save_signal(**args))
    assert signal is not None
    assert signal.detected_at == clock.now and signal.raw_data == {}


async def test_duplicate_save_signal_returns_the_existing_id_and_appends_nothing(store: SignalStore) -> None:
    first = await store.save_signal(**signal_args())
    before = await head(store)
    assert await store.save_signal(**signal_args()) == first
    # Same dedup key (key, type, source, detected_at) with different details: the first detection stands.
    assert await store.save_signal(**signal_args(confidence=0.1, company_name="Renamed", raw_data={})) == first
    assert await head(store) == before
    signal = await store.get_signal(first)
    assert signal is not None and signal.confidence == 0.85
    assert (await store.get_processing_stats())["total"] == 1


async def test_signals_differing_in_any_dedup_field_are_distinct(store: SignalStore) -> None:
    ids = [
        await store.save_signal(**signal_args()),
        await store.save_signal(**signal_args(BETA)),
        await store.save_signal(**signal_args(signal_type="incorporation")),
        await store.save_signal(**signal_args(source_api="webhook")),
        await store.save_signal(**signal_args(detected_at=T0 + dt.timedelta(microseconds=1))),
    ]
    assert len(set(ids)) == 5


async def test_get_signal_of_an_unknown_id_is_none(store: SignalStore) -> None:
    await store.update_suppression_cache([entry(ACME)])
    for unknown in (0, -1, 1, 999, 2**63, -(2**70)):  # position 1 exists but is not a signal
        assert await store.get_signal(unknown) is None


async def test_get_pending_signals_oldest_first_with_limit_and_filters(store: SignalStore) -> None:
    specs = [
        signal_args("domain:a", confidence=0.5),
        signal_args("domain:b", confidence=0.7, signal_type="incorporation", source_api="sec"),
        signal_args("domain:c", confidence=0.9),
        signal_args("domain:d", confidence=0.7, source_api="sec"),
        signal_args("domain:e", confidence=0.3, signal_type="incorporation"),
    ]
    # Saved newest detection first: "oldest first" is by id (position), not detected_at.
    for n, spec in enumerate(specs):
        spec["detected_at"] = T0 - dt.timedelta(hours=n)
    ids = [await store.save_signal(**spec) for spec in specs]
    await store.mark_pushed(ids[2], "page-c")

    async def pending(**kwargs: Any) -> list[int]:
        return [s.id for s in await store.get_pending_signals(**kwargs)]

    assert await pending() == [ids[0], ids[1], ids[3], ids[4]]
    assert await pending(limit=2) == [ids[0], ids[1]]
    assert await pending(limit=0) == []
    assert await pending(limit=-1) == [ids[0], ids[1], ids[3], ids[4]]  # no limit, as SQLite's LIMIT -1
    past = await store.as_of(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))  # replays the log: the same answers
    for limit in (0, 2, -1):
        assert [s.id for s in await past.get_pending_signals(limit=limit)] == await pending(limit=limit)
    assert await pending(signal_type="incorporation") == [ids[1], ids[4]]
    assert await pending(source_api="sec") == [ids[1], ids[3]]
    assert await pending(signal_type="incorporation", source_api="sec") == [ids[1]]
    assert await pending(min_confidence=0.7) == [ids[1], ids[3]]  # inclusive
    assert await pending(min_confidence=0.7000001) == []
    assert await pending(min_confidence=0.0, limit=3) == [ids[0], ids[1], ids[3]]
    assert all(s.status == "pending" for s in await store.get_pending_signals())


async def test_get_signals_for_company_oldest_first_in_every_status(store: SignalStore) -> None:
    later = await store.save_signal(**signal_args(detected_at=T0 + dt.timedelta(days=1)))
    other = await store.save_signal(**signal_args(BETA))
    earlier = await store.save_signal(**signal_args(detected_at=T0 - dt.timedelta(days=1), signal_type="x"))
    third = await store.save_signal(**signal_args(signal_type="y"))
    await store.mark_pushed(later, "page-1")
    await store.mark_rejected(earlier, "stale")
    signals = await store.get_signals_for_company(ACME)
    assert [s.id for s in signals] == [later, earlier, third]
    assert [s.status for s in signals] == ["pushed", "rejected", "pending"]
    assert [s.id for s in await store.get_signals_for_company(BETA)] == [other]
    assert await store.get_signals_for_company("domain:unknown") == []


# -- processing state machine ---------------------------------------------------


async def test_mark_pushed_records_page_metadata_and_time(store: SignalStore, clock: FakeClock) -> None:
    signal_id = await store.save_signal(**signal_args())
    clock.advance(hours=1)
    assert await store.mark_pushed(signal_id, "notion-1", metadata={"score": 0.9}) is True
    signal = await store.get_signal(signal_id)
    assert signal is not None
    assert (signal.status, signal.notion_page_id, signal.metadata) == ("pushed", "notion-1", {"score": 0.9})
    assert signal.processed_at == clock.now and signal.rejection_reason is None
    assert await store.get_pending_signals() == []


async def test_mark_rejected_records_reason_and_metadata(store: SignalStore, clock: FakeClock) -> None:
    signal_id = await store.save_signal(**signal_args())
    assert await store.mark_rejected(signal_id, reason="duplicate", metadata={"by": "gate"}) is True
    signal = await store.get_signal(signal_id)
    assert signal is not None
    assert (signal.status, signal.rejection_reason, signal.metadata) == ("rejected", "duplicate", {"by": "gate"})
    assert signal.notion_page_id is None and signal.processed_at == clock.now


async def test_repeating_a_transition_is_idempotent_and_appends_nothing(store: SignalStore) -> None:
    pushed = await store.save_signal(**signal_args())
    rejected = await store.save_signal(**signal_args(BETA))
    await store.mark_pushed(pushed, "page-1", metadata={"n": 1})
    await store.mark_rejected(rejected, "stale")
    before = await head(store)
    assert await store.mark_pushed(pushed, "page-1") is False
    assert await store.mark_pushed(pushed, "page-1", metadata={"n": 2}) is False
    assert await store.mark_rejected(rejected, "stale") is False
    assert await head(store) == before
    signal = await store.get_signal(pushed)
    assert signal is not None and signal.metadata == {"n": 1}


@pytest.mark.parametrize(
    "first, second",
    [
        (("push", "page-1"), ("reject", "late")),
        (("reject", "stale"), ("push", "page-1")),
        (("push", "page-1"), ("push", "page-2")),
        (("reject", "stale"), ("reject", "other reason")),
    ],
)
async def test_a_conflicting_transition_raises_and_appends_nothing(
    store: SignalStore, first: tuple[str, str], second: tuple[str, str]
) -> None:
    signal_id = await store.save_signal(**signal_args())

    async def mark(action: tuple[str, str]) -> bool:
        verb, arg = action
        if verb == "push":
            return await store.mark_pushed(signal_id, arg)
        return await store.mark_rejected(signal_id, arg)

    await mark(first)
    before, state = await head(store), await store.get_signal(signal_id)
    with pytest.raises(InvalidTransition, match=str(signal_id)):
        await mark(second)
    assert await head(store) == before
    assert await store.get_signal(signal_id) == state


async def test_marking_an_unknown_signal_raises_not_found_and_appends_nothing(store: SignalStore) -> None:
    await store.update_suppression_cache([entry(ACME)])  # position 1: an event, but not a signal
    before = await head(store)
    for unknown in (1, 2, 999, 0, -5, 2**63):
        with pytest.raises(NotFound):
            await store.mark_pushed(unknown, "page")
        with pytest.raises(NotFound):
            await store.mark_rejected(unknown, "reason")
    assert await head(store) == before


async def test_invalid_transition_arguments_are_rejected_before_appending(store: SignalStore) -> None:
    signal_id = await store.save_signal(**signal_args())
    before = await head(store)
    with pytest.raises(InvalidEvent):
        await store.mark_pushed(signal_id, "")
    with pytest.raises(InvalidEvent):
        await store.mark_rejected(signal_id, "")
    assert await head(store) == before
    assert (await store.get_processing_stats())["pending"] == 1


async def test_processing_stats_count_by_status(store: SignalStore) -> None:
    assert await store.get_processing_stats() == {"pending": 0, "pushed": 0, "rejected": 0, "total": 0}
    ids = [await store.save_signal(**signal_args(f"domain:{n}")) for n in range(6)]
    await store.mark_pushed(ids[0], "p0")
    await store.mark_pushed(ids[1], "p1")
    await store.mark_rejected(ids[2], "no")
    assert await store.get_processing_stats() == {"pending": 3, "pushed": 2, "rejected": 1, "total": 6}


# -- statistics -----------------------------------------------------------------


async def test_database_stats(store: SignalStore, store_url: str) -> None:
    first = await store.save_signal(**signal_args())
    await store.save_signal(**signal_args(BETA))
    await store.mark_pushed(first, "page")
    await store.update_suppression_cache([entry(ACME), entry("domain:gone")], ttl_days=0)
    stats = await store.get_database_stats()
    assert stats["events"] == 5 == stats["head_position"]
    assert stats["events_by_type"] == {"SignalDetected": 2, "SignalPushed": 1, "SuppressionSynced": 2}
    assert stats["signals"] == 2
    assert stats["suppression_entries"] == 2  # expired but not yet cleaned rows count
    if "://" not in store_url:
        assert stats["file_size_bytes"] > 0
    assert {"signals", "processing", "suppression"} <= set(stats["projections"])
    for projection in stats["projections"].values():
        assert projection["version"] >= 1
        assert projection["checkpoint"] == 5 and projection["lag"] == 0


# -- suppression cache ------------------------------------------------------------


async def test_check_suppression_returns_the_live_entry(store: SignalStore, clock: FakeClock) -> None:
    assert await store.check_suppression(ACME) is None
    assert await store.update_suppression_cache([entry(ACME, "page-1", "Active")]) == 1
    found = await store.check_suppression(ACME)
    assert found == SuppressionEntry(
        canonical_key=ACME,
        notion_page_id="page-1",
        status="Active",
        expires_at=clock.now + dt.timedelta(days=7),
        cached_at=clock.now,
    )
    assert await store.check_suppression(BETA) is None


async def test_an_entry_expires_exactly_at_expires_at(store: SignalStore, clock: FakeClock) -> None:
    await store.update_suppression_cache([entry(ACME)], ttl_days=2)
    expires_at = clock.now + dt.timedelta(days=2)
    clock.now = expires_at - dt.timedelta(microseconds=1)
    assert await store.check_suppression(ACME) is not None
    clock.now = expires_at
    assert await store.check_suppression(ACME) is None


async def test_a_new_sync_replaces_the_entry_and_its_expiry(store: SignalStore, clock: FakeClock) -> None:
    await store.update_suppression_cache([entry(ACME, "old")], ttl_days=1)
    clock.advance(days=2)
    assert await store.check_suppression(ACME) is None
    await store.update_suppression_cache([entry(ACME, "new", "Passed")], ttl_days=0.5)
    found = await store.check_suppression(ACME)
    assert found is not None
    assert (found.notion_page_id, found.status) == ("new", "Passed")
    assert found.expires_at == clock.now + dt.timedelta(hours=12)
    assert (await store.get_database_stats())["suppression_entries"] == 1


async def test_ttl_zero_means_already_expired(store: SignalStore) -> None:
    await store.update_suppression_cache([entry(ACME)], ttl_days=0)
    assert await store.check_suppression(ACME) is None
    assert (await store.get_database_stats())["suppression_entries"] == 1
    assert await store.clean_expired_cache() == 1


@pytest.mark.parametrize("ttl", [-1, -0.001, float("nan"), float("inf"), 1e9, "7", None])
async def test_an_invalid_ttl_is_rejected_and_appends_nothing(store: SignalStore, ttl: Any) -> None:
    with pytest.raises(InvalidEvent, match="ttl_days"):
        await store.update_suppression_cache([entry(ACME)], ttl_days=ttl)
    assert await head(store) == 0


async def test_update_suppression_cache_with_no_entries_appends_nothing(store: SignalStore) -> None:
    assert await store.update_suppression_cache([]) == 0
    assert await head(store) == 0


async def test_ten_thousand_entries_in_one_atomic_append(
    store: SignalStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    append_batch = store.log.append_batch

    async def counting(requests: list[AppendRequest]) -> Any:
        calls.append(len(requests))
        return await append_batch(requests)

    monkeypatch.setattr(store.log, "append_batch", counting)
    entries = [entry(f"domain:c{n}.com", f"page-{n}") for n in range(10_000)]
    assert await store.update_suppression_cache(entries, ttl_days=7) == 10_000
    assert calls == [10_000]
    recorded = await events(store)
    assert [e.position for e in recorded] == list(range(1, 10_001))
    assert {e.data.expires_at for e in recorded if isinstance(e.data, SuppressionSynced)} == {
        clock.now + dt.timedelta(days=7)
    }
    assert len({e.correlation_id for e in recorded}) == 1, "one call, one correlation id"
    assert (await store.get_database_stats())["suppression_entries"] == 10_000
    found = await store.check_suppression("domain:c9999.com")
    assert found is not None and found.notion_page_id == "page-9999"


async def test_a_bad_entry_fails_the_whole_sync(store: SignalStore) -> None:
    entries = [entry(f"domain:c{n}.com") for n in range(500)] + [entry("")]
    with pytest.raises(InvalidEvent):
        await store.update_suppression_cache(entries)
    assert await head(store) == 0
    assert await store.check_suppression("domain:c0.com") is None


async def test_clean_expired_cache_removes_expired_rows_and_returns_the_count(
    store: SignalStore, clock: FakeClock
) -> None:
    await store.update_suppression_cache([entry("domain:a"), entry("domain:b")], ttl_days=1)
    await store.update_suppression_cache([entry("domain:c")], ttl_days=3)
    assert await store.clean_expired_cache() == 0
    clock.advance(days=1)  # a and b expire exactly now
    assert await store.clean_expired_cache() == 2
    assert await store.clean_expired_cache() == 0
    assert (await store.get_database_stats())["suppression_entries"] == 1
    assert await store.check_suppression("domain:c") is not None
    assert await head(store) == 3, "cleanup is read-table housekeeping: the log keeps every sync"


async def test_expired_rows_are_cleaned_automatically(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, cleanup_interval=0.01) as store:
        await store.update_suppression_cache([entry(ACME)], ttl_days=0)
        await store.update_suppression_cache([entry(BETA)], ttl_days=1)
        with anyio.fail_after(10):
            while (await store.get_database_stats())["suppression_entries"] != 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert await store.check_suppression(BETA) is not None


# -- batches and units of work ------------------------------------------------------


async def test_save_signals_is_one_atomic_append_with_the_duplicate_rule_per_signal(
    store: SignalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = await store.save_signal(**signal_args())
    calls: list[int] = []
    append_batch = store.log.append_batch

    async def counting(requests: list[AppendRequest]) -> Any:
        calls.append(len(requests))
        return await append_batch(requests)

    monkeypatch.setattr(store.log, "append_batch", counting)
    ids = await store.save_signals(
        [
            signal_args(BETA),
            signal_args(),  # duplicate of an existing signal
            signal_args("domain:c"),
            signal_args(BETA, confidence=0.2),  # duplicate within the batch, other details
            detected("domain:d", detected_at=T0),  # a SignalDetected is accepted too
            signal_args(confidence=0.99),  # duplicate of the existing one, other details
        ]
    )
    assert calls == [3], "one append for the batch, one request per company stream"
    beta, c, d = ids[0], ids[2], ids[4]
    assert ids == [beta, existing, c, beta, d, existing]
    assert sorted({beta, c, d}) == [2, 3, 4]
    assert await head(store) == 4
    recorded = await events(store, 2)
    assert len({e.correlation_id for e in recorded}) == 1, "one call, one correlation id"
    signal = await store.get_signal(beta)
    assert signal is not None and signal.confidence == 0.85
    assert await store.save_signals([]) == []
    assert await store.save_signals([signal_args(BETA)]) == [beta]
    assert await head(store) == 4


async def test_save_signals_appends_nothing_if_one_signal_is_invalid(store: SignalStore) -> None:
    with pytest.raises(InvalidEvent, match="confidence"):
        await store.save_signals([signal_args(f"domain:{n}") for n in range(50)] + [signal_args(confidence=1.5)])
    assert await head(store) == 0
    assert await store.get_pending_signals() == []


async def test_transaction_commits_several_calls_together(store: SignalStore) -> None:
    async with store.transaction():
        first = await store.save_signal(**signal_args())
        await store.mark_pushed(first, "page")
        await store.update_suppression_cache([entry(ACME)])
        # Reads inside the unit of work see its writes.
        signal = await store.get_signal(first)
        assert signal is not None and signal.status == "pushed"
    assert await head(store) == 3
    assert (await store.get_processing_stats())["pushed"] == 1
    assert await store.check_suppression(ACME) is not None


class Boom(Exception):
    pass


async def test_transaction_rolls_back_events_and_read_rows_on_exception(store: SignalStore) -> None:
    kept = await store.save_signal(**signal_args(BETA))
    # Sizes are not content: PostgreSQL keeps rolled-back rows' space until VACUUM.
    before_stats = _without_sizes(await store.get_database_stats())
    with pytest.raises(Boom):
        async with store.transaction():
            first = await store.save_signal(**signal_args())
            await store.save_signals([signal_args("domain:c"), signal_args("domain:d")])
            await store.mark_pushed(first, "page")
            await store.mark_rejected(kept, "nope")
            await store.update_suppression_cache([entry(ACME)] * 3)
            raise Boom
    assert _without_sizes(await store.get_database_stats()) == before_stats
    assert await store.get_signal(first) is None
    assert await store.check_suppression(ACME) is None
    signal = await store.get_signal(kept)
    assert signal is not None and signal.status == "pending"
    # The store keeps working, and the rolled-back positions are never seen by anyone.
    again = await store.save_signal(**signal_args())
    assert (await store.get_signal(again)) is not None
    assert [s.id for s in await store.get_pending_signals()] == [kept, again]
    last = await head(store)
    assert all(s.lag == 0 and s.checkpoint == last for s in await store.projection_status())


async def test_a_failed_call_inside_a_transaction_does_not_break_it(store: SignalStore) -> None:
    async with store.transaction():
        first = await store.save_signal(**signal_args())
        await store.mark_rejected(first, "no")
        with pytest.raises(InvalidTransition):
            await store.mark_pushed(first, "page")
        second = await store.save_signal(**signal_args(BETA))
    assert await head(store) == 3
    assert [s.id for s in await store.get_pending_signals()] == [second]


# -- read your writes ----------------------------------------------------------------


@pytest.mark.parametrize("background", [False, True])
async def test_read_your_writes(store_url: str, clock: FakeClock, background: bool) -> None:
    async with signal_store(store_url, clock=clock, background=background) as store:
        signal_id = await store.save_signal(**signal_args())
        assert [s.id for s in await store.get_pending_signals()] == [signal_id]
        await store.mark_pushed(signal_id, "page")
        assert await store.get_pending_signals() == []
        assert (await store.get_processing_stats())["pushed"] == 1
        await store.update_suppression_cache([entry(ACME)])
        assert await store.check_suppression(ACME) is not None
        ids = await store.save_signals([signal_args(BETA), signal_args("domain:c")])
        assert [s.id for s in await store.get_pending_signals()] == ids


async def test_read_your_writes_after_another_writer_appended(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store, open_store(store_url) as plain:
        await plain.append(company_stream(BETA), [detected(BETA)])
        signal_id = await store.save_signal(**signal_args())
        assert [s.id for s in await store.get_pending_signals()] == [1, signal_id]
        await plain.append(company_stream("domain:c"), [detected("domain:c")])
        await store.mark_rejected(signal_id, "no")
        assert [s.id for s in await store.get_pending_signals()] == [1, 3]


# -- metadata ---------------------------------------------------------------------------


async def test_writes_record_actor_and_correlation_id_from_keywords(store: SignalStore) -> None:
    signal_id = await store.save_signal(**signal_args(), actor="github-collector", correlation_id="run-1")
    await store.save_signals([signal_args(BETA)], actor="sec-collector", correlation_id="run-2")
    await store.mark_pushed(signal_id, "page", actor="gate", correlation_id="run-3")
    other = await store.save_signal(**signal_args("domain:c"))
    await store.mark_rejected(other, "no", actor="gate", correlation_id="run-4")
    await store.update_suppression_cache([entry(ACME)], actor="notion-sync", correlation_id="run-5")
    recorded = await events(store)
    assert [
        (e.type, e.actor, e.correlation_id) for e in recorded if e.correlation_id != recorded[3].correlation_id
    ] == [
        ("SignalDetected", "github-collector", "run-1"),
        ("SignalDetected", "sec-collector", "run-2"),
        ("SignalPushed", "gate", "run-3"),
        ("SignalRejected", "gate", "run-4"),
        ("SuppressionSynced", "notion-sync", "run-5"),
    ]
    assert recorded[3].actor == "tester", "no actor keyword: the store's default"
    assert recorded[3].correlation_id, "a correlation id is always recorded"


async def test_actor_defaults_to_the_process_name(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await store.save_signal(**signal_args())
        (recorded,) = await events(store)
    assert recorded.actor == default_actor()


async def test_metadata_of_a_transaction_call_is_its_own(store: SignalStore) -> None:
    async with store.transaction():
        await store.save_signal(**signal_args(), actor="a", correlation_id="c1")
        await store.save_signal(**signal_args(BETA), actor="b")
    first, second = await events(store)
    assert (first.actor, first.correlation_id) == ("a", "c1")
    assert second.actor == "b" and second.correlation_id not in (None, "c1")


# -- code written against the old storage layer ---------------------------------------------


async def test_the_reference_usage_examples_keep_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples of reference/signal-storage-layer-summary.md, nearly verbatim (default path, default options)."""
    from eventstore import SuppressionEntry, signal_store

    monkeypatch.chdir(tmp_path)

    # Basic usage
    async with signal_store("signals.db") as store:
        signal_id = await store.save_signal(
            signal_type="github_spike",
            source_api="github",
            canonical_key="domain:acme.ai",
            company_name="Acme Inc",
            confidence=0.85,
            raw_data={"stars": 120, "forks": 7},
        )
    assert await anyio.Path(tmp_path / "signals.db").exists()

    # With collectors: check suppression, then save
    async def collect(canonical_key: str) -> int | None:
        async with signal_store() as store:
            if await store.check_suppression(canonical_key):
                return None  # Skip - already in Notion
            return await store.save_signal(
                signal_type="incorporation",
                source_api="sec_edgar",
                canonical_key=canonical_key,
                company_name="Beta LLC",
                confidence=0.7,
                raw_data={"form": "D"},
            )

    beta_id = await collect("domain:beta.io")
    assert beta_id is not None

    # With the Notion connector: sync the suppression cache
    notion_entries = [{"canonical_key": "domain:acme.ai", "id": "notion-acme", "status": "Active"}]
    async with signal_store() as store:
        entries = [
            SuppressionEntry(canonical_key=e["canonical_key"], notion_page_id=e["id"], status=e["status"])
            for e in notion_entries
        ]
        await store.update_suppression_cache(entries)

    # Check suppression
    async with signal_store() as store:
        entry = await store.check_suppression("domain:acme.ai")
        assert entry
        assert f"Already in Notion: {entry.notion_page_id}" == "Already in Notion: notion-acme"
    assert await collect("domain:acme.ai") is None

    # With the verification gate
    async with signal_store() as store:
        signals = await store.get_signals_for_company("domain:acme.ai")
        assert [s.id for s in signals] == [signal_id]
        await store.mark_pushed(signal_id, "notion-acme")

    # Process pending
    async with signal_store() as store:
        pending = await store.get_pending_signals(limit=50)
        for signal in pending:
            await store.mark_pushed(signal.id, f"notion-{signal.id}")
        stats = await store.get_processing_stats()
        assert stats == {"pending": 0, "pushed": 2, "rejected": 0, "total": 2}
        removed = await store.clean_expired_cache()
        assert removed == 0
        db = await store.get_database_stats()
        assert db["signals"] == 2 and db["suppression_entries"] == 1

    # Transaction support with rollback
    async with signal_store() as store:
        with pytest.raises(RuntimeError):
            async with store.transaction():
                new_id = await store.save_signal(
                    signal_type="github_spike",
                    source_api="github",
                    canonical_key="domain:gamma.dev",
                    company_name="Gamma",
                    confidence=0.5,
                    raw_data={},
                )
                await store.mark_rejected(new_id, reason="duplicate", metadata={"note": "x"})
                raise RuntimeError("gate crashed")
        assert await store.get_signal(new_id) is None
        assert await store.get_signals_for_company("domain:gamma.dev") == []


async def test_save_signals_accepts_dicts_without_the_optional_fields(store: SignalStore, clock: FakeClock) -> None:
    minimal = {k: v for k, v in signal_args().items() if k not in ("raw_data", "detected_at")}
    (signal_id,) = await store.save_signals([minimal])
    signal = await store.get_signal(signal_id)
    assert signal is not None and (signal.raw_data, signal.detected_at) == ({}, clock.now)


def _without_sizes(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in stats.items() if not key.endswith("size_bytes")}
