"""The facade against a plain-Python model of the old mutable store (reference document), step by step:
saves and duplicate saves, pushes and rejections, suppression syncs, clock advances, cleanup, rolled-back
units of work and reopening; every query is checked after every step."""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventstore import InvalidTransition, NotFound, SignalStore, SuppressionEntry, signal_store
from tests.conftest import FakeClock

T = TypeVar("T")
T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)
KEYS = ("domain:a", "domain:b", "domain:c")
TYPES = ("github_spike", "incorporation")
SOURCES = ("github", "sec")


@dataclass
class ModelSignal:
    id: int
    key: str
    signal_type: str
    source_api: str
    confidence: float
    status: str = "pending"
    page: str | None = None
    reason: str | None = None


@dataclass
class Model:
    signals: dict[int, ModelSignal] = field(default_factory=dict)
    dedup: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    suppression: dict[str, tuple[str, str, dt.datetime]] = field(default_factory=dict)


class Boom(Exception):
    pass


class FacadeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.clock = FakeClock()
        self.stack = contextlib.ExitStack()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = str(Path(self.tmp.name) / "signals.db")
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal())
        self.store = self._open()

    def _open(self) -> SignalStore:
        opened = signal_store(self.path, clock=self.clock, actor="machine", background=False)
        return self.stack.enter_context(self.portal.wrap_async_context_manager(opened))

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return await fn(*args, **kwargs)

        return self.portal.call(run)

    def teardown(self) -> None:
        try:
            self.stack.close()
        finally:
            self.tmp.cleanup()

    # -- rules ------------------------------------------------------------------

    @rule(
        key=st.sampled_from(KEYS),
        signal_type=st.sampled_from(TYPES),
        source=st.sampled_from(SOURCES),
        minute=st.integers(0, 3),
        confidence=st.sampled_from((0.0, 0.3, 0.5, 0.8, 1.0)),
    )
    def save(self, key: str, signal_type: str, source: str, minute: int, confidence: float) -> None:
        signal_id = self.call(
            self.store.save_signal,
            signal_type=signal_type,
            source_api=source,
            canonical_key=key,
            company_name=key,
            confidence=confidence,
            raw_data={"minute": minute},
            detected_at=T0 + dt.timedelta(minutes=minute),
        )
        self._record(signal_id, key, signal_type, source, minute, confidence)

    def _record(self, signal_id: int, key: str, signal_type: str, source: str, minute: int, conf: float) -> None:
        dedup = (key, signal_type, source, minute)
        if dedup in self.model.dedup:
            assert signal_id == self.model.dedup[dedup], "a duplicate returns the existing id"
        else:
            assert signal_id > max(self.model.signals, default=0), "ids grow"
            self.model.dedup[dedup] = signal_id
            self.model.signals[signal_id] = ModelSignal(signal_id, key, signal_type, source, conf)

    @rule(keys=st.lists(st.sampled_from(KEYS), max_size=4), minute=st.integers(0, 3))
    def save_many(self, keys: list[str], minute: int) -> None:
        batch = [
            dict(
                signal_type="github_spike",
                source_api="github",
                canonical_key=k,
                company_name=k,
                confidence=0.5,
                detected_at=T0 + dt.timedelta(minutes=minute),
            )
            for k in keys
        ]
        ids = self.call(self.store.save_signals, batch)
        for k, signal_id in zip(keys, ids, strict=True):
            self._record(signal_id, k, "github_spike", "github", minute, 0.5)

    @precondition(lambda self: bool(self.model.signals))
    @rule(data=st.data(), push=st.booleans(), arg=st.sampled_from(("a", "b")))
    def decide(self, data: st.DataObject, push: bool, arg: str) -> None:
        signal = self.model.signals[data.draw(st.sampled_from(sorted(self.model.signals)))]
        wanted = "pushed" if push else "rejected"
        same = signal.status == wanted and (signal.page if push else signal.reason) == arg
        try:
            if push:
                result = self.call(self.store.mark_pushed, signal.id, arg)
            else:
                result = self.call(self.store.mark_rejected, signal.id, arg)
        except InvalidTransition:
            assert signal.status != "pending" and not same
            return
        if same:
            assert result is False
            return
        assert signal.status == "pending" and result is True
        signal.status = wanted
        signal.page, signal.reason = (arg, None) if push else (None, arg)

    @rule(unknown=st.sampled_from((0, -1, 10**6)))
    def decide_unknown(self, unknown: int) -> None:
        try:
            self.call(self.store.mark_pushed, unknown, "p")
        except NotFound:
            return
        raise AssertionError("marking an unknown id must raise NotFound")

    @rule(
        keys=st.lists(st.sampled_from(KEYS), max_size=3),
        page=st.sampled_from(("n1", "n2")),
        ttl=st.sampled_from((0, 0.5, 1, 7)),
    )
    def sync(self, keys: list[str], page: str, ttl: float) -> None:
        entries = [SuppressionEntry(canonical_key=k, notion_page_id=page, status="Active") for k in keys]
        assert self.call(self.store.update_suppression_cache, entries, ttl) == len(keys)
        for k in keys:
            self.model.suppression[k] = (page, "Active", self.clock.now + dt.timedelta(days=ttl))

    @rule(hours=st.sampled_from((1, 12, 24, 24 * 7)))
    def advance(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @rule()
    def clean(self) -> None:
        expired = [k for k, (_, _, expires) in self.model.suppression.items() if expires <= self.clock.now]
        assert self.call(self.store.clean_expired_cache) == len(expired)
        for k in expired:
            del self.model.suppression[k]

    @precondition(lambda self: bool(self.model.signals))
    @rule(key=st.sampled_from(KEYS))
    def rolled_back(self, key: str) -> None:
        async def unit() -> None:
            async with self.store.transaction():
                first = min(self.model.signals)
                await self.store.save_signal("x", "y", key, key, 0.9, {}, T0)
                await self.store.update_suppression_cache([SuppressionEntry(canonical_key=key, notion_page_id="r")])
                with contextlib.suppress(InvalidTransition):
                    await self.store.mark_rejected(first, "rolled back")
                raise Boom

        with contextlib.suppress(Boom):
            self.portal.call(unit)

    @rule()
    def reopen(self) -> None:
        self.stack.close()
        self.stack = contextlib.ExitStack()
        self.portal = self.stack.enter_context(start_blocking_portal())
        self.store = self._open()

    # -- every query, after every step ---------------------------------------------

    @invariant()
    def queries_match_the_model(self) -> None:
        model = self.model
        for signal_id, expected in model.signals.items():
            got = self.call(self.store.get_signal, signal_id)
            assert got is not None
            assert (got.canonical_key, got.signal_type, got.source_api, got.confidence) == (
                expected.key,
                expected.signal_type,
                expected.source_api,
                expected.confidence,
            )
            assert (got.status, got.notion_page_id, got.rejection_reason) == (
                expected.status,
                expected.page,
                expected.reason,
            )
        pending = [s for s in sorted(model.signals.values(), key=lambda s: s.id) if s.status == "pending"]
        for kwargs in (
            {},
            {"limit": 2},
            {"signal_type": "incorporation"},
            {"source_api": "sec"},
            {"min_confidence": 0.5},
        ):
            got_ids = [s.id for s in self.call(self.store.get_pending_signals, **kwargs)]
            want = [
                s.id
                for s in pending
                if s.signal_type == kwargs.get("signal_type", s.signal_type)
                and s.source_api == kwargs.get("source_api", s.source_api)
                and s.confidence >= float(kwargs.get("min_confidence", 0.0))
            ]
            assert got_ids == want[: int(kwargs.get("limit", 100))], kwargs
        for key in KEYS:
            got_ids = [s.id for s in self.call(self.store.get_signals_for_company, key)]
            assert got_ids == sorted(s.id for s in model.signals.values() if s.key == key)
            entry = self.call(self.store.check_suppression, key)
            live = model.suppression.get(key)
            if live is None or live[2] <= self.clock.now:
                assert entry is None
            else:
                assert entry is not None and (entry.notion_page_id, entry.status, entry.expires_at) == live
        counts = {
            status: sum(s.status == status for s in model.signals.values())
            for status in ("pending", "pushed", "rejected")
        }
        assert self.call(self.store.get_processing_stats) == {**counts, "total": len(model.signals)}
        stats = self.call(self.store.get_database_stats)
        assert (stats["signals"], stats["suppression_entries"]) == (len(model.signals), len(model.suppression))


FacadeMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_facade_matches_the_old_store_model = FacadeMachine.TestCase
