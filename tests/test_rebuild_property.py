"""Determinism (DESIGN.md "Projections"): for any sequence of events, the read tables built
incrementally (inline with each append, or caught up behind other writers) equal a full
rebuild from the log."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import (
    InvalidTransition,
    SignalPushed,
    SignalRejected,
    SuppressionEntry,
    company_stream,
    open_store,
    signal_store,
)
from tests.conftest import FakeClock, detected
from tests.test_projections import rebuilt_rows, table_rows

T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)
KEYS = ("domain:a", "domain:b", "domain:c", "domain:d")

detect = st.tuples(
    st.just("detect"),
    st.sampled_from(KEYS),
    st.sampled_from(("github_spike", "incorporation")),
    st.integers(0, 5),  # detected_at minute: repeats make duplicates
    st.floats(0, 1),
    st.booleans(),  # through save_signals
)
push = st.tuples(st.just("push"), st.integers(0, 50), st.sampled_from(("p1", "p2")))
reject = st.tuples(st.just("reject"), st.integers(0, 50), st.sampled_from(("weak", "dup")))
sync = st.tuples(
    st.just("sync"),
    st.lists(st.sampled_from(KEYS), max_size=3),
    st.sampled_from(("n1", "n2")),
    st.sampled_from((0, 0.5, 2)),
)
# Another writer, straight to the log: the store's projections fall behind and must catch up.
raw = st.tuples(st.just("raw"), st.integers(1, 40), st.sampled_from(("SignalPushed", "SignalRejected", "detect")))
tick = st.tuples(st.just("tick"), st.integers(1, 48))
operations = st.lists(st.one_of(detect, push, reject, sync, raw, tick), max_size=30)


async def run(ops: list[tuple[Any, ...]], path: str, in_transaction: bool) -> None:
    clock = FakeClock()
    async with signal_store(path, clock=clock, background=False) as store, open_store(path, clock=clock) as plain:
        ids: list[int] = []
        for op in ops:
            kind = op[0]
            if kind == "detect":
                _, key, signal_type, minute, confidence, batch = op
                args = dict(
                    signal_type=signal_type,
                    source_api="github",
                    canonical_key=key,
                    company_name=key,
                    confidence=confidence,
                    raw_data={"m": minute},
                    detected_at=T0 + dt.timedelta(minutes=minute),
                )
                ids += await store.save_signals([args]) if batch else [await store.save_signal(**args)]
            elif kind in ("push", "reject") and ids:
                signal_id = ids[op[1] % len(ids)]
                try:
                    if kind == "push":
                        await store.mark_pushed(signal_id, op[2], metadata={"op": kind})
                    else:
                        await store.mark_rejected(signal_id, op[2])
                except InvalidTransition:
                    pass
            elif kind == "sync":
                entries = [SuppressionEntry(canonical_key=k, notion_page_id=op[2], status="Active") for k in op[1]]
                if in_transaction:
                    async with store.transaction():
                        await store.update_suppression_cache(entries, ttl_days=op[3])
                else:
                    await store.update_suppression_cache(entries, ttl_days=op[3])
            elif kind == "raw":
                _, signal_id, what = op
                if what == "detect":
                    key = KEYS[signal_id % len(KEYS)]
                    await plain.append(
                        company_stream(key), [detected(key, detected_at=T0 + dt.timedelta(hours=signal_id))]
                    )
                elif what == "SignalPushed":  # may name no signal, or one already decided
                    await plain.append("company:raw", [SignalPushed(signal_id=signal_id, notion_page_id="raw")])
                else:
                    await plain.append("company:raw", [SignalRejected(signal_id=signal_id, reason="raw")])
            elif kind == "tick":
                clock.advance(hours=op[1])
        await store.runner.catch_up()
        incremental = await table_rows(store.log)
        store.runner.stop_inline()
        assert incremental == await rebuilt_rows(store.log)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, in_transaction=st.booleans())
def test_rebuild_equals_incremental(ops: list[tuple[Any, ...]], in_transaction: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, ops, str(Path(tmp) / "events.db"), in_transaction)
