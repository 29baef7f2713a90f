"""Named queries through which processes sharing one record coordinate: cycle requests (an app
replica asks, the elected worker starts them) and rate-limit counters that hold across replicas.
"""

from __future__ import annotations

import uuid
from typing import Any

from feedback.audit import audit
from feedback.errors import ConflictError, NotFoundError
from feedback.store import Store, read_committed


class CycleRequests:
    def __init__(self, store: Store):
        self.store = store

    def ask(self, actor: str, trigger: str) -> dict[str, Any]:
        """Queue a cycle for the worker (audited as ``actor``'s, in the same transaction); a request
        still waiting is returned instead of a second one; ConflictError names a cycle running now."""

        def task(conn) -> str:
            running = conn.execute("SELECT id FROM cycles WHERE status = 'running' LIMIT 1").fetchone()
            if running is not None:
                raise ConflictError(f"cycle {running[0]} is running; wait for it (GET /api/admin/cycles/{running[0]})")
            waiting = conn.execute("SELECT id FROM cycle_requests WHERE cycle_id IS NULL ORDER BY requested_at LIMIT 1").fetchone()
            if waiting is not None:
                return waiting[0]
            request_id = f"req-{uuid.uuid4().hex[:12]}"
            conn.execute("INSERT INTO cycle_requests (id, requested_by, trigger) VALUES (?, ?, ?)", [request_id, actor, trigger])
            audit(conn, actor, "cycle.request", request_id)
            return request_id

        return self.get(self.store.write(task))

    def get(self, request_id: str) -> dict[str, Any]:
        rows = self.store.read("SELECT * FROM cycle_requests WHERE id = ?", [request_id])
        if not rows:
            raise NotFoundError(f"unknown cycle request {request_id!r}")
        return {**rows[0], "status": "queued" if rows[0]["cycle_id"] is None else "started"}

    def oldest_waiting(self) -> dict[str, Any] | None:
        rows = self.store.read("SELECT * FROM cycle_requests WHERE cycle_id IS NULL ORDER BY requested_at LIMIT 1")
        return rows[0] if rows else None

    def started(self, request_id: str, cycle_id: str) -> None:
        self.store.write(lambda conn: conn.execute(
            "UPDATE cycle_requests SET cycle_id = ?, started_at = now() WHERE id = ?", [cycle_id, request_id]))


def count_request(store: Store, action: str, user_key: str) -> int:
    """Count one ``action`` by ``user_key`` in the current minute of the database's clock (one
    clock for every replica); returns the minute's count so far, this request included. An upsert:
    at READ COMMITTED it waits for a concurrent one on the same row and adds to its count."""
    return store.write(read_committed(lambda conn: conn.execute(
        "INSERT INTO rate_limits AS r (action, user_key, window_start, count)"
        " VALUES (?, ?, date_trunc('minute', now()), 1)"
        " ON CONFLICT (action, user_key) DO UPDATE SET"
        " count = CASE WHEN r.window_start = excluded.window_start THEN r.count + 1 ELSE 1 END,"
        " window_start = excluded.window_start RETURNING count",
        [action, user_key]).fetchone()[0]))
