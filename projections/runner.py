"""The projection runner: catch up, follow, rebuild into a new generation, switch.

State lives in ``projection_state``: one row per (projection, generation) with
its version, checkpoint and state (``live`` or ``building``). Each generation
has its own physical tables (``<table>_g<generation>``); queries read views
named after the logical tables, which point at the live generation.

Exactly once: every batch of statements runs in one transaction whose guard
moves the generation's checkpoint from the value it was computed against.
If anyone else (another process, the inline path) moved it first, the guard
fails, nothing is applied, and the runner re-reads and continues.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import anyio

from eventstore import DatabaseError, EventStore, GuardedBatch, ProjectionError, RecordedEvent, Statement
from eventstore.migrations import MigrationSet
from projections.base import Projection, Tables

__all__ = ("STATE_MIGRATIONS", "Generation", "ProjectionRunner", "ProjectionStatus")

log = logging.getLogger("eventstore.projections")
Progress = Callable[[int, int], None]

STATE_MIGRATIONS = MigrationSet("projections")


@STATE_MIGRATIONS.step
def create_projection_state(dialect: str) -> Sequence[str]:
    return (
        """CREATE TABLE projection_state (
            name TEXT NOT NULL,
            generation INTEGER NOT NULL,
            version INTEGER NOT NULL,
            checkpoint BIGINT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (name, generation)
        )""",
        "CREATE UNIQUE INDEX projection_state_one_live ON projection_state (name) WHERE state = 'live'",
        "CREATE UNIQUE INDEX projection_state_one_building ON projection_state (name) WHERE state = 'building'",
    )


_ADVANCE = "UPDATE projection_state SET checkpoint = ? WHERE name = ? AND generation = ? AND checkpoint = ?"
# The guard of a switch claims the caught-up building row as 'switching' (neither unique index covers
# it); the batch then deletes the old live row and only then marks the new one live, all in one
# transaction. Setting it 'live' in the guard would collide with the old live row.
_SWITCH = (
    "UPDATE projection_state SET state = 'switching' WHERE name = ? AND generation = ? AND state = 'building' "
    "AND checkpoint = (SELECT coalesce(max(position), 0) FROM events)"
)
#: How long a switch waits for a view's readers (PostgreSQL) while it holds the append lock.
_SWITCH_LOCK_WAIT_MS = 500
_GO_LIVE = "UPDATE projection_state SET state = 'live' WHERE name = ? AND generation = ? AND state = 'switching'"


class _SwitchBusy(Exception):
    """A switch could not take its locks in time (readers of the views, a catch-up in progress)."""


class Generation(NamedTuple):
    name: str
    generation: int
    version: int
    checkpoint: int
    state: str


class ProjectionStatus(NamedTuple):
    name: str
    version: int
    generation: int
    checkpoint: int
    lag: int
    state: str  # "live" or "rebuilding"
    progress: float  # 1.0 when live


def _generations(*generations: Generation | None) -> tuple[int | None, ...]:
    return tuple(g.generation if g is not None else None for g in generations)


def physical_tables(projection: Projection, generation: int) -> dict[str, str]:
    return {table: f"{table}_g{generation}" for table in projection.tables}


class ProjectionRunner:
    """Keeps a set of projections up to date with one log."""

    def __init__(self, log: EventStore, projections: Iterable[Projection], *, batch_size: int = 2000) -> None:
        self.log = log
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size
        self.live: dict[str, Generation] = {}
        self.building: dict[str, Generation] = {}
        self._tables: dict[str, Tables] = {}
        #: Set when an inline guard failed: someone else moved a checkpoint, so catch up before answering.
        self.behind = True
        #: Switches deferred because a reader kept a view busy: when to try again, and the last wait.
        self._retry_switch_at: dict[str, float] = {}
        self._switch_backoff: dict[str, float] = {}
        #: The last position an inline application skipped: a catch-up clears ``behind`` only once it
        #: got that far (one that read the head before that append committed has not applied it).
        self._missed_upto = 0

    # -- setup -----------------------------------------------------------

    async def start(self, *, inline: bool = True) -> None:
        """Create state and tables as needed, catch up the live generations, and (optionally)
        apply projections inside every append from now on."""
        await self.log.migrate(STATE_MIGRATIONS)
        for projection in self.projections.values():
            await self._ensure_generation(projection)
        if inline:
            self.log.set_inline_hook(self._inline)
        await self.catch_up(include_building=False)

    def stop_inline(self) -> None:
        self.log.set_inline_hook(None)

    async def refresh(self) -> None:
        rows = await self.log.query("SELECT name, generation, version, checkpoint, state FROM projection_state")
        live: dict[str, Generation] = {}
        building: dict[str, Generation] = {}
        for row in rows:
            generation = Generation(str(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]))
            if generation.name in self.projections:
                (live if generation.state == "live" else building)[generation.name] = generation
        self.live, self.building = live, building
        self._tables = {name: physical_tables(self.projections[name], g.generation) for name, g in live.items()}

    async def _ensure_generation(self, projection: Projection) -> None:
        await self.refresh()
        live, building = self.live.get(projection.name), self.building.get(projection.name)
        newest = self._newest_version(projection.name)
        if newest > projection.version:
            # Newer code has been deployed (a rolling upgrade): its generations are not ours to
            # build, switch, drop or write into, and going back to our version would undo it.
            log.warning(
                "projection %s: v%d is in the store, this code has v%d; leaving it to the newer code",
                projection.name, newest, projection.version,
            )  # fmt: skip
        elif live is None:
            log.info("creating projection %s v%d", projection.name, projection.version)
            await self._create_generation(projection, "live")
        elif live.version != projection.version and (building is None or building.version != projection.version):
            if building is not None:
                await self._drop_generation(projection, building.generation)
            log.info("projection %s: v%d -> v%d, rebuilding", projection.name, live.version, projection.version)
            await self._create_generation(projection, "building")
        await self.refresh()

    async def _create_generation(self, projection: Projection, state: str) -> int:
        async with self.log.transaction():
            taken = await self.log.query(
                "SELECT generation FROM projection_state WHERE name = ? AND state = ?", (projection.name, state)
            )
            if taken:  # another store created it between our check and this transaction
                return int(taken[0][0])
            rows = await self.log.query(
                "SELECT coalesce(max(generation), 0) FROM projection_state WHERE name = ?", (projection.name,)
            )
            generation = int(rows[0][0]) + 1
            tables = physical_tables(projection, generation)
            statements = [
                Statement(
                    "INSERT INTO projection_state (name, generation, version, checkpoint, state) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (projection.name, generation, projection.version, state),
                ),
                *(Statement(ddl) for ddl in projection.schema(tables, self.log.dialect)),
            ]
            if state == "live":
                statements += self._view_statements(projection, tables)
            await self.log.apply([GuardedBatch(None, statements)])
        return generation

    def _view_statements(self, projection: Projection, tables: Tables) -> list[Statement]:
        statements = []
        for view, table in projection.views(tables):
            statements.append(Statement(f"DROP VIEW IF EXISTS {view}"))
            statements.append(Statement(f"CREATE VIEW {view} AS SELECT * FROM {table}"))
        return statements

    async def _drop_generation(self, projection: Projection, generation: int) -> None:
        """Drop a generation being built, unless another process has switched it live meanwhile."""
        guard = Statement(
            "DELETE FROM projection_state WHERE name = ? AND generation = ? AND state = 'building'",
            (projection.name, generation),
        )
        statements = [Statement(f"DROP TABLE IF EXISTS {t}") for t in physical_tables(projection, generation).values()]
        await self.log.apply([GuardedBatch(guard, statements)])

    # -- applying events -------------------------------------------------

    def _statements(self, projection: Projection, tables: Tables, events: Sequence[RecordedEvent]) -> list[Statement]:
        handles, out = projection.handles, list[Statement]()
        for event in events:
            if event.type in handles:
                out.extend(projection.handle(event, tables))
        return out

    def _inline(self, events: Sequence[RecordedEvent]) -> list[GuardedBatch]:
        first, last = events[0].position, events[-1].position
        batches = []
        for name, generation in self.live.items():
            if not self._maintains(generation):
                continue
            statements = self._statements(self.projections[name], self._tables[name], events)
            guard = Statement(_ADVANCE, (last, name, generation.generation, first - 1))
            batches.append(GuardedBatch(guard, statements, functools.partial(self._mark_behind, last)))
        return batches

    def _mark_behind(self, position: int) -> None:
        self.behind = True
        self._missed_upto = max(self._missed_upto, position)

    def _maintains(self, generation: Generation) -> bool:
        """Whether this code applies events to a live generation.

        Not to one of a newer version than it knows: that one is the newer
        code's, which a replica still running older code must not write into
        with its older logic (a live generation of an *older* version is
        kept going until this code's rebuild replaces it).
        """
        return generation.version <= self.projections[generation.name].version

    def _newest_version(self, name: str) -> int:
        """The newest version of projection ``name`` in the store, live or being built (0: none)."""
        return max((g.version for g in (self.live.get(name), self.building.get(name)) if g is not None), default=0)

    def _builds(self) -> list[Generation]:
        """The generations being rebuilt that this code builds: those of its own version only."""
        return [g for g in self.building.values() if g.version == self.projections[g.name].version]

    async def ensure_current(self) -> None:
        """Read your writes: if an inline application was skipped, catch up now."""
        if self.behind:
            await self.catch_up(include_building=False)

    async def catch_up(self, *, include_building: bool = True, progress: Progress | None = None) -> int:
        """Apply every event up to the head as it is now; switch rebuilt generations in. Returns events read.

        The head is read once: appends that keep coming are the next call's work,
        so a call ends even while other processes append faster than it applies.
        """
        read = reached = 0
        failed: dict[str, Exception] = {}  # rebuilds that failed in this call: the live ones go on
        head = await self.log.head_position()
        while True:
            await self.refresh()
            live = [g for g in self.live.values() if self._maintains(g)]
            building = [g for g in self._builds() if g.name not in failed] if include_building else []
            if progress is not None and building:
                progress(min(g.checkpoint for g in building), head)
            low = min((g.checkpoint for g in (*live, *building)), default=head)
            reached = low
            if low >= head:
                break
            limit = min(self.batch_size, head - low)
            events = [e async for e in self.log.read_all(from_position=low + 1, limit=limit)]
            if not events:
                break
            read += len(events)
            last = events[-1].position
            batches = [self._batch(g, events) for g in live if g.checkpoint < last]
            if batches:
                await self.log.apply(batches)
            for generation in building:
                if generation.checkpoint < last:
                    try:
                        await self.log.apply([self._batch(generation, events)])
                    except Exception as exc:  # its own transaction: a failing rebuild never holds up the live tables
                        failed[generation.name] = exc
        if reached >= self._missed_upto:
            self.behind = False
        if include_building:
            await self._switch_caught_up(failed)
        if failed:
            name, error = next(iter(failed.items()))
            raise ProjectionError(f"rebuilding projection {name} failed: {error}") from error
        return read

    def _batch(self, generation: Generation, events: Sequence[RecordedEvent]) -> GuardedBatch:
        projection = self.projections[generation.name]
        tables = physical_tables(projection, generation.generation)
        todo = [e for e in events if e.position > generation.checkpoint]
        guard = Statement(_ADVANCE, (todo[-1].position, generation.name, generation.generation, generation.checkpoint))
        return GuardedBatch(guard, self._statements(projection, tables, todo))

    async def _switch_caught_up(self, failed: dict[str, Exception]) -> None:
        """Switch every generation this code built and caught up; a failure goes into ``failed``."""
        head = await self.log.head_position()
        for building in self._builds():
            name = building.name
            if name in failed or time.monotonic() < self._retry_switch_at.get(name, 0.0):
                continue
            if head - building.checkpoint > self.batch_size:
                continue  # appends came meanwhile: another catch-up first, not a long one under the lock
            try:
                await self._switch(building)
            except _SwitchBusy as busy:
                # Try again later, waiting longer each time: appends are not held up over and over.
                wait = self._switch_backoff[name] = min(2 * self._switch_backoff.get(name, 0.5), 30)
                self._retry_switch_at[name] = time.monotonic() + wait
                log.warning("projection %s: switch deferred %.0fs (%s)", name, wait, busy.__cause__)
            except Exception as exc:  # applying the last events failed: as any failed rebuild
                failed[name] = exc
            else:
                self._switch_backoff.pop(name, None)
                self._retry_switch_at.pop(name, None)
        await self.refresh()

    async def _switch(self, building: Generation) -> None:
        """Make a caught-up generation live, under the append lock so that no append is in flight.

        Unlocked, an append could commit between our last read of the head and
        the switch: applied inline to the old generation only, it would be
        missing from the new one while the appender believes it projected
        (no read-your-writes). Under the lock, the events since our last
        catch-up are applied first, so the switch always succeeds.
        """
        name, projection = building.name, self.projections[building.name]
        tables = physical_tables(projection, building.generation)
        async with self.log.transaction():  # appends (any process) wait from here to the commit
            await self.refresh()
            current, old = self.building.get(name), self.live.get(name)
            if current is None or current.generation != building.generation:
                return  # switched or dropped by another process meanwhile
            if old is not None and old.version > current.version:
                return  # newer code went live meanwhile (a rolling upgrade): never switch back
            if self.log.dialect == "postgresql":
                await self._lock_for_switch(projection, tables, old)
                await self.refresh()  # as it is now that nobody else can change it
                if _generations(self.building.get(name), self.live.get(name)) != _generations(current, old):
                    return  # another process switched or dropped it while we waited
                current = self.building[name]  # (a catch-up may have moved its checkpoint meanwhile)
            head = await self.log.head_position()
            while current.checkpoint < head:
                events = [
                    e async for e in self.log.read_all(from_position=current.checkpoint + 1, limit=self.batch_size)
                ]
                await self.log.apply([self._batch(current, events)])
                current = current._replace(checkpoint=events[-1].position)
            statements = []
            if old is not None:
                statements.append(
                    Statement("DELETE FROM projection_state WHERE name = ? AND generation = ?", (name, old.generation))
                )
            statements.append(Statement(_GO_LIVE, (name, building.generation)))
            statements += self._view_statements(projection, tables)
            if old is not None:
                statements += [
                    Statement(f"DROP TABLE IF EXISTS {t}") for t in physical_tables(projection, old.generation).values()
                ]
            guard = Statement(_SWITCH, (name, building.generation))
            (switched,) = await self.log.apply([GuardedBatch(guard, statements)])
        if switched:
            log.info("projection %s: generation %d (v%d) is live", name, building.generation, building.version)

    async def _lock_for_switch(self, projection: Projection, tables: Tables, old: Generation | None) -> None:
        """PostgreSQL: take, briefly, every lock the switch will need; raise _SwitchBusy if one is held.

        The projection's state rows (a catch-up applying to it commits first),
        its views and the old generation's tables (their readers finish first).
        Taken first and with a short wait, because every append waits for this
        transaction, and because waiting for one of them while holding the
        others could deadlock against a catch-up.
        """
        (previous,) = (await self.log.query("SELECT current_setting('lock_timeout')"))[0]
        statements = [
            Statement(f"SET LOCAL lock_timeout = '{_SWITCH_LOCK_WAIT_MS}ms'"),
            Statement("SELECT generation FROM projection_state WHERE name = ? FOR UPDATE", (projection.name,)),
        ]
        relations = [view for view, _ in projection.views(tables)]
        if old is not None:
            relations += physical_tables(projection, old.generation).values()
        statements += [Statement(f"LOCK TABLE {relation} IN ACCESS EXCLUSIVE MODE") for relation in relations]
        # Back to what it was: the short wait is for these locks only (and the transaction may be the caller's).
        statements.append(Statement("SELECT set_config('lock_timeout', ?, true)", (previous,)))
        try:
            await self.log.apply([GuardedBatch(None, statements)])
        except DatabaseError as exc:
            raise _SwitchBusy from exc

    # -- operating -------------------------------------------------------

    async def rebuild(self, names: Iterable[str] | None = None, *, progress: Progress | None = None) -> None:
        """Rebuild the named projections (default: all) from position 1 into fresh tables, then switch."""
        chosen = list(names) if names is not None else list(self.projections)
        unknown = [n for n in chosen if n not in self.projections]
        if unknown:
            raise ValueError(f"unknown projection(s): {', '.join(unknown)}; known: {', '.join(self.projections)}")
        await self.refresh()
        for name in chosen:
            newest = self._newest_version(name)
            if newest > self.projections[name].version:
                raise ProjectionError(
                    f"projection {name}: v{newest} is in the store, this code has v{self.projections[name].version}; "
                    "rebuild it with the newer code (rebuilding here would undo the upgrade)"
                )
        for name in chosen:
            projection = self.projections[name]
            if name in self.building:
                await self._drop_generation(projection, self.building[name].generation)
            await self._create_generation(projection, "building")
        while True:
            await self.catch_up(include_building=True, progress=progress)
            pending = [g.name for g in self._builds() if g.name in chosen]
            if not pending:
                return
            waits = [self._retry_switch_at.get(name, 0.0) - time.monotonic() for name in pending]
            if max(self._switch_backoff.get(name, 0.0) for name in pending) >= 30:
                raise ProjectionError(
                    f"rebuilt {', '.join(pending)} but could not switch to it: readers kept its views busy "
                    "(the new generation stays built; 'eventstore project' or a store's follower switches it later)"
                )
            await anyio.sleep(max(0.0, min(waits)))

    async def follow(self, *, poll_interval: float = 0.5, wake_on_append: bool = False) -> None:
        """Run forever: catch up (live and rebuilding generations), then wait for more."""
        while True:
            try:
                await self.catch_up(include_building=True)
            except Exception:
                log.exception("projection catch-up failed; retrying in %.1fs", poll_interval)
            if wake_on_append:
                await self.log.wait_for_append(poll_interval)
            else:
                await anyio.sleep(poll_interval)

    async def status(self) -> list[ProjectionStatus]:
        await self.refresh()
        head = await self.log.head_position()
        out = []
        for generation in [*self.live.values(), *self.building.values()]:
            rebuilding = generation.state != "live"
            out.append(
                ProjectionStatus(
                    name=generation.name,
                    version=generation.version,
                    generation=generation.generation,
                    checkpoint=generation.checkpoint,
                    lag=max(0, head - generation.checkpoint),
                    state="rebuilding" if rebuilding else "live",
                    progress=(generation.checkpoint / head if head else 1.0) if rebuilding else 1.0,
                )
            )
        return sorted(out, key=lambda s: (s.name, s.state))

    def table(self, projection: str, table: str) -> str:
        """The physical table behind a logical one, in the live generation (for writes like cleanup)."""
        return self._tables[projection][table]
