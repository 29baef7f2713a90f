"""Named queries for the adapter registry and the cycle record.

An adapter's status moves candidate → active → previous → retired, or candidate → rejected.
At most one adapter is active and one previous (instant rollback). Every change of the
active adapter writes an audit row in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import duckdb

from feedback.audit import audit
from feedback.errors import ConflictError, NotFoundError
from feedback.store import Store

# json_merged (migration 007, both dialects): merge a JSON value into a document under a key
_REJECT_SQL = ("UPDATE adapters SET status = 'rejected', metrics = json_merged(metrics, 'rejected_because', ?),"
               " updated_at = now() WHERE status = 'candidate' AND {which}")


class RegistryRecord:
    def __init__(self, store: Store):
        self.store = store

    # -- adapters --------------------------------------------------------------------
    def register(self, version: str, parent: str | None, method: str, path: str, checksum: str,
                 base_model: str, snapshot_id: str, message_ids: list[str]) -> None:
        def task(conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute(
                "INSERT INTO adapters (version, parent, method, path, checksum, status, base_model, snapshot_id)"
                " VALUES (?, ?, ?, ?, ?, 'candidate', ?, ?)",
                [version, parent, method, path, checksum, base_model, snapshot_id],
            )
            conn.execute("INSERT INTO adapter_provenance SELECT ?, unnest(?::TEXT[]) ON CONFLICT DO NOTHING",
                         [version, message_ids])

        self.store.write(task)

    def set_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        self.store.write(lambda conn: conn.execute(
            "UPDATE adapters SET metrics = ?, updated_at = now() WHERE version = ?", [json.dumps(metrics), version]))

    def reject(self, version: str, reason: str, also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        """Reject a candidate; ``also`` runs in the same transaction (a decision's record and audit row)."""

        def task(conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute(_REJECT_SQL.format(which="version = ?"), [json.dumps(reason), version])
            if also is not None:
                also(conn)

        self.store.write(task)

    def adapter(self, version: str) -> dict[str, Any]:
        rows = self.store.read("SELECT * FROM adapters WHERE version = ?", [version])
        if not rows:
            raise NotFoundError(f"unknown adapter version {version!r}; `carecycle adapters list` shows them")
        return rows[0]

    def adapters(self) -> list[dict[str, Any]]:
        return self.store.read("SELECT * FROM adapters ORDER BY created_at DESC")

    def with_status(self, status: str) -> dict[str, Any] | None:
        rows = self.store.read("SELECT * FROM adapters WHERE status = ? ORDER BY updated_at DESC LIMIT 1", [status])
        return rows[0] if rows else None

    def make_active(self, actor: str, version: str | None, action: str,
                    also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> dict[str, str | None]:
        """``version`` (None: the base model) becomes active, the active one becomes previous,
        the previous one is retired; ``also`` runs in the same transaction (e.g. the record of an
        approval). Returns the versions that changed status."""

        def task(conn: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
            statuses = dict(conn.execute("SELECT status, version FROM adapters WHERE status IN ('active', 'previous')").fetchall())
            if version is not None:
                row = conn.execute("SELECT status FROM adapters WHERE version = ?", [version]).fetchone()
                if row is None:
                    raise NotFoundError(f"unknown adapter version {version!r}; `carecycle adapters list` shows them")
                if row[0] == "rejected":
                    raise ConflictError(f"adapter {version} was rejected by the gate; it cannot become active")
                if row[0] == "active":
                    raise ConflictError(f"adapter {version} is already active")
            old_active, old_previous = statuses.get("active"), statuses.get("previous")
            # a rolled-back adapter is retired, not kept as "previous": rolling back twice must not bring it back
            demoted = "retired" if action == "rollback" else "previous"
            conn.execute("UPDATE adapters SET status = 'retired', updated_at = now() WHERE status = 'previous'"
                         " AND version IS DISTINCT FROM ?", [version])
            conn.execute(f"UPDATE adapters SET status = '{demoted}', updated_at = now() WHERE status = 'active'")
            if version is not None:
                conn.execute("UPDATE adapters SET status = 'active', updated_at = now() WHERE version = ?", [version])
            audit(conn, actor, f"adapter.{action}", version or "base", replaced=old_active)
            if also is not None:
                also(conn)
            retired = [v for v in (old_previous if old_previous != version else None,
                                   old_active if demoted == "retired" else None) if v]
            return {"active": version, "previous": old_active if demoted == "previous" else None, "retired": retired}

        return self.store.write(task)

    def previous_for_rollback(self) -> dict[str, Any]:
        """The version a rollback returns to: the previous one, else the base model."""
        previous = self.with_status("previous")
        if previous is None and self.with_status("active") is None:
            raise ConflictError("no previous version to roll back to: the base model is serving")
        return previous or {"version": None}

    # -- cycles ----------------------------------------------------------------------
    def start_cycle(self, cycle_id: str, trigger: str, actor: str | None = None) -> None:
        """Open a cycle's record; one that ``actor`` started by hand is audited in the same transaction."""

        def task(conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute("INSERT INTO cycles (id, status, trigger, step, detail) VALUES (?, 'running', ?, 'start', '{}')",
                         [cycle_id, trigger])
            if actor is not None:
                audit(conn, actor, "cycle.trigger", cycle_id)

        self.store.write(task)

    def enter_step(self, cycle_id: str, step: str) -> None:
        """The step a cycle is in now (its figures come with ``record_step``)."""
        self.store.write(lambda conn: conn.execute("UPDATE cycles SET step = ? WHERE id = ?", [step, cycle_id]))

    def record_step(self, cycle_id: str, step: str, figures: dict[str, Any]) -> None:
        """Write a step and its figures into the cycle record as it happens."""
        self.store.write(lambda conn: conn.execute(
            "UPDATE cycles SET step = ?, detail = json_merged(detail, ?, ?) WHERE id = ?",
            [step, step, json.dumps(figures, default=str), cycle_id]))

    def finish_cycle(self, cycle_id: str, status: str, figures: dict[str, Any]) -> None:
        self.store.write(lambda conn: _finish(conn, cycle_id, status, figures))

    def decision(self, cycle_id: str, actor: str, approve: bool, winner: str) -> Callable[[duckdb.DuckDBPyConnection], None]:
        """What an admin's decision on a cycle awaiting approval writes — the cycle's outcome and
        the audit row — to run inside the transaction that promotes or rejects the winner."""

        def record(conn: duckdb.DuckDBPyConnection) -> None:
            row = conn.execute("SELECT status FROM cycles WHERE id = ?", [cycle_id]).fetchone()
            if row is None or row[0] != "awaiting_approval":
                raise ConflictError(f"cycle {cycle_id} is {row[0] if row else 'unknown'}, not awaiting approval")
            status = "promoted" if approve else "kept"
            _finish(conn, cycle_id, status, {"decision": status, "decided_by": actor, "winner": winner})
            audit(conn, actor, "cycle.approve" if approve else "cycle.reject", cycle_id, winner=winner)

        return record

    def interrupt_running(self) -> list[str]:
        """Cycles left 'running' by a server that died: mark them interrupted and reject the
        candidates they trained (no gate ever passed them)."""

        def task(conn: duckdb.DuckDBPyConnection) -> list[str]:
            ids = [row[0] for row in conn.execute("SELECT id FROM cycles WHERE status = 'running'").fetchall()]
            conn.execute("UPDATE cycles SET status = 'interrupted', finished_at = now() WHERE status = 'running'")
            for cycle_id in ids:
                _reject_candidates_of(conn, cycle_id, f"cycle {cycle_id} was interrupted")
            return ids

        return self.store.write(task)

    def reject_candidates_of(self, cycle_id: str, reason: str) -> None:
        """Reject every candidate ``cycle_id`` trained: a failed cycle leaves none waiting."""
        self.store.write(lambda conn: _reject_candidates_of(conn, cycle_id, reason))

    def cycles(self, limit: int = 50) -> list[dict[str, Any]]:
        return [_decoded(row) for row in self.store.read("SELECT * FROM cycles ORDER BY started_at DESC LIMIT ?", [limit])]

    def cycle(self, cycle_id: str) -> dict[str, Any]:
        rows = self.store.read("SELECT * FROM cycles WHERE id = ?", [cycle_id])
        if not rows:
            raise NotFoundError(f"unknown cycle {cycle_id!r}")
        return _decoded(rows[0])

    def signal_since_last_cycle(self) -> int:
        """New labelled signal (votes, judgments, verdicts) since the last cycle that trained and
        finished (a cycle skipped for too little signal does not reset the count, nor does one that
        failed or was interrupted: its candidates were rejected, so its signal is still unused)."""
        return self.store.read_one(
            """WITH since AS (SELECT coalesce(max(started_at), TIMESTAMPTZ '1970-01-01') AS t FROM cycles
                              WHERE (detail -> 'train') IS NOT NULL AND status NOT IN ('failed', 'interrupted'))
               SELECT (SELECT count(*) FROM feedback, since WHERE created_at > since.t)
                    + (SELECT count(*) FROM judgments, since WHERE created_at > since.t)
                    + (SELECT count(*) FROM reviews, since WHERE created_at > since.t)""")[0]


def _finish(conn: duckdb.DuckDBPyConnection, cycle_id: str, status: str, figures: dict[str, Any]) -> None:
    conn.execute("UPDATE cycles SET status = ?, finished_at = now(),"
                 " detail = json_merged(detail, 'outcome', ?) WHERE id = ?",
                 [status, json.dumps(figures, default=str), cycle_id])


def _decoded(cycle: dict[str, Any]) -> dict[str, Any]:
    return {**cycle, "detail": json.loads(cycle["detail"]) if cycle["detail"] else {}}


def candidate_version(method: str, cycle_id: str) -> str:
    """The version name of the candidate ``method`` trained in ``cycle_id`` (never reused)."""
    return f"{method}-{_cycle_suffix(cycle_id)}"


def _cycle_suffix(cycle_id: str) -> str:
    return cycle_id.removeprefix("cyc-")


def _reject_candidates_of(conn: duckdb.DuckDBPyConnection, cycle_id: str, reason: str) -> None:
    conn.execute(_REJECT_SQL.format(which="version LIKE ?"), [json.dumps(reason), f"%-{_cycle_suffix(cycle_id)}"])
