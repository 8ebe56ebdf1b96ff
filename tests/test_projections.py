"""The projection runner (DESIGN.md "Projections"; issue 3 points 1-3): checkpoints, lag, status,
catching up behind other writers, versioned rebuilds into new generations, several stores on one database.

Worker processes: ``python -m tests.test_projections write URL WORKER``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from eventstore import (
    DatabaseError,
    EventStore,
    InvalidTransition,
    ProjectionError,
    RecordedEvent,
    SignalPushed,
    SignalRejected,
    SignalStore,
    Statement,
    SuppressionEntry,
    company_stream,
    open_store,
    signal_store,
)
from projections import (
    ProcessingProjection,
    Projection,
    ProjectionRunner,
    ProjectionStatus,
    SignalsProjection,
    SuppressionProjection,
    Tables,
)
from projections.search import default_projections
from tests.conftest import FakeClock, detected

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 1, 6, 9, 30, tzinfo=dt.UTC)

#: The read tables (views) and the columns that make them up, in a stable order.
TABLES = {
    "signals": (
        "id, signal_type, source_api, canonical_key, company_name, confidence, raw_data, detected_at, "
        "recorded_at, actor",
        "id",
    ),
    "processing": (
        "signal_id, status, notion_page_id, rejection_reason, metadata, processed_at, processed_by, confidence, "
        "signal_type, source_api",
        "signal_id",
    ),
    "suppression": ("canonical_key, notion_page_id, status, expires_at, cached_at, position", "canonical_key"),
}


async def table_rows(log: EventStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three read views, in key order."""
    return {
        name: [tuple(row) for row in await log.query(f"SELECT {columns} FROM {name} ORDER BY {key}")]
        for name, (columns, key) in TABLES.items()
    }


