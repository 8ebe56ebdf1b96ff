"""The log's own migration set: the events table and its append-only guard."""

from __future__ import annotations

from collections.abc import Sequence

from eventstore.migrations import MigrationSet

__all__ = ("LOG_MIGRATIONS",)

LOG_MIGRATIONS = MigrationSet("log")


@LOG_MIGRATIONS.step
def create_events(dialect: str) -> Sequence[str]:
    if dialect == "sqlite":
        return (
            # position is the rowid: no separate index, and contiguous because the
            # writer assigns head + 1 under the database's single write lock.
            """CREATE TABLE events (
                position INTEGER PRIMARY KEY,
                event_id BLOB NOT NULL UNIQUE,
                stream TEXT NOT NULL,
                version INTEGER NOT NULL,
                type TEXT NOT NULL,
                schema_version INTEGER NOT NULL,
                recorded_at INTEGER NOT NULL,
                metadata BLOB NOT NULL,
                data BLOB NOT NULL,
                hash BLOB NOT NULL,
                UNIQUE (stream, version)
            )""",
            """CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END""",
            """CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END""",
        )
    return (
        """CREATE TABLE events (
            position BIGINT PRIMARY KEY,
            event_id BYTEA NOT NULL UNIQUE,
            stream TEXT NOT NULL,
            version BIGINT NOT NULL,
            type TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            recorded_at BIGINT NOT NULL,
            metadata BYTEA NOT NULL,
            data BYTEA NOT NULL,
            hash BYTEA NOT NULL,
            UNIQUE (stream, version)
        )""",
        """CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'events are append-only: % refused', TG_OP; END $$""",
        """CREATE TRIGGER events_refuse_change BEFORE UPDATE OR DELETE OR TRUNCATE ON events
           FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()""",
    )


@LOG_MIGRATIONS.step
def refuse_replace(dialect: str) -> Sequence[str]:
    """SQLite's REPLACE deletes a conflicting row without firing DELETE triggers
    (unless the connection enables recursive_triggers), so an INSERT OR REPLACE
    could rewrite an event. Refuse any insert that collides with a recorded
    position, event id or stream version. Costs ~7% of a single-event append and
    ~20% of a 1000-event batch in raw sqlite3 (measured), a price we pay for the
    log being append-only in the database itself. PostgreSQL needs nothing: its
    ON CONFLICT DO UPDATE is an UPDATE, which the trigger already refuses.
    """
    if dialect != "sqlite":
        return ()
    return (
        """CREATE TRIGGER events_refuse_replace BEFORE INSERT ON events
           WHEN NEW.position <= coalesce((SELECT max(position) FROM events), 0)
             OR EXISTS (SELECT 1 FROM events WHERE event_id = NEW.event_id)
             OR EXISTS (SELECT 1 FROM events WHERE stream = NEW.stream AND version = NEW.version)
           BEGIN SELECT RAISE(ABORT, 'events are append-only: REPLACE of a recorded event refused'); END""",
    )


@LOG_MIGRATIONS.step
def append_function(dialect: str) -> Sequence[str]:
    """PostgreSQL: one server-side call that checks, numbers, hashes and inserts a group of appends.

    The client's general append path takes four round trips (BEGIN and the
    lock, the state read, the INSERT, COMMIT); this function does the same work
    in one, in an autocommit statement. See ``eventstore.backends.pgappend``
    for the calling side and ``pgwrite.Writes.append_group`` for why the lock.
    """
    if dialect != "postgresql":
        return ()
    return (APPEND_FUNCTION,)


