"""A Hypothesis state machine: the log behaves like a plain Python list of (stream, version, event).

Runs on every backend. One store serves every example; each example works in
its own stream namespace and counts positions from the head it started at.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    DuplicateEventError,
    EventStore,
    RecordedEvent,
    SignalPushed,
    SignalRejected,
    WrongExpectedVersion,
    open_store,
)
from eventstore.events import Event

STREAMS = ("a", "b", "c:1", "c:2")
events = st.lists(
    st.one_of(
        st.builds(SignalPushed, signal_id=st.integers(1, 50), notion_page_id=st.sampled_from(["p", "q"])),
        st.builds(SignalRejected, signal_id=st.integers(1, 50), reason=st.sampled_from(["dup", "low"])),
    ),
    min_size=0,
    max_size=4,
)


class Recorded:
    def __init__(self, position: int, stream: str, version: int, event: Event, event_id: uuid.UUID) -> None:
        self.position, self.stream, self.version, self.event, self.event_id = position, stream, version, event, event_id

    def key(self) -> tuple[str, int, Event, uuid.UUID]:
        return (self.stream, self.version, self.event, self.event_id)


def make_machine(portal: BlockingPortal, log: EventStore) -> type[RuleBasedStateMachine]:
    counter = iter(range(10**9))

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kwargs)

        return portal.call(run)

    def collect(iterator_factory: Callable[[], Any]) -> list[RecordedEvent]:
        async def run() -> list[RecordedEvent]:
            return [event async for event in iterator_factory()]

        return portal.call(run)

    class LogMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.prefix = f"ex{next(counter)}/"
            self.base = call(log.head_position)
            self.model: list[Recorded] = []
            self.last_batch: tuple[str, list[Event], list[uuid.UUID], list[int]] | None = None
            self.gaps_ok = log.dialect != "sqlite"

        def name(self, stream: str) -> str:
            return self.prefix + stream

        def version(self, stream: str) -> int:
            return sum(1 for r in self.model if r.stream == stream)

        def head(self) -> int:
            return self.model[-1].position if self.model else self.base

        def expected_for(self, choice: str, stream: str) -> Any:
            current = self.version(stream)
            return {
                "exact": current,
                "wrong": current + 1,
                "no_stream": NO_STREAM,
                "zero": 0,
                "exists": STREAM_EXISTS,
                "any": ANY,
            }[choice]

        @staticmethod
        def allowed(expected: Any, current: int) -> bool:
            if expected is ANY:
                return True
            if expected is NO_STREAM or expected == 0:
                return current == 0
            if expected is STREAM_EXISTS:
                return current > 0
            return bool(expected == current)

        def record(self, stream: str, batch: list[Event], ids: list[uuid.UUID], positions: list[int]) -> None:
            version = self.version(stream)
            for offset, (event, event_id, position) in enumerate(zip(batch, ids, positions, strict=True)):
                assert position > self.head()
                if not self.gaps_ok:
                    assert position == self.head() + 1
                self.model.append(Recorded(position, stream, version + offset + 1, event, event_id))

        @rule(
            stream=st.sampled_from(STREAMS),
            batch=events,
            choice=st.sampled_from(["exact", "wrong", "no_stream", "zero", "exists", "any"]),
        )
        def append(self, stream: str, batch: list[Event], choice: str) -> None:
            expected = self.expected_for(choice, stream)
            ids = [uuid.uuid4() for _ in batch]
            current = self.version(stream)
            if not self.allowed(expected, current):
                with pytest.raises(WrongExpectedVersion):
                    call(log.append, self.name(stream), batch, expected_version=expected, event_ids=ids)
                return
            result = call(log.append, self.name(stream), batch, expected_version=expected, event_ids=ids)
            assert result.version == current + len(batch)
            assert len(result.positions) == len(batch)
            self.record(stream, batch, ids, result.positions)
            if batch:
                self.last_batch = (stream, batch, ids, result.positions)

        @precondition(lambda self: self.last_batch is not None)
        @rule(choice=st.sampled_from(["exact", "wrong", "no_stream", "any"]))
        def reappend_is_idempotent(self, choice: str) -> None:
            assert self.last_batch is not None
            stream, batch, ids, positions = self.last_batch
            expected = self.expected_for(choice, stream)
            result = call(log.append, self.name(stream), batch, expected_version=expected, event_ids=ids)
            assert result.positions == positions
            assert not result.written
            assert result.version == self.version(stream)

        @precondition(lambda self: self.last_batch is not None)
        @rule(data=st.data())
        def mixed_or_changed_ids_are_refused(self, data: st.DataObject) -> None:
            assert self.last_batch is not None
            stream, batch, ids, _ = self.last_batch
            if data.draw(st.booleans()):
                new_batch, new_ids = [*batch, batch[0]], [*ids, uuid.uuid4()]
            else:
                new_batch, new_ids = [SignalPushed(signal_id=99, notion_page_id="changed")], ids[:1]
            with pytest.raises(DuplicateEventError):
                call(log.append, self.name(stream), new_batch, event_ids=new_ids)

        @rule(first=st.sampled_from(STREAMS), second=st.sampled_from(STREAMS), b1=events, b2=events, fail=st.booleans())
        def multi_stream_batch(self, first: str, second: str, b1: list[Event], b2: list[Event], fail: bool) -> None:
            ids1, ids2 = [uuid.uuid4() for _ in b1], [uuid.uuid4() for _ in b2]
            expected2: Any = self.version(second) + (len(b1) if first == second else 0)
            if fail:
                expected2 += 7
            requests = [
                AppendRequest(stream=self.name(first), events=b1, event_ids=ids1),
                AppendRequest(stream=self.name(second), events=b2, event_ids=ids2, expected_version=expected2),
            ]
            if fail:
                with pytest.raises(WrongExpectedVersion):
                    call(log.append_batch, requests)
                return
            r1, r2 = call(log.append_batch, requests)
            self.record(first, b1, ids1, r1.positions)
            self.record(second, b2, ids2, r2.positions)

        @rule(stream=st.sampled_from(STREAMS), batch=events, fail=st.booleans())
        def unit_of_work(self, stream: str, batch: list[Event], fail: bool) -> None:
            ids = [uuid.uuid4() for _ in batch]

            async def run() -> list[int]:
                async with log.transaction():
                    result = await log.append(self.name(stream), batch, event_ids=ids)
                    await log.append(self.name("a"), [], expected_version=ANY)
                    if fail:
                        raise LookupError("roll back")
                return result.positions

            if fail:
                with pytest.raises(LookupError):
                    portal.call(run)
                return
            self.record(stream, batch, ids, portal.call(run))

        @rule(
            stream=st.sampled_from(STREAMS),
            backwards=st.booleans(),
            from_version=st.none() | st.integers(0, 12),
            limit=st.none() | st.integers(0, 6),
        )
        def read_stream(self, stream: str, backwards: bool, from_version: int | None, limit: int | None) -> None:
            got = collect(
                lambda: log.read_stream(self.name(stream), from_version=from_version, backwards=backwards, limit=limit)
            )
            mine = [r for r in self.model if r.stream == stream]
            if backwards:
                mine = [r for r in reversed(mine) if from_version is None or r.version <= from_version]
            else:
                mine = [r for r in mine if from_version is None or r.version >= from_version]
            if limit is not None:
                mine = mine[:limit]
            assert [(e.stream.removeprefix(self.prefix), e.version, e.data, e.event_id) for e in got] == [
                r.key() for r in mine
            ]
            assert [e.position for e in got] == [r.position for r in mine]

        @rule(
            offset=st.integers(0, 40),
            limit=st.none() | st.integers(0, 10),
            types=st.none() | st.sampled_from([["SignalPushed"], ["SignalRejected"], []]),
            prefix=st.sampled_from(["", "c", "c:1", "a", "zz"]),
        )
        def read_all(self, offset: int, limit: int | None, types: list[str] | None, prefix: str) -> None:
            start = self.base + offset
            got = collect(
                lambda: log.read_all(from_position=start, limit=limit, types=types, stream_prefix=self.prefix + prefix)
            )
            mine = [
                r
                for r in self.model
                if r.position >= start
                and (types is None or type(r.event).__name__ in types)
                and r.stream.startswith(prefix)
            ]
            if limit is not None:
                mine = mine[:limit]
            assert [(e.position, e.stream.removeprefix(self.prefix), e.version, e.data) for e in got] == [
                (r.position, r.stream, r.version, r.event) for r in mine
            ]

        @invariant()
        def head_and_versions_match(self) -> None:
            assert call(log.head_position) == self.head()
            for stream in STREAMS:
                assert call(log.stream_version, self.name(stream)) == self.version(stream)

        def teardown(self) -> None:
            report = call(log.verify)
            assert report.ok, str(report)

    return LogMachine


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


def test_the_log_behaves_like_a_list(store_url: str, portal: BlockingPortal) -> None:
    with portal.wrap_async_context_manager(open_store(store_url)) as log:
        machine = make_machine(portal, log)
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=40,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
