"""Admin: accounts and roles, the audit trail, deletion of a conversation."""

from __future__ import annotations

from fastapi import APIRouter, Query

from feedback.audit import audit_rows
from feedback.retention import forget_conversation
from serve.admin_protocol import CreateUserRequest, CreateUserResponse, ForgetResponse, RoleRequest
from serve.dependencies import AccountsDep, AdminUser, StoreDep
from serve.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=ERROR_RESPONSES)


@router.get("/users")
def list_users(accounts: AccountsDep, admin: AdminUser):
    return {"data": accounts.list()}


@router.post("/users", response_model=CreateUserResponse, status_code=201)
def create_user(body: CreateUserRequest, accounts: AccountsDep, admin: AdminUser):
    api_key = accounts.create(admin.id, body.id, body.role, body.password)
    return CreateUserResponse(id=body.id, role=body.role, api_key=api_key)


@router.put("/users/{user_id}/role")
def set_role(user_id: str, body: RoleRequest, accounts: AccountsDep, admin: AdminUser):
    accounts.set_role(admin.id, user_id, body.role)
    return {"id": user_id, "role": body.role}


@router.post("/users/{user_id}/disable")
def disable_user(user_id: str, accounts: AccountsDep, admin: AdminUser):
    """Revoke an account: its API key and password stop working from the next request."""
    accounts.disable(admin.id, user_id)
    return {"id": user_id, "disabled": True}


@router.get("/audit")
def audit(store: StoreDep, admin: AdminUser, limit: int = Query(100, ge=1, le=10000),
                actor: str | None = None, action: str | None = None):
    return {"data": audit_rows(store, limit=limit, actor=actor, action=action)}


@router.delete("/conversations/{conversation_id}", response_model=ForgetResponse)
def forget(conversation_id: str, store: StoreDep, admin: AdminUser):
    return ForgetResponse(**vars(forget_conversation(store, admin.id, conversation_id)))
