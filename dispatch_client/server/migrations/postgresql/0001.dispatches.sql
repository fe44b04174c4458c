-- The dispatch store of the reference server (see dispatch_client/server/pg_store.py).
-- Times are integer microseconds since the Unix epoch, as in the SQLite store, so
-- both stores compare, sort and page identically. `type` is bytea: PostgreSQL text
-- cannot hold NUL, and a dispatch type may.

CREATE TABLE dispatches (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    microgrid_id  bigint  NOT NULL,
    type          bytea   NOT NULL,
    start_time    bigint  NOT NULL,
    end_time      bigint,
    create_time   bigint  NOT NULL,
    update_time   bigint  NOT NULL,
    is_active     boolean NOT NULL,
    is_dry_run    boolean NOT NULL,
    is_recurring  boolean NOT NULL,
    target_key    text    NOT NULL,
    data          bytea   NOT NULL
);
CREATE INDEX dispatches_by_create ON dispatches (microgrid_id, create_time, id);
CREATE INDEX dispatches_by_start ON dispatches (microgrid_id, start_time, id);
CREATE INDEX dispatches_by_update ON dispatches (microgrid_id, update_time, id);

-- One row per committed change, written in the change's transaction; its seq goes
-- out with NOTIFY and every replica reads the row back to feed its streams.
CREATE TABLE dispatch_events (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    microgrid_id  bigint   NOT NULL,
    kind          smallint NOT NULL,
    dispatch      bytea    NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispatch_events_by_age ON dispatch_events (created_at);

-- Nonces of signed requests, shared by all replicas: a nonce is accepted once
-- until it expires (its timestamp leaves the clock window).
CREATE TABLE used_nonces (
    nonce       text   PRIMARY KEY,
    expires_at  bigint NOT NULL
);
CREATE INDEX used_nonces_by_expiry ON used_nonces (expires_at);
