"""Admin API for the realignment loop: cycles, adapters, promotion, rollback, approval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from feedback.coordination import CycleRequests
from feedback.errors import ConflictError
from serve.dependencies import AdminUser
from serve.errors import ERROR_RESPONSES

from deploy.cycle import Cycle
from deploy.promotion import promote, rollback
from deploy.scheduler import ask_for_cycle

router = APIRouter(prefix="/api/admin", tags=["cycles"], responses=ERROR_RESPONSES)


def _cycle(request: Request) -> Cycle:
    return request.app.state.cycle


CycleDep = Annotated[Cycle, Depends(_cycle)]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: bool


@router.get("/cycles")
def list_cycles(cycle: CycleDep, admin: AdminUser, limit: int = Query(50, ge=1, le=1000)):
    cycles = cycle.registry.cycles(limit)
    # running here, or (CARECYCLE_WORKER=external) on the worker, as the record says
    running = cycle.running or next((c["id"] for c in cycles if c["status"] == "running"), None)
    return {"running": running, "data": cycles}


@router.post("/cycles", status_code=202)
async def trigger_cycle(request: Request, cycle: CycleDep, admin: AdminUser):
    """Starts a cycle, or (CARECYCLE_WORKER=external) queues it for the worker: then the answer
    has a request_id to follow at /api/admin/cycle-requests/{request_id}."""
    return ask_for_cycle(request.app.state.settings, cycle, f"api:{admin.id}", admin.id)


@router.get("/cycle-requests/{request_id}")
def get_cycle_request(request_id: str, cycle: CycleDep, admin: AdminUser):
    """A queued cycle: its status (queued, started) and, once started, its cycle_id."""
    return CycleRequests(cycle.store).get(request_id)


@router.get("/cycles/{cycle_id}")
def get_cycle(cycle_id: str, cycle: CycleDep, admin: AdminUser):
    return cycle.registry.cycle(cycle_id)


@router.post("/cycles/{cycle_id}/decision")
def decide_cycle(cycle_id: str, body: Decision, cycle: CycleDep, admin: AdminUser):
    """Approve or reject the winner of a cycle that waits for a human (audited either way)."""
    record = cycle.registry.cycle(cycle_id)
    if record["status"] != "awaiting_approval":
        raise ConflictError(f"cycle {cycle_id} is {record['status']}, not awaiting approval")
    winner = record["detail"]["gate"]["winner"]
    active = cycle.registry.with_status("active")
    if body.approve and (active["version"] if active else None) != record["detail"]["gate"].get("compared_with"):
        raise ConflictError(f"the active adapter changed since cycle {cycle_id} compared {winner} with it; "
                            "reject this one and run a new cycle")
    decided = cycle.registry.decision(cycle_id, admin.id, body.approve, winner)  # written with the change, atomically
    if body.approve:
        promote(cycle.engine, cycle.registry, winner, admin.id, also=decided)
    else:
        cycle.registry.reject(winner, f"rejected by {admin.id}", also=decided)
    return cycle.registry.cycle(cycle_id)


@router.get("/adapters")
def list_adapters(cycle: CycleDep, admin: AdminUser):
    return {"serving": cycle.engine.active_adapter, "data": cycle.registry.adapters()}


@router.post("/adapters/{version}/promote")
def promote_adapter(version: str, cycle: CycleDep, admin: AdminUser):
    return promote(cycle.engine, cycle.registry, version, admin.id)


@router.post("/adapters/rollback")
def rollback_adapter(cycle: CycleDep, admin: AdminUser):
    return rollback(cycle.engine, cycle.registry, admin.id)
