"""Read models built from the event log, and the runner that keeps them current.

Built on the log's public API only (``eventstore``), never on a backend module.
"""

from __future__ import annotations

from projections.base import Projection, Tables, iso, json_text
from projections.builtin import (
    BUILTIN_PROJECTIONS,
    ProcessingProjection,
    SignalsProjection,
    SuppressionProjection,
)
from projections.runner import STATE_MIGRATIONS, Generation, ProjectionRunner, ProjectionStatus

__all__ = (
    "BUILTIN_PROJECTIONS",
    "STATE_MIGRATIONS",
    "Generation",
    "ProcessingProjection",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "SignalsProjection",
    "SuppressionProjection",
    "Tables",
    "iso",
    "json_text",
)
