"""Typed dependencies: what a route may ask for. The app factory puts the services on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from feedback.chat_record import ChatRecord
from serve.chat_service import ChatService
from serve.protocol import ID_PATTERN


def _chat_service(request: Request) -> ChatService:
    return request.app.state.chat_service


def _chat_record(request: Request) -> ChatRecord:
    return request.app.state.chat_record


def _current_user(
    x_carecycle_user: Annotated[str | None, Header(pattern=ID_PATTERN)] = None,
) -> str:
    # Until sign-in exists (roles issue), the caller names itself; the UI uses its session id.
    return x_carecycle_user or "anonymous"


ChatServiceDep = Annotated[ChatService, Depends(_chat_service)]
ChatRecordDep = Annotated[ChatRecord, Depends(_chat_record)]
CurrentUser = Annotated[str, Depends(_current_user)]
