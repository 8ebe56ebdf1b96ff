"""Audit: history, why, events, and as-of answers equal to a store built only up to that time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventstore import NotFound, SignalStore, SuppressionEntry, signal_store
from eventstore.audit import AsOfView
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

Step = Callable[[SignalStore], Awaitable[object]]
T0 = dt.datetime(2026, 1, 6, 12, 0, tzinfo=dt.UTC)


def facade(url: str, clock: FakeClock) -> SignalStore:
    return signal_store(url, clock=clock, background=False, cleanup_interval=None, actor="collector")


def _save(key: str, name: str, kind: str = "github_spike", confidence: float = 0.8) -> Step:
    async def step(store: SignalStore) -> object:
        return await store.save_signal(kind, "github", key, name, confidence, {"note": name})

    return step


def _push(signal_id: int, page: str) -> Step:
    async def step(store: SignalStore) -> object:
        return await store.mark_pushed(signal_id, page, {"by": "gate"}, actor="gate")

    return step


def _reject(signal_id: int, reason: str) -> Step:
    async def step(store: SignalStore) -> object:
        return await store.mark_rejected(signal_id, reason, actor="gate", correlation_id="run-7")

    return step


def _sync(key: str, page: str, ttl_days: float) -> Step:
    async def step(store: SignalStore) -> object:
        entry = SuppressionEntry(canonical_key=key, notion_page_id=page, status="Active")
        return await store.update_suppression_cache([entry], ttl_days=ttl_days, actor="notion-sync")

    return step


# One step per minute; ids are positions: acme=1, beta=2, acme(sec)=3, gamma=5.
STEPS: list[Step] = [
    _save("domain:acme.ai", "Acme Inc"),
    _save("domain:beta.io", "Beta", confidence=0.4),
    _save("domain:acme.ai", "Acme Inc", kind="sec_filing", confidence=0.95),
    _sync("domain:acme.ai", "page-acme", ttl_days=0.002),  # expires ~3 minutes later
    _save("domain:gamma.dev", "Gamma"),
    _push(1, "page-1"),
    _reject(2, "too small"),
    _push(3, "page-3"),
]
KEYS = ("domain:acme.ai", "domain:beta.io", "domain:gamma.dev", "domain:nobody")


async def build(url: str, steps: list[Step]) -> FakeClock:
    clock = FakeClock(T0)
    async with facade(url, clock) as store:
        for step in steps:
            clock.advance(minutes=1)
            await step(store)
    return clock


async def answers(store: SignalStore | AsOfView) -> list[object]:
    out: list[object] = [await store.get_processing_stats(), await store.get_pending_signals(limit=100)]
    out.append(await store.get_pending_signals(limit=1, min_confidence=0.5))
    for key in KEYS:
        out += [await store.get_signals_for_company(key), await store.check_suppression(key)]
    out += [await store.get_signal(i) for i in range(0, 10)]
    return out


async def test_as_of_equals_a_store_built_only_up_to_that_time(store_url: str, tmp_path: Path) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock(T0 + dt.timedelta(days=1))) as full:
        for done in range(len(STEPS) + 1):
            when = T0 + dt.timedelta(minutes=done)  # exactly the recorded_at of the last step applied
            view = await full.as_of(when)
            prefix = f"{tmp_path}/prefix_{done}.db"
            await build(prefix, STEPS[:done])
            async with facade(prefix, FakeClock(when)) as partial:
                assert await answers(view) == await answers(partial), f"as of step {done}"


async def test_as_of_includes_events_recorded_exactly_at_that_time(store_url: str) -> None:
    await build(store_url, STEPS[:1])
    async with facade(store_url, FakeClock()) as store:
        signal = await store.get_signal(1)
        assert signal is not None
        assert await (await store.as_of(signal.recorded_at)).get_signal(1) == signal
        earlier = await store.as_of(signal.recorded_at - dt.timedelta(microseconds=1))
        assert await earlier.get_signal(1) is None
        assert await earlier.get_processing_stats() == {"pending": 0, "pushed": 0, "rejected": 0, "total": 0}


class TickingClock(FakeClock):
    """A clock that moves on a millisecond each time it is read, as a real one does."""

    def __call__(self) -> dt.datetime:
        return self.advance(milliseconds=1)


async def test_as_of_never_shows_part_of_one_call(store_url: str) -> None:
    async with facade(store_url, TickingClock()) as store:
        entries = [SuppressionEntry(canonical_key=key, notion_page_id=f"page-{key}") for key in ("a", "b")]
        await store.update_suppression_cache(entries)
        first, second = (await store.history("a"))[0], (await store.history("b"))[0]
        assert first.recorded_at == second.recorded_at
        view = await store.as_of(first.recorded_at)
        assert [await view.check_suppression(key) is not None for key in ("a", "b")] == [True, True]


async def test_as_of_never_shows_part_of_a_unit_of_work(store_url: str) -> None:
    async with facade(store_url, TickingClock()) as store:
        await _save("domain:before.ai", "Before")(store)
        async with store.transaction():
            first = await _save("domain:acme.ai", "Acme Inc")(store)
            await _save("domain:beta.io", "Beta")(store)
            async with store.transaction():  # a savepoint: still the same unit
                await _save("domain:gamma.dev", "Gamma")(store)
        await _save("domain:after.ai", "After")(store)
        recorded = [event.recorded_at async for event in store.log.read_all()]
        assert recorded[1] == recorded[2] == recorded[3] and recorded[0] < recorded[1] < recorded[4]
        assert isinstance(first, int)
        signal = await store.get_signal(first)
        assert signal is not None
        stats = await (await store.as_of(signal.recorded_at)).get_processing_stats()
        assert stats["total"] == 4


async def test_events_need_an_aware_since(store_url: str) -> None:
    await build(store_url, STEPS[:1])
    async with facade(store_url, FakeClock()) as store:
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.events(since=dt.datetime(2026, 1, 1))


async def test_as_of_needs_an_aware_time(store_url: str) -> None:
    await build(store_url, STEPS[:1])
    async with facade(store_url, FakeClock()) as store:
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.as_of(dt.datetime(2026, 1, 1))


async def test_history_lists_every_event_of_the_company_with_its_envelope(store_url: str) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock()) as store:
        history = await store.history("domain:acme.ai")
        assert [e.type for e in history] == [
            "SignalDetected", "SignalDetected", "SuppressionSynced", "SignalPushed", "SignalPushed",
        ]  # fmt: skip
        assert [e.version for e in history] == [1, 2, 3, 4, 5]
        assert [e.actor for e in history] == ["collector", "collector", "notion-sync", "gate", "gate"]
        assert all(e.correlation_id for e in history)
        assert history[0].recorded_at == T0 + dt.timedelta(minutes=1)
        with pytest.raises(NotFound, match="domain:nobody"):
            await store.history("domain:nobody")


async def test_why_tells_the_story_of_a_pushed_signal(store_url: str) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock()) as store:
        story = await store.why(3)
        assert story.signal == await store.get_signal(3)
        assert [e.type for e in story.events] == ["SignalDetected", "SignalPushed"]
        assert [e.type for e in story.suppression] == ["SuppressionSynced"]
        text = str(story)
        assert "Detected by collector from source github" in text
        assert "recorded at 2026-01-06T12:03:00+00:00" in text
        assert "Suppression for domain:acme.ai: Notion page page-acme" in text
        assert "Pushed by gate to Notion page page-3" in text


async def test_why_says_whether_the_suppression_was_known_at_detection(store_url: str) -> None:
    steps = [
        _save("domain:acme.ai", "Acme Inc"),  # 1: detected before the company reached Notion
        _sync("domain:acme.ai", "page-acme", ttl_days=1),  # 2
        _save("domain:acme.ai", "Acme Inc", kind="sec_filing"),  # 3: detected while suppressed
    ]
    await build(store_url, steps)
    async with facade(store_url, FakeClock()) as store:
        assert "(synced after detection)" in str(await store.why(1))
        assert "(live at detection)" in str(await store.why(3))


async def test_why_tells_a_rejection_and_a_pending_signal(store_url: str) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock()) as store:
        assert "Rejected by gate at 2026-01-06T12:07:00+00:00: too small" in str(await store.why(2))
        pending = str(await store.why(5))
        assert "status pending" in pending and "Not processed yet" in pending


async def test_why_of_an_unknown_id_is_not_found(store_url: str) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock()) as store:
        for bad in (0, 4, 99):  # 4 is a SuppressionSynced, not a signal
            with pytest.raises(NotFound, match=f"no signal with id {bad}"):
                await store.why(bad)


async def test_events_filters_by_type_stream_actor_correlation_time_and_limit(store_url: str) -> None:
    await build(store_url, STEPS)
    async with facade(store_url, FakeClock()) as store:
        assert [e.position for e in await store.events(types=["SignalPushed"])] == [6, 8]
        assert [e.position for e in await store.events(stream_prefix="company:domain:acme")] == [1, 3, 4, 6, 8]
        assert [e.position for e in await store.events(actor="gate")] == [6, 7, 8]
        assert [e.position for e in await store.events(correlation_id="run-7")] == [7]
        minute = dt.timedelta(minutes=1)
        window = await store.events(since=T0 + 3 * minute, until=T0 + 5 * minute)
        assert [e.position for e in window] == [3, 4, 5]  # both ends inclusive
        assert [e.position for e in await store.events(actor="collector", limit=2)] == [1, 2]
        assert await store.events(types=["SignalPushed"], until=T0) == []