# Arguments: the append lock's two keys and the NOTIFY channel; per request
# (in order) its stream, the index (1-based) of the call's previous request on
# the same stream or 0, its expected version (>= 0 exact, -1 ANY, -2 NO_STREAM,
# -3 STREAM_EXISTS), event count, recorded_at (µs) and metadata; per event
# its id, type, schema_version and data.
# status 0: written, ``first_position`` is the first event's position and
# ``versions`` each request's stream version before it. status 2: an expected
# version does not hold; status 3: an event id is recorded already. Nothing is
# written then, and the caller takes the general path, which reports
# precisely or answers the idempotent re-append.
#
# The lock, then every read in a later statement: in a VOLATILE function each
# statement takes a fresh READ COMMITTED snapshot, so the head read below
# includes every append committed before the lock was granted. The hash is
# eventstore.codec.chain_hash spelled in SQL (same fixed layout, big-endian).
# ``plan_cache_mode = auto`` lets PL/pgSQL keep its plans: the connections'
# force_custom_plan would re-plan every statement on every call (~18% fewer
# single appends per second, measured). Every statement here is an index probe
# or an insert whatever its plan; the one that was not (an ANY(ids) probe, a
# sequential scan once cached on a young table) is replaced by catching the
# unique violation. ``search_path`` is pinned to the schema the function lives in.
APPEND_FUNCTION = r"""
CREATE FUNCTION eventstore_append(
    lock_class integer, lock_key integer, channel text,
    q_stream text[], q_previous integer[], q_expected bigint[], q_count integer[], q_recorded bigint[],
    q_metadata bytea[],
    r_event_id bytea[], r_type text[], r_schema integer[], r_data bytea[],
    OUT status integer, OUT first_position bigint, OUT versions bigint[])
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = auto
SET search_path FROM CURRENT
AS $$
DECLARE
    head bigint;
    prev bytea;
    rec bigint;
    total integer := cardinality(r_event_id);
    r integer := 0;
    version bigint;
    expected bigint;
    stream_b bytea;
    type_b bytea;
    w_position bigint[];
    w_stream text[];
    w_version bigint[];
    w_recorded bigint[];
    w_metadata bytea[];
    w_hash bytea[];
    violated text;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_class, lock_key);
    SELECT e.position, e.hash, e.recorded_at INTO head, prev, rec
      FROM events AS e ORDER BY e.position DESC LIMIT 1;
    IF head IS NULL THEN
        head := 0;
        prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        rec := 0;
    END IF;
    first_position := head + 1;
    versions := array_fill(0::bigint, ARRAY[cardinality(q_stream)]);
    FOR q IN 1 .. cardinality(q_stream) LOOP
        -- The stream's version before this request: where an earlier request
        -- of this call on the same stream left it, else the recorded one.
        IF q_previous[q] > 0 THEN
            version := versions[q_previous[q]] + q_count[q_previous[q]];
        ELSE
            SELECT e.version INTO version FROM events AS e WHERE e.stream = q_stream[q]
             ORDER BY e.version DESC LIMIT 1;
            version := coalesce(version, 0);
        END IF;
        versions[q] := version;
        expected := q_expected[q];
        IF (expected >= 0 AND version <> expected) OR (expected = -2 AND version <> 0)
           OR (expected = -3 AND version = 0) THEN
            status := 2;
            RETURN;
        END IF;
        IF q_count[q] > 0 THEN
            rec := greatest(rec, q_recorded[q]);
        END IF;
        stream_b := convert_to(q_stream[q], 'UTF8');
        FOR k IN 1 .. q_count[q] LOOP
            r := r + 1;
            head := head + 1;
            version := version + 1;
            type_b := convert_to(r_type[r], 'UTF8');
            prev := sha256(prev || int8send(head) || int8send(version) || int4send(r_schema[r]) || int8send(rec)
                || int4send(octet_length(stream_b)) || int4send(octet_length(type_b))
                || int4send(octet_length(q_metadata[q])) || int4send(octet_length(r_data[r]))
                || r_event_id[r] || stream_b || type_b || q_metadata[q] || r_data[r]);
            w_position[r] := head;
            w_stream[r] := q_stream[q];
            w_version[r] := version;
            w_recorded[r] := rec;
            w_metadata[r] := q_metadata[q];
            w_hash[r] := prev;
        END LOOP;
    END LOOP;
    IF r <> total THEN
        RAISE EXCEPTION 'eventstore_append: % events given, the counts add up to %', total, r;
    END IF;
    status := 0;
    IF total = 0 THEN
        RETURN;
    END IF;
    -- A recorded id is caught here (a subtransaction: no measurable cost)
    -- rather than probed for first (see the plan_cache_mode note above).
    BEGIN
        INSERT INTO events (position, event_id, stream, version, type, schema_version, recorded_at,
                            metadata, data, hash)
        SELECT * FROM unnest(w_position, r_event_id, w_stream, w_version, r_type, r_schema, w_recorded,
                             w_metadata, r_data, w_hash);
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
        IF violated <> 'events_event_id_key' THEN
            RAISE;
        END IF;
        status := 3;
        RETURN;
    END;
    PERFORM pg_notify(channel, head::text);
END $$"""
