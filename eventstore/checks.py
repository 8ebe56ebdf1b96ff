"""Validate a store: schema objects as the migrations define them, and projection drift.

``verify`` (the hash chain and positions) lives on the log itself; this module
adds what needs the projections layer:

* every table, index, trigger and view the migrations and the live projection
  generations define exists (on SQLite, with the very definition they give);
* each live projection, rebuilt from the log into scratch tables up to its
  checkpoint, has exactly the rows of its live tables.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from eventstore.errors import EventStoreError
from eventstore.migrations import MigrationSet
from eventstore.model import GuardedBatch, Statement
from eventstore.schema import LOG_MIGRATIONS
from eventstore.store import EventStore
from projections import STATE_MIGRATIONS, Projection, ProjectionRunner, iso
from projections.runner import physical_tables

__all__ = ("SchemaObject", "ValidationReport", "expected_objects", "validate")

Progress = Callable[[str, int, int], None]
_CREATE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?(?:VIRTUAL\s+)?(TABLE|INDEX|TRIGGER|VIEW|FUNCTION)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"([A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)
_MAX_ROWS_NAMED = 10
#: Rows a cleanup may delete from a live table on purpose: (projection, table) -> SQL condition.
_CLEANED = {("suppression", "suppression"): "expires_at <= ?"}


class SchemaObject(NamedTuple):
    kind: str  # table, index, trigger, view, function
    name: str
    sql: str


class ValidationReport(msgspec.Struct):
    problems: list[str] = msgspec.field(default_factory=list)
    objects_checked: int = 0
    projections_checked: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return (
                f"OK: {self.objects_checked} schema objects present; "
                f"no drift in {', '.join(self.projections_checked) or 'no projections'}"
            )
        return "\n".join(self.problems)


def _objects(statements: Iterable[str]) -> list[SchemaObject]:
    found = []
    for sql in statements:
        match = _CREATE.match(sql)
        if match:
            found.append(SchemaObject(match.group(1).lower(), match.group(2), sql))
    return found


def expected_objects(dialect: str, migrations: Sequence[MigrationSet], runner: ProjectionRunner) -> list[SchemaObject]:
    """Every object the migrations and the live projection generations define."""
    objects: list[SchemaObject] = []
    for migration_set in migrations:
        for step in migration_set.steps:
            objects += _objects(step.statements(dialect))
    for name, generation in runner.live.items():
        projection = runner.projections[name]
        tables = physical_tables(projection, generation.generation)
        objects += _objects(projection.schema(tables, dialect))
        objects += [
            SchemaObject("view", view, f"CREATE VIEW {view} AS SELECT * FROM {table}")
            for view, table in projection.views(tables)
        ]
    return objects


async def _present_sqlite(log: EventStore) -> dict[tuple[str, str], str]:
    rows = await log.query("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    return {(str(kind), str(name)): str(sql) for kind, name, sql in rows}


async def _present_postgres(log: EventStore) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    queries = (
        ("table", "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"),
        ("index", "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname = current_schema() AND c.relkind = 'i'"),
        ("view", "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = current_schema() AND c.relkind = 'v'"),
        ("trigger", "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND NOT t.tgisinternal AND t.tgenabled <> 'D'"),
        ("function", "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                     "WHERE n.nspname = current_schema()"),
    )  # fmt: skip
    for kind, sql in queries:
        for (name,) in await log.query(sql):
            found[(kind, str(name))] = ""
    return found


def _normal(sql: str) -> str:
    return " ".join(sql.replace("(", " ( ").replace(")", " ) ").replace(",", " , ").split()).lower()


async def check_schema(
    log: EventStore, runner: ProjectionRunner, migrations: Sequence[MigrationSet]
) -> tuple[list[str], int]:
    expected = expected_objects(log.dialect, migrations, runner)
    sqlite = log.dialect == "sqlite"
    present = await (_present_sqlite(log) if sqlite else _present_postgres(log))
    problems = []
    for obj in expected:
        kind = "table" if sqlite and obj.kind == "table" else obj.kind
        actual = present.get((kind, obj.name))
        if actual is None:
            problems.append(f"schema: {obj.kind} {obj.name} is missing")
        elif sqlite and _normal(actual) != _normal(obj.sql):
            problems.append(f"schema: {obj.kind} {obj.name} differs from its migration: {' '.join(actual.split())}")
    applied = await log.applied_migrations()
    for migration_set in migrations:
        if applied.get(migration_set.name, 0) != migration_set.latest:
            problems.append(
                f"schema: migration set {migration_set.name} is at step {applied.get(migration_set.name, 0)}, "
                f"expected {migration_set.latest}"
            )
    return problems, len(expected)


async def check_drift(
    log: EventStore, runner: ProjectionRunner, name: str, progress: Progress | None = None
) -> list[str]:
    """Rebuild projection ``name`` into scratch tables up to its live checkpoint and compare."""
    projection = runner.projections[name]
    scratch = {t: f"{t}_check_{uuid.uuid4().hex[:8]}" for t in projection.tables}
    await log.apply([GuardedBatch(None, [Statement(ddl) for ddl in projection.schema(scratch, log.dialect)])])
    try:
        done = 0
        for _ in range(5):
            target = runner.live[name].checkpoint
            done = await _fill(log, projection, scratch, done, target, progress)
            async with log.transaction():
                await runner.refresh()
                if runner.live[name].checkpoint == target:
                    return await _compare(log, runner, projection, scratch)
        return [f"projection {name}: kept moving while being checked; try again"]
    finally:
        drops = [Statement(f"DROP TABLE IF EXISTS {t}") for t in scratch.values()]
        await log.apply([GuardedBatch(None, drops)])


async def _fill(
    log: EventStore,
    projection: Projection,
    scratch: dict[str, str],
    done: int,
    target: int,
    progress: Progress | None,
) -> int:
    position = done
    while position < target:
        events = [e async for e in log.read_all(from_position=position + 1, limit=min(2000, target - position))]
        if not events:
            break
        statements = [s for e in events if e.type in projection.handles for s in projection.handle(e, scratch)]
        if statements:
            await log.apply([GuardedBatch(None, statements)])
        position = events[-1].position
        if progress is not None:
            progress(projection.name, position, target)
    return target


async def _compare(
    log: EventStore, runner: ProjectionRunner, projection: Projection, scratch: dict[str, str]
) -> list[str]:
    problems = []
    now = iso(log.now())
    for table in projection.tables:
        live, fresh = runner.table(projection.name, table), scratch[table]
        columns = await _columns(log, projection, live)
        extra = await log.query(f"SELECT {columns} FROM {live} EXCEPT SELECT {columns} FROM {fresh}")
        missing_sql = f"SELECT {columns} FROM {fresh} EXCEPT SELECT {columns} FROM {live}"
        params: tuple[Any, ...] = ()
        cleaned = _CLEANED.get((projection.name, table))
        if cleaned:
            missing_sql = f"SELECT * FROM ({missing_sql}) AS m WHERE NOT ({cleaned})"
            params = (now,)
        missing = await log.query(missing_sql, params)
        for label, rows in (("differs from the log", extra), ("is missing or differs", missing)):
            for row in sorted(rows, key=repr)[:_MAX_ROWS_NAMED]:
                problems.append(f"drift: {projection.name}.{table} row {_row(row)} {label}")
            if len(rows) > _MAX_ROWS_NAMED:
                problems.append(f"drift: {projection.name}.{table}: {len(rows) - _MAX_ROWS_NAMED} more rows {label}")
    return problems


async def _columns(log: EventStore, projection: Projection, table: str) -> str:
    # A projection may say which columns to compare (e.g. an FTS table's rowid, which * leaves out).
    chooser = getattr(projection, "compare_columns", None)
    return str(chooser(table, log.dialect)) if callable(chooser) else "*"


def _row(row: Sequence[Any]) -> str:
    text = ", ".join(repr(value) for value in row)
    return f"({text[:200]}{'...' if len(text) > 200 else ''})"


async def validate(
    log: EventStore, projections: Iterable[Projection], *, progress: Progress | None = None
) -> ValidationReport:
    """Check the schema and every live projection; the report lists each problem found."""
    runner = ProjectionRunner(log, projections)
    report = ValidationReport()
    has_projections = "projections" in await log.applied_migrations()
    if has_projections:
        await runner.refresh()
    migrations = [LOG_MIGRATIONS, STATE_MIGRATIONS] if has_projections else [LOG_MIGRATIONS]
    schema_problems, report.objects_checked = await check_schema(log, runner, migrations)
    report.problems += schema_problems
    for name in sorted(runner.live):
        try:
            report.problems += await check_drift(log, runner, name, progress)
        except EventStoreError as exc:
            report.problems.append(f"drift: projection {name} could not be rebuilt and compared: {exc}")
        report.projections_checked.append(name)
    return report
