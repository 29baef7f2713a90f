-- What processes sharing one record coordinate through (several app replicas and one
-- `carecycle worker` on PostgreSQL). The embedded DuckDB record has the tables too, unused:
-- both dialects keep the same schema.

-- A cycle an admin asked for on a replica that runs no cycles (CARECYCLE_WORKER=external):
-- the elected worker starts the oldest waiting request and names the cycle it started.
CREATE TABLE cycle_requests (
    id            TEXT PRIMARY KEY,
    requested_by  TEXT NOT NULL,
    trigger       TEXT NOT NULL,           -- the cycle's trigger, e.g. api:<admin id>
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    cycle_id      TEXT,                    -- NULL: still waiting for the worker
    started_at    TIMESTAMPTZ
);

-- Per-user rate limits that hold across replicas: requests counted in the current one-minute
-- window, one row per (action, user), reset when a new window starts.
CREATE TABLE rate_limits (
    action        TEXT NOT NULL,
    user_key      TEXT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (action, user_key)
);