async def rebuilt_rows(log: EventStore, projections: Sequence[Projection] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """The read views after a clean rebuild of every projection (the built-in three by default) from the log."""
    runner = ProjectionRunner(log, projections or v1_projections())
    await runner.start(inline=False)
    await runner.rebuild()
    return await table_rows(log)


def by_name(statuses: Sequence[ProjectionStatus]) -> dict[str, ProjectionStatus]:
    return {s.name: s for s in statuses if s.state == "live"}


def entry(key: str, page: str = "page") -> SuppressionEntry:
    return SuppressionEntry(canonical_key=key, notion_page_id=page, status="Active")


async def populate(store: SignalStore, count: int = 12) -> list[int]:
    """Signals (some pushed, some rejected) and suppression syncs over a few companies."""
    ids = await store.save_signals(
        [detected(f"domain:c{n % 5}", detected_at=T0 + dt.timedelta(minutes=n)) for n in range(count)]
    )
    for n, signal_id in enumerate(ids):
        if n % 3 == 0:
            await store.mark_pushed(signal_id, f"page-{n}")
        elif n % 3 == 1:
            await store.mark_rejected(signal_id, "weak")
    await store.update_suppression_cache([entry(f"domain:c{n}") for n in range(3)], ttl_days=1)
    return ids


# -- checkpoints, lag and status ------------------------------------------------------


async def test_checkpoint_advances_past_ignored_events(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store:
        await store.update_suppression_cache([entry("domain:a"), entry("domain:b")])
        await store.update_suppression_cache([entry("domain:c")])
        statuses = by_name(await store.projection_status())
        assert statuses["signals"].checkpoint == 3 == statuses["processing"].checkpoint
        assert all(s.lag == 0 for s in statuses.values())


async def test_status_reports_version_generation_checkpoint_lag_and_state(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store)
        head = await store.log.head_position()
        for status in await store.projection_status():
            assert status.version >= 1 and status.generation >= 1
            assert (status.checkpoint, status.lag, status.state, status.progress) == (head, 0, "live", 1.0)


async def test_events_from_a_plain_writer_show_as_lag_until_caught_up(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store, open_store(store_url) as plain:
        await plain.append(company_stream("domain:a"), [detected("domain:a")])
        await plain.append(company_stream("domain:b"), [detected("domain:b")])
        statuses = by_name(await store.projection_status())
        assert {s.checkpoint for s in statuses.values()} == {0}
        assert {s.lag for s in statuses.values()} == {2}
        assert (await store.get_database_stats())["projections"]["signals"]["lag"] == 2
        assert await store.runner.catch_up() == 2
        assert {s.lag for s in await store.projection_status()} == {0}
        assert [s.id for s in await store.get_pending_signals()] == [1, 2]


async def test_a_store_opened_after_plain_appends_catches_up(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store:
        await store.save_signal(**_args("domain:a"))
    async with open_store(store_url) as plain:
        await plain.append(company_stream("domain:b"), [detected("domain:b")])
        await plain.append(company_stream("domain:a"), [SignalPushed(signal_id=1, notion_page_id="p")])
    async with signal_store(store_url, clock=clock, background=False) as store:
        assert [s.id for s in await store.get_pending_signals()] == [2]
        assert (await store.get_processing_stats())["pushed"] == 1
        assert {s.lag for s in await store.projection_status()} == {0}


async def test_the_background_runner_follows_other_writers(store_url: str, clock: FakeClock) -> None:
    async with SignalStore(open_store(store_url, clock=clock), poll_interval=0.01) as store:
        async with open_store(store_url) as plain:
            await plain.append(company_stream("domain:b"), [detected("domain:b")])
        with anyio.fail_after(10):
            while not await store.get_pending_signals():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert {s.lag for s in await store.projection_status()} == {0}


def _args(key: str, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "signal_type": "github_spike",
        "source_api": "github",
        "canonical_key": key,
        "company_name": "Acme",
        "confidence": 0.5,
        "raw_data": {},
        "detected_at": T0,
    }
    args.update(changes)
    return args


# -- rebuilds and versions ----------------------------------------------------------------


async def test_rebuild_gives_the_same_tables_in_a_new_generation(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store:
        await populate(store)
        before, generations = await table_rows(store.log), by_name(await store.projection_status())
        await store.runner.rebuild()
        assert await table_rows(store.log) == before
        after = by_name(await store.projection_status())
        for name, status in after.items():
            assert status.generation > generations[name].generation
            assert status.checkpoint == await store.log.head_position()
            with pytest.raises(DatabaseError):  # the old generation's tables are gone
                await store.log.query(f"SELECT count(*) FROM {name}_g{generations[name].generation}")
        # The store keeps writing into the new generation.
        new = await store.save_signal(**_args("domain:new"))
        assert (await store.get_signal(new)) is not None
        with pytest.raises(ValueError, match="nope"):
            await store.runner.rebuild(["nope"])


async def test_a_rebuild_brings_back_cleaned_rows_until_the_next_cleanup(store_url: str, clock: FakeClock) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store:
        await store.update_suppression_cache([entry("domain:a")], ttl_days=0)
        assert await store.clean_expired_cache() == 1
        await store.runner.rebuild(["suppression"])
        assert (await store.get_database_stats())["suppression_entries"] == 1
        assert await store.check_suppression("domain:a") is None
        assert await store.clean_expired_cache() == 1


class SignalsV2(SignalsProjection):
    """Version 2 of the signals read model: one more column; can be made to fail at a position."""

    version = 2
    fail_at: ClassVar[int | None] = None

    def schema(self, tables: Tables, dialect: str) -> Sequence[str]:
        return (*super().schema(tables, dialect), f"ALTER TABLE {tables['signals']} ADD COLUMN v2 INTEGER DEFAULT 2")

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        if event.position == SignalsV2.fail_at:
            raise RuntimeError(f"v2 cannot handle position {event.position}")
        return super().handle(event, tables)


def v2_projections() -> list[Projection]:
    return [SignalsV2(), ProcessingProjection(), SuppressionProjection()]


async def test_a_version_bump_rebuilds_while_the_old_tables_answer_then_switches(
    store_url: str, clock: FakeClock
) -> None:
    async with signal_store(store_url, clock=clock, background=False) as store:
        await populate(store, 30)
    async with open_store(store_url, clock=clock) as log:
        old = await table_rows(log)
        head = await log.head_position()
        runner = ProjectionRunner(log, v2_projections(), batch_size=5)
        SignalsV2.fail_at = 20
        try:
            with pytest.raises(ProjectionError, match=r"rebuilding projection signals failed: .* position 20"):
                await runner.start()  # only live generations are caught up at start: this does not fail
                await runner.catch_up()
        finally:
            SignalsV2.fail_at = None
        statuses = await runner.status()
        rebuilding = [s for s in statuses if s.state == "rebuilding"]
        assert [(s.name, s.version) for s in rebuilding] == [("signals", 2)]
        assert 0 < rebuilding[0].checkpoint < 20 and 0 < rebuilding[0].progress < 1
        assert rebuilding[0].lag == head - rebuilding[0].checkpoint
        # Half-built: queries still answer from the complete old tables.
        assert await table_rows(log) == old
        with pytest.raises(DatabaseError):
            await log.query("SELECT v2 FROM signals")
        # Appends meanwhile go inline into the live (old) generation.
        await log.append(company_stream("domain:late"), [detected("domain:late")])
        assert len((await table_rows(log))["signals"]) == len(old["signals"]) + 1

        await runner.catch_up()
        statuses = await runner.status()
        assert [(s.name, s.version, s.state) for s in statuses if s.name == "signals"] == [("signals", 2, "live")]
        assert [row[0] for row in await log.query("SELECT DISTINCT v2 FROM signals")] == [2]
        with pytest.raises(DatabaseError):
            await log.query("SELECT count(*) FROM signals_g1")
        rows = await table_rows(log)
        assert rows["signals"][:-1] == old["signals"]
        runner.stop_inline()
        assert rows == await rebuilt_rows(log, v2_projections())


async def test_a_store_restarted_after_a_half_built_version_resumes_it(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 20)
        old = await table_rows(store.log)
    async with open_store(store_url) as log:
        runner = ProjectionRunner(log, v2_projections(), batch_size=4)
        SignalsV2.fail_at = 10
        try:
            await runner.start()
            with pytest.raises(ProjectionError) as failed:
                await runner.catch_up()
            assert isinstance(failed.value.__cause__, RuntimeError)
        finally:
            SignalsV2.fail_at = None
        runner.stop_inline()
        (partial,) = [s for s in await runner.status() if s.state == "rebuilding"]
    async with open_store(store_url) as log:
        runner = ProjectionRunner(log, v2_projections(), batch_size=4)
        await runner.start()
        (resumed,) = [s for s in await runner.status() if s.state == "rebuilding"]
        assert (resumed.generation, resumed.checkpoint) == (partial.generation, partial.checkpoint)
        assert await table_rows(log) == old
        await runner.catch_up()
        assert await table_rows(log) == old
        assert {s.state for s in await runner.status()} == {"live"}
        runner.stop_inline()


@contextlib.asynccontextmanager
async def raw_session(url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection in the store's schema (another client: a report, a DBA)."""
    import asyncpg

    conn = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": url.rsplit("schema=", 1)[1]})
    try:
        yield conn
    finally:
        await conn.close()


class ShoutingSignals(SignalsProjection):
    """A version 2 whose logic differs (company names upper-cased): wrong rows would show."""

    version = 2

    def handle(self, event: RecordedEvent, tables: Tables) -> Sequence[Statement]:
        return [
            Statement(s.sql, tuple(p.upper() if i == 4 else p for i, p in enumerate(s.params)))
            for s in super().handle(event, tables)
        ]


def v1_projections() -> list[Projection]:
    return [SignalsProjection(), ProcessingProjection(), SuppressionProjection()]


async def company_names(log: EventStore) -> list[str]:
    return [row[0] for row in await log.query("SELECT company_name FROM signals ORDER BY id")]


async def test_a_replica_on_older_code_never_builds_a_newer_version_nor_writes_into_it(store_url: str) -> None:
    """A rolling upgrade: v2 code is deployed while v1 replicas still run."""
    async with signal_store(store_url, background=False) as store:
        await populate(store, 5)
    async with open_store(store_url) as log:
        new = ProjectionRunner(log, [ShoutingSignals(), ProcessingProjection(), SuppressionProjection()])
        await new.start(inline=False)  # creates the v2 generation, to be built
        old = ProjectionRunner(log, v1_projections())
        await old.start(inline=True)
        await old.catch_up()  # not its version: it neither builds nor switches it
        assert [(s.version, s.state, s.checkpoint) for s in await old.status() if s.state == "rebuilding"] == [
            (2, "rebuilding", 0)
        ]
        await new.catch_up()  # builds and switches v2 with v2's logic
        await log.append(company_stream("domain:late"), [detected("domain:late")])  # old's inline hook
        await old.catch_up()
        assert [s.version for s in await old.status() if s.name == "signals"] == [2]  # not rolled back
        assert await new.catch_up() == 1  # the new code applies the late event itself
        assert await company_names(log) == ["ACME INC"] * 6
        old.stop_inline()


async def test_a_replica_on_older_code_started_after_the_upgrade_leaves_the_newer_version_alone(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 5)
    async with open_store(store_url) as log:
        new = ProjectionRunner(log, [ShoutingSignals(), ProcessingProjection(), SuppressionProjection()])
        await new.start(inline=False)
        await new.catch_up()
        old = ProjectionRunner(log, v1_projections())
        await old.start(inline=False)
        await old.catch_up()
        assert [(s.name, s.version, s.state) for s in await old.status() if s.name == "signals"] == [
            ("signals", 2, "live")
        ]
        assert "v2 is in the store, this code has v1" in caplog.text
        assert await company_names(log) == ["ACME INC"] * 5


async def test_a_failing_rebuild_does_not_hold_up_the_live_projections(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 5)
    async with open_store(store_url) as log:
        runner = ProjectionRunner(log, v2_projections())  # a worker: no inline hook
        SignalsV2.fail_at = 3
        try:
            await runner.start(inline=False)
            for n in range(3):  # other processes append meanwhile
                await log.append(company_stream(f"domain:new{n}"), [detected(f"domain:new{n}")])
            with pytest.raises(ProjectionError, match="position 3"):
                await runner.catch_up()
        finally:
            SignalsV2.fail_at = None
        lags = {(s.name, s.state): s.lag for s in await runner.status()}
        assert lags.pop(("signals", "rebuilding")) > 0
        assert set(lags.values()) == {0}, lags


@pytest.mark.postgres
async def test_a_catch_up_running_during_an_append_does_not_cancel_its_read_your_writes(
    postgres_store_url: str,
) -> None:
    """The append's inline guard failed (another process moved the checkpoint): a catch-up that read
    the head before the append committed must leave ``behind`` set, so the caller still catches up."""
    async with signal_store(postgres_store_url, background=False) as store:
        await store.save_signal("github_spike", "github", "domain:a", "A", 0.5, {})
        async with open_store(postgres_store_url) as other:  # appends without projecting
            await other.append(company_stream("domain:b"), [detected("domain:b")])
        async with raw_session(postgres_store_url) as conn:  # commits of appends now take a second
            await conn.execute(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$; "
                "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON events "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
            )
        saved: list[int] = []

        async def save() -> None:
            saved.append(await store.save_signal("github_spike", "github", "domain:c", "C", 0.5, {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(save)
            await anyio.sleep(0.4)
            assert store.runner.behind  # the guard failed; the commit is still to come
            await store.runner.catch_up()  # what the background follower does meanwhile
        assert await store.get_signal(saved[0]) is not None


class AppendingBeforeTheSwitch(ProjectionRunner):
    """A runner that lets another process append between its last catch-up and its switch."""

    writer: EventStore

    async def _switch_caught_up(self, failed: dict[str, Exception]) -> None:
        await self.writer.append(company_stream("domain:late"), [detected("domain:late")])
        await super()._switch_caught_up(failed)


async def test_rebuild_returns_once_switched_even_if_an_append_lands_just_before_the_switch(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 5)
    async with open_store(store_url) as log, open_store(store_url) as writer:
        runner = AppendingBeforeTheSwitch(log, v1_projections())
        runner.writer = writer
        await runner.start(inline=False)
        await runner.rebuild(["signals"])
        assert [(s.generation, s.state, s.lag) for s in await runner.status() if s.name == "signals"] == [
            (2, "live", 0)
        ]
        assert len(await company_names(log)) == 6  # the late event is in the new generation


async def test_rebuild_under_a_stream_of_appends_switches_with_every_event(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 5)
    stop = anyio.Event()

    async def keep_appending(writer: EventStore) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await writer.append(company_stream(f"domain:w{n}"), [detected(f"domain:w{n}")])

    async with open_store(store_url) as log, open_store(store_url) as writer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_appending, writer)
            try:
                runner = ProjectionRunner(log, v1_projections(), batch_size=20)
                await runner.start(inline=False)
                with anyio.fail_after(120):  # a bound for a rebuild chasing the head for ever, not a timing claim
                    await runner.rebuild(["signals"])
                statuses = [(s.generation, s.state) for s in await runner.status() if s.name == "signals"]
            finally:
                stop.set()
        assert statuses == [(2, "live")]
        await runner.catch_up()
        assert await table_rows(log) == await rebuilt_rows(log)


@pytest.mark.postgres
async def test_a_switch_during_an_append_keeps_the_appender_reading_its_writes(postgres_store_url: str) -> None:
    """The switch waits for the append lock: an append in flight is in the new generation too."""
    async with signal_store(postgres_store_url, background=False) as writer, open_store(postgres_store_url) as other:
        await populate(writer, 3)
        rebuilder = ProjectionRunner(other, v1_projections())  # e.g. `eventstore rebuild` in another process
        await rebuilder.start(inline=False)
        await rebuilder.rebuild(["signals"])  # generation 2
        await rebuilder._create_generation(rebuilder.projections["signals"], "building")  # generation 3
        async with anyio.create_task_group() as tg, writer.transaction():
            new_id = await writer.save_signal("github_spike", "github", "domain:new", "New", 0.5, {})
            tg.start_soon(functools.partial(rebuilder.catch_up, include_building=True))
            await anyio.sleep(0.5)  # the rebuild has caught up and waits to switch
        assert [(s.generation, s.state) for s in await rebuilder.status() if s.name == "signals"] == [(3, "live")]
        assert await writer.get_signal(new_id) is not None


@pytest.mark.postgres
async def test_a_switch_never_holds_appends_up_behind_a_long_reader(postgres_store_url: str) -> None:
    """The switch waits briefly for a view's readers, then defers (PostgreSQL replaces views under lock)."""
    async with signal_store(postgres_store_url, background=False) as writer, open_store(postgres_store_url) as other:
        await populate(writer, 3)
        rebuilder = ProjectionRunner(other, v1_projections())
        await rebuilder.start(inline=False)
        async with raw_session(postgres_store_url) as reader:
            await reader.execute("BEGIN; SELECT count(*) FROM signals")  # a long report
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(rebuilder.rebuild, ["signals"]))
                await anyio.sleep(0.3)  # the rebuild is trying to switch now
                # The report is still open, and ends only after this: a save that waited for it
                # would wait for ever (the bound below only turns that into a failure).
                with anyio.move_on_after(30) as waited_for_the_reader:
                    await writer.save_signal("github_spike", "github", "domain:new", "New", 0.5, {})
                await reader.execute("ROLLBACK")  # the report ends; the deferred switch goes through
            assert not waited_for_the_reader.cancelled_caught
            assert [(s.generation, s.state) for s in await rebuilder.status() if s.name == "signals"] == [(2, "live")]


@pytest.mark.postgres
async def test_a_reader_of_the_old_search_table_defers_its_switch_not_fails_the_rebuild(
    postgres_store_url: str,
) -> None:
    """Search has no views: its queries hold the physical table the switch drops."""
    async with signal_store(postgres_store_url, background=False) as store, open_store(postgres_store_url) as other:
        await populate(store, 3)
        rebuilder = ProjectionRunner(other, default_projections())
        await rebuilder.start(inline=False)
        async with raw_session(postgres_store_url) as reader:
            await reader.execute("BEGIN; SELECT count(*) FROM search_g1")  # a slow search

            async def search_ends() -> None:
                await anyio.sleep(1.5)
                await reader.execute("ROLLBACK")

            async with anyio.create_task_group() as tg:
                tg.start_soon(search_ends)
                await rebuilder.rebuild(["search"])  # deferred while the search runs, then switched
        assert [(s.generation, s.state) for s in await rebuilder.status() if s.name == "search"] == [(2, "live")]


@pytest.mark.postgres
async def test_a_switch_inside_a_unit_of_work_leaves_its_lock_timeout_alone(postgres_store_url: str) -> None:
    async with signal_store(postgres_store_url, background=False, server_settings={"lock_timeout": "7s"}) as store:
        await populate(store, 3)
        async with store.log.transaction():
            await store.runner.rebuild(["signals"])
            assert await store.log.query("SHOW lock_timeout") == [("7s",)]


async def test_rebuild_on_older_code_refuses_to_undo_a_newer_version(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        await populate(store, 3)
    async with open_store(store_url) as log:
        new = ProjectionRunner(log, [ShoutingSignals(), ProcessingProjection(), SuppressionProjection()])
        await new.start(inline=False)  # v2 being built
        old = ProjectionRunner(log, v1_projections())
        await old.start(inline=False)
        for done in (False, True):
            with pytest.raises(ProjectionError, match="v2 is in the store, this code has v1"):
                await old.rebuild(["signals"])  # e.g. `eventstore rebuild` from a host on the old release
            state = "live" if done else "rebuilding"
            assert (2, state) in [(s.version, s.state) for s in await new.status() if s.name == "signals"]
            await new.catch_up()  # v2 live


async def test_project_follow_keeps_following_the_live_projections_when_a_rebuild_fails(
    sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventstore.cli import project

    async with signal_store(sqlite_path, background=False) as store:
        await populate(store, 5)
    monkeypatch.setattr(project, "runner_for", lambda log: ProjectionRunner(log, v2_projections()))
    monkeypatch.setattr(SignalsV2, "fail_at", 3)
    args = argparse.Namespace(store=sqlite_path, follow=True, poll_interval=0.1, json=True)
    with anyio.move_on_after(2) as following:  # it follows until stopped
        await project.run(args)
    assert following.cancelled_caught


# -- several stores on one database ----------------------------------------------------------


async def test_two_stores_on_one_database_stay_consistent(store_url: str, clock: FakeClock) -> None:
    async with (
        signal_store(store_url, clock=clock, background=False) as first,
        signal_store(store_url, clock=clock, background=False) as second,
    ):
        ids: dict[str, list[int]] = {}

        async def collect(name: str, store: SignalStore) -> None:
            batch = [_args(f"domain:c{n % 7}", detected_at=T0 + dt.timedelta(minutes=n)) for n in range(40)]
            ids[name] = [await store.save_signal(**args) for args in batch[:20]] + await store.save_signals(batch[20:])

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, "first", first)
            tg.start_soon(collect, "second", second)
        assert ids["first"] == ids["second"], "the same detections get the same ids, whichever store saved them"
        assert len(set(ids["first"])) == 40

        await first.mark_pushed(ids["first"][0], "page")
        assert (await second.get_signal(ids["first"][0])) is not None
        with pytest.raises(InvalidTransition):
            await second.mark_rejected(ids["first"][0], "late")
        await second.update_suppression_cache([entry("domain:c1")])
        assert await first.check_suppression("domain:c1") is not None
        assert await first.get_processing_stats() == await second.get_processing_stats()
        head = await first.log.head_position()
        for store in (first, second):
            await store.runner.ensure_current()
            assert {(s.checkpoint, s.lag) for s in await store.projection_status()} == {(head, 0)}
        assert await table_rows(first.log) == await table_rows(second.log)
    async with open_store(store_url) as log:
        rows = await table_rows(log)
        assert rows == await rebuilt_rows(log)


async def test_two_stores_opening_a_new_database_at_once(store_url: str) -> None:
    async def open_and_write(n: int) -> None:
        async with signal_store(store_url, background=False) as store:
            await store.save_signal(**_args(f"domain:c{n}"))

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(open_and_write, n)
    async with signal_store(store_url, background=False) as store:
        assert len(await store.get_pending_signals()) == 3
        assert {(s.generation, s.lag) for s in await store.projection_status()} == {(1, 0)}


async def test_a_rebuild_in_one_store_does_not_break_the_other(store_url: str, clock: FakeClock) -> None:
    async with (
        signal_store(store_url, clock=clock, background=False) as first,
        signal_store(store_url, clock=clock, background=False) as second,
    ):
        await populate(first)
        await first.runner.rebuild()
        # The second store still knows the old generation: its housekeeping and writes must follow the switch.
        clock.advance(days=2)
        assert await second.clean_expired_cache() == 3
        assert len(await second.search("Acme")) == 12
        signal_id = await second.save_signal(**_args("domain:new"))
        assert (await second.get_signal(signal_id)) is not None
        assert await table_rows(first.log) == await table_rows(second.log)


def _worker_cmd(command: str, url: str, worker: int) -> list[str]:
    return [sys.executable, "-m", "tests.test_projections", command, url, str(worker)]


async def _run_workers(command: str, url: str, workers: Sequence[int], also: Any = None) -> None:
    """Run worker processes (and ``also()`` here meanwhile); each must exit 0."""
    procs = [
        await anyio.open_process(_worker_cmd(command, url, w), cwd=ROOT, stdout=None, stderr=None) for w in workers
    ]
    try:
        if also is not None:
            await also()
        for proc in procs:
            with anyio.fail_after(120):
                assert await proc.wait() == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()


async def _open(url: str, worker: int) -> None:
    async with signal_store(url, background=False) as store:
        await store.save_signal(**_args(f"domain:c{worker}"))


async def _write(url: str, worker: int) -> None:
    async with signal_store(url, actor=f"worker-{worker}", background=False) as store:
        for n in range(30):
            batch = [_args(f"domain:c{(n + k) % 9}", detected_at=T0 + dt.timedelta(minutes=n + k)) for k in range(3)]
            ids = await store.save_signals(batch)
            for signal_id in ids:
                try:
                    if (signal_id + worker) % 2:
                        await store.mark_pushed(signal_id, f"page-{signal_id}")
                    else:
                        await store.mark_rejected(signal_id, "weak")
                except InvalidTransition:
                    pass  # the other worker decided first
            await store.update_suppression_cache([entry(f"domain:c{n % 9}", f"w{worker}")])


@pytest.mark.slow
async def test_two_processes_writing_through_the_facade_stay_consistent(sqlite_path: str) -> None:
    async with signal_store(sqlite_path, background=False):
        pass
    await _run_workers("write", sqlite_path, (1, 2), lambda: _write(sqlite_path, 3))
    async with signal_store(sqlite_path, background=False) as store:
        stats = await store.get_processing_stats()
        assert stats["total"] == 32 and stats["pending"] == 0  # 30 batches of 3 over 32 distinct detections
        head = await store.log.head_position()
        assert {(s.checkpoint, s.lag) for s in await store.projection_status()} == {(head, 0)}
        store.runner.stop_inline()
        rows = await table_rows(store.log)
        assert rows == await rebuilt_rows(store.log)


@pytest.mark.slow
async def test_processes_opening_a_new_database_at_once(sqlite_path: str) -> None:
    await _run_workers("open", sqlite_path, range(4))
    async with signal_store(sqlite_path, background=False) as store:
        assert len(await store.get_pending_signals()) == 4
        assert {(s.generation, s.lag) for s in await store.projection_status()} == {(1, 0)}


if __name__ == "__main__":
    command, url, worker = sys.argv[1:]
    anyio.run({"write": _write, "open": _open}[command], url, int(worker))


async def test_the_first_outcome_wins_in_the_processing_table_as_in_the_audit_replay(store_url: str) -> None:
    async with signal_store(store_url, background=False) as store:
        signal_id = await store.save_signal("github_spike", "github", "domain:first.ai", "First", 0.9)
        # A conflicting outcome can only come in through the raw log API; the facade refuses it.
        stream = company_stream("domain:first.ai")
        await store.log.append(stream, [SignalRejected(signal_id=signal_id, reason="too small")])
        await store.log.append(stream, [SignalPushed(signal_id=signal_id, notion_page_id="late-page")])
        await store.runner.ensure_current()
        signal = await store.get_signal(signal_id)
        assert signal is not None
        assert (signal.status, signal.rejection_reason, signal.notion_page_id) == ("rejected", "too small", None)
        replayed = await (await store.as_of(store.log.now())).get_signal(signal_id)
        assert replayed is not None and replayed.status == "rejected"
