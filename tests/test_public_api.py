"""The public names are pinned: what ``eventstore`` exports is what its modules define."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import eventstore
from eventstore import errors, events, model

ROOT = Path(__file__).resolve().parent.parent
FACADE_NAMES = {"Signal", "SignalStore", "SuppressionEntry", "signal_store"}

LOG_API = {
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "DatabaseError",
    "DuplicateEventError",
    "Event",
    "EventStore",
    "EventStoreError",
    "IntegrityViolation",
    "InvalidEvent",
    "InvalidTransition",
    "NotFound",
    "ProjectionError",
    "RecordedEvent",
    "SchemaVersionError",
    "SignalDetected",
    "SignalPushed",
    "SignalRejected",
    "StoreClosed",
    "SuppressionSynced",
    "VerifyReport",
    "WrongExpectedVersion",
    "company_stream",
    "open_store",
}


def test_the_log_api_is_exported() -> None:
    assert set(eventstore.__all__) >= LOG_API | FACADE_NAMES
    assert len(eventstore.__all__) == len(set(eventstore.__all__))
    for name in set(eventstore.__all__) - FACADE_NAMES:
        assert hasattr(eventstore, name), name


@pytest.mark.parametrize("module", [errors, events, model])
def test_each_module_exports_exactly_what_it_defines(module: object) -> None:
    exported = module.__all__  # type: ignore[attr-defined]
    assert len(exported) == len(set(exported))
    for name in exported:
        assert hasattr(module, name), f"{module.__name__}.{name}"  # type: ignore[attr-defined]


def test_every_error_is_an_event_store_error_and_exported() -> None:
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__]
    assert {cls.__name__ for cls in classes} == set(errors.__all__)
    for cls in classes:
        assert issubclass(cls, eventstore.EventStoreError)
        assert getattr(eventstore, cls.__name__) is cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the error tree drawing"


def test_the_signal_events_are_all_exported() -> None:
    for name in ("SignalDetected", "SignalPushed", "SignalRejected", "SuppressionSynced"):
        assert getattr(eventstore, name) is getattr(events, name)
        assert issubclass(getattr(events, name), events.Event)


def test_unknown_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError):
        eventstore.no_such_name  # noqa: B018


def test_importing_the_log_imports_neither_projections_nor_the_postgres_driver() -> None:
    code = (
        "import sys, eventstore, eventstore.store, eventstore.backends.sqlite\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('projections', 'asyncpg')"
        " or m in ('eventstore.facade', 'eventstore.backends.postgres'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LOG_MODULES = (
    "errors",
    "events",
    "model",
    "codec",
    "store",
    "schema",
    "migrations",
    "backends/__init__",
    "backends/base",
)


@pytest.mark.parametrize("name", [*LOG_MODULES, "backends/sqlite", "backends/postgres"])
def test_log_modules_import_nothing_from_the_layers_above(name: str) -> None:
    path = ROOT / "eventstore" / f"{name}.py"
    source = path.read_text()
    for above in ("projections", "eventstore.facade", "eventstore.audit", "eventstore.cli"):
        assert f"import {above}" not in source and f"from {above}" not in source, (name, above)
