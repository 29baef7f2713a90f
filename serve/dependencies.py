"""Typed dependencies: what a route may ask for. The app factory puts the services on app.state.

Per-request cost: the dependencies are ``async def`` where they do no blocking I/O (FastAPI
runs a plain ``def`` dependency in the thread pool, a hop per dependency per request); what
reads the record (an API key the cache does not have, a rate limit counted in the record) goes
to the thread pool explicitly. The caller's account is found by a plain function, not a
sub-dependency, because FastAPI solves a dependency's sub-dependencies again wherever it is used.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from feedback.accounts import Account, Accounts, anonymous_account, looks_like_api_key
from feedback.chat_record import ChatRecord
from feedback.review_record import ReviewRecord
from feedback.store import Store
from serve.chat_service import ChatService
from serve.errors import AuthenticationError, PermissionDeniedError
from serve.rate_limit import RateLimiter

_bearer = HTTPBearer(auto_error=False, description="An API key made by `carecycle users create`.")


def _state(name: str):
    async def get(request: Request):
        return getattr(request.app.state, name)

    return get


StoreDep = Annotated[Store, Depends(_state("store"))]
ChatServiceDep = Annotated[ChatService, Depends(_state("chat_service"))]
ChatRecordDep = Annotated[ChatRecord, Depends(_state("chat_record"))]
AccountsDep = Annotated[Accounts, Depends(_state("accounts"))]
ReviewRecordDep = Annotated[ReviewRecord, Depends(_state("review_record"))]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _signed_in(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Account | None:
    """The account of the bearer's API key; None without a token, or (anonymous chat on) for a
    token that is not one of carecycle's keys — OpenAI clients always send some token."""
    if credentials is None:
        return None
    token = credentials.credentials
    accounts: Accounts = request.app.state.accounts
    account = accounts.cached_api_key(token) or await run_in_threadpool(accounts.by_api_key, token)
    if account is None and (looks_like_api_key(token) or not request.app.state.settings.anonymous_chat):
        raise AuthenticationError("unknown or disabled API key")
    return account


async def _chat_user(request: Request, credentials: Credentials) -> Account:
    account = await _signed_in(request, credentials)
    if account is not None:
        return account
    if request.app.state.settings.anonymous_chat:
        return anonymous_account(_client_address(request), credentials.credentials if credentials else None)
    raise AuthenticationError("sign in: send `Authorization: Bearer <API key>`")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown-address"


def _requires(role: str):
    async def check(request: Request, credentials: Credentials) -> Account:
        account = await _signed_in(request, credentials)
        if account is None:
            raise AuthenticationError(f"this needs a signed-in {role}: send `Authorization: Bearer <API key>`")
        if not account.has_role(role):
            raise PermissionDeniedError(f"this needs the {role} role; {account.id} is {account.role}")
        return account

    return check


CurrentUser = Annotated[Account, Depends(_chat_user)]
SignedInUser = Annotated[Account, Depends(_requires("user"))]  # never anonymous: may read transcripts
OperatorUser = Annotated[Account, Depends(_requires("operator"))]
AdminUser = Annotated[Account, Depends(_requires("admin"))]


def rate_limited_user(action: str):
    """The caller, as ``CurrentUser``, after spending one of its ``action`` tokens (anonymous: per
    client address, so that fresh tokens do not buy fresh limits). One dependency for both, so
    that the route solves the caller once."""

    async def spend(request: Request, credentials: Credentials) -> Account:
        user = await _chat_user(request, credentials)
        limiter = request.app.state.rate_limiter
        key = anonymous_account(_client_address(request), None).id if user.anonymous else user.id
        if isinstance(limiter, RateLimiter):  # counted in memory: no I/O
            limiter.check(action, key)
        else:  # counted in the record
            await run_in_threadpool(limiter.check, action, key)
        return user

    return Annotated[Account, Depends(spend)]


ChattingUser = rate_limited_user("chat")
VotingUser = rate_limited_user("feedback")
